"""Fail fast: a job that SLURM gave a GPU stops at once when torch sees no CUDA device (issue 21.5)."""
import subprocess
import sys

import pytest
import torch

from i2a.infra import device
from i2a.infra.device import ALLOW_NO_CUDA, check_gpu_given, gpus_given, pick_device

SLURM_GPU_JOB = {"SLURM_JOB_ID": "42", "SLURM_GPUS_ON_NODE": "1", "CUDA_VISIBLE_DEVICES": "0"}


@pytest.mark.parametrize("env, given", [
    ({}, None),  # a laptop
    ({"CUDA_VISIBLE_DEVICES": "0"}, None),  # a laptop with the variable set: unchanged outside SLURM
    ({"SLURM_JOB_ID": "42"}, None),  # a CPU job on the cluster
    ({"SLURM_JOB_ID": "42", "SLURM_GPUS_ON_NODE": "0"}, None),
    ({"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": ""}, None),
    ({"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None),
    (SLURM_GPU_JOB, "SLURM_GPUS_ON_NODE=1"),
    ({"SLURM_JOB_ID": "42", "SLURM_JOB_GPUS": "3"}, "SLURM_JOB_GPUS=3"),
    ({"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "0,1"}, None),  # inherited from the submitting shell
])
def test_which_jobs_were_given_a_gpu(env, given):
    assert gpus_given(env) == given


def test_a_slurm_job_of_a_gpu_rule_was_given_a_gpu():
    assert gpus_given({"SLURM_JOB_ID": "42"}, rule_gpus=1) == "the rule's gpu resource 1"
    assert gpus_given({}, rule_gpus=1) is None  # a laptop running a GPU rule: unchanged
    assert gpus_given({"SLURM_JOB_ID": "42"}, rule_gpus=0) is None


def test_a_gpu_job_without_cuda_stops_with_the_cause(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_driver", lambda: "nvidia-smi: NVIDIA H200, 535.54.03")
    with pytest.raises(RuntimeError) as err:
        check_gpu_given(SLURM_GPU_JOB)
    text = str(err.value)
    assert "SLURM_GPUS_ON_NODE=1" in text and "torch sees no CUDA device" in text and "CUDA_VISIBLE_DEVICES=0" in text
    assert f"CUDA {torch.version.cuda or 'none'}" in text and "535.54.03" in text and "driver" in text
    # and through the one device choice, 'auto' included
    monkeypatch.setattr(device.os, "environ", dict(SLURM_GPU_JOB))
    with pytest.raises(RuntimeError, match="given a GPU"):
        pick_device("auto")


def test_unchanged_when_cuda_is_there_or_no_gpu_was_asked_for(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_gpu_given(SLURM_GPU_JOB)  # the GPU is seen: nothing to say
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_gpu_given({"CUDA_VISIBLE_DEVICES": "0"})  # a laptop
    check_gpu_given({**SLURM_GPU_JOB, ALLOW_NO_CUDA: "1"})  # stand-in GPUs (the CI cluster)
    monkeypatch.setattr(device.os, "environ", {})
    assert pick_device("auto") == torch.device("cpu")


def test_driver_is_reported_without_nvidia_smi(monkeypatch):
    monkeypatch.setattr(device.shutil, "which", lambda name: None)
    assert "nvidia-smi not found" in device._driver()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no CUDA device")
def test_a_workflow_job_given_a_gpu_fails_at_its_start(tmp_path):
    """A job's entry point (start_job) under a SLURM GPU allocation, on this CUDA-less machine: it stops before
    any work, and the log says why."""
    log = tmp_path / "job.log"
    code = ("from types import SimpleNamespace as NS\nfrom i2a.pipeline.jobs import start_job\n"
            f"start_job(NS(log=[{str(log)!r}], threads=1, rule='train_gpt', wildcards={{}}))\n"
            "print('WORK STARTED')\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SLURM_")}
    env.pop(ALLOW_NO_CUDA, None)
    proc = subprocess.run([sys.executable, "-c", code], env={**env, **SLURM_GPU_JOB}, capture_output=True,
                          text=True, timeout=120)
    text = log.read_text()
    assert proc.returncode != 0 and "WORK STARTED" not in text
    assert "given a GPU (SLURM_GPUS_ON_NODE=1; CUDA_VISIBLE_DEVICES=0) but torch sees no CUDA device" in text
