"""The one place that chooses where tensors go: the GPU when the job has one, else the CPU.

A job that was given a GPU (SLURM's GPU variables, or a SLURM job of a rule with a `gpu` resource) but whose torch sees
none stops at once (`check_gpu_given`): otherwise it would run on the CPU until its time limit. The usual cause
is a driver older than the CUDA build of the installed torch wheels.
"""
from __future__ import annotations

import os
import shutil
import subprocess

# SLURM's variables for the GPUs of a job or step (set only when GPUs were allocated)
SLURM_GPU_VARS = ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS")
# set to 1 where SLURM allocates stand-in GPUs on purpose (the CI cluster: null device files, no CUDA)
ALLOW_NO_CUDA = "I2A_ALLOW_NO_CUDA"


def gpus_given(environ=None, rule_gpus: int = 0) -> str | None:
    """What says this process was given a GPU (`NAME=value`), or None: a SLURM job's GPU variables, or a SLURM job
    whose rule asks for `rule_gpus` > 0 (its `gpu` resource). `CUDA_VISIBLE_DEVICES` alone does not count: it is
    inherited from the submitting shell (sbatch exports it), so a CPU job could carry one. Outside SLURM nothing
    counts (a laptop is unchanged)."""
    env = os.environ if environ is None else environ
    if not env.get("SLURM_JOB_ID"):
        return None
    for name in SLURM_GPU_VARS:
        value = env.get(name, "").strip()
        if value and value not in ("0", "(null)"):
            return f"{name}={value}"
    if rule_gpus and int(rule_gpus) > 0:
        return f"the rule's gpu resource {int(rule_gpus)}"
    return None


def _driver() -> str:
    """The NVIDIA driver as nvidia-smi reports it, or why it cannot be told."""
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi not found (no NVIDIA driver on this node's PATH)"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi failed: {err}"
    text = (out.stdout or out.stderr).strip().replace("\n", "; ")
    return f"nvidia-smi: {text}" if text else f"nvidia-smi exited {out.returncode} without output"


def check_gpu_given(environ=None, rule_gpus: int = 0) -> None:
    """Raise when this job was given a GPU but torch sees no CUDA device (see the module's docstring)."""
    import torch

    env = os.environ if environ is None else environ
    given = gpus_given(env, rule_gpus)
    if given is None or env.get(ALLOW_NO_CUDA) == "1" or torch.cuda.is_available():
        return
    raise RuntimeError(
        f"this job was given a GPU ({given}; CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')}) but "
        f"torch sees no CUDA device, so it would run on the CPU until its "
        f"time limit. torch {torch.__version__} is built for CUDA {torch.version.cuda or 'none (a CPU-only build)'}; "
        f"{_driver()}. The likely cause: the node's NVIDIA driver is older than this CUDA build needs (see NVIDIA's "
        "CUDA compatibility table), or torch is a CPU-only build. Use a node or partition with a newer driver, or "
        f"install torch wheels built for an older CUDA. (Set {ALLOW_NO_CUDA}=1 to run on the CPU anyway.)")


def pick_device(requested: str | None = None):
    """torch.device for `requested` ('cuda', 'cpu', 'cuda:1'); None or 'auto' takes CUDA when it is available.

    Asking for CUDA on a machine without it is an error, not a silent fallback to a CPU run of many hours; so is
    'auto' in a job that was given a GPU that torch cannot see (`check_gpu_given`).
    """
    import torch

    if requested in (None, "auto"):
        check_gpu_given()
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} asked for, but torch sees no CUDA GPU on this machine")
    return device
