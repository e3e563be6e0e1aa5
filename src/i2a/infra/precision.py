"""One vocabulary for how every job computes: `fp32`, `tf32` or `bf16`, set once at a job's entry point.

- `fp32`: strict IEEE fp32, TF32 off for matrix products (cuBLAS) and convolutions (cuDNN). PyTorch's default
  leaves cuDNN's convolutions in TF32, so "fp32" without this setting is not fp32 on an Ampere-or-later GPU
  (on an H200, the GPT's 1x1 Conv1d feature embedding then differs from the same product as a matmul).
- `tf32`: fp32 tensors, TF32 tensor cores for matrix products and convolutions: what SpecVQGAN's training on A100s
  with PyTorch 1.8 did (TF32 was on by default there for both).
- `bf16`: bf16 autocast for what autocast covers; what stays fp32 may use TF32 (this is the speed setting).

On a CPU `fp32` and `tf32` compute the same (no TF32 there); `bf16` autocasts on the CPU as well.
Only PyTorch's legacy switches are used (`set_float32_matmul_precision`, `cudnn.allow_tf32`): mixing them with the
newer `fp32_precision` API makes `torch.get_float32_matmul_precision()` raise, and Lightning calls it on a GPU.
"""
from __future__ import annotations

from typing import Any

PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def set_precision(name: str) -> dict[str, Any]:
    """Set the process's backend flags for `name`; returns them as they now read (for the job's log)."""
    import torch

    check_precision(name)
    torch.set_float32_matmul_precision("highest" if name == "fp32" else "high")
    torch.backends.cudnn.allow_tf32 = name != "fp32"
    return backend_flags(name)


def backend_flags(name: str | None = None) -> dict[str, Any]:
    import torch

    return {"precision": name, "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "autocast": "bfloat16" if name == "bf16" else None}


def autocast_dtype(name: str):
    """The autocast dtype of `name` (torch.bfloat16 for bf16), or None: no autocast."""
    import torch

    return torch.bfloat16 if check_precision(name) == "bf16" else None


def lightning_precision(name: str) -> str:
    """Lightning's Trainer(precision=...) for `name`; TF32 itself is set by set_precision, not by Lightning."""
    return "bf16-mixed" if check_precision(name) == "bf16" else "32-true"


def describe(name: str) -> str:
    """The flags as they now read, in one line for a job's log: "precision: tf32 (matmul high: TF32 on, ...)"."""
    f = backend_flags(name)
    onoff = lambda flag: "on" if flag else "off"  # noqa: E731
    return (f"precision: {name} (matmul {f['float32_matmul_precision']}: TF32 {onoff(f['cuda_matmul_allow_tf32'])}, "
            f"cuDNN TF32 {onoff(f['cudnn_allow_tf32'])}, autocast {f['autocast'] or 'off'})")


def use_precision(name: str, logger=None) -> str:
    """Set `name` for this process and record it in the job's log; the one call for an entry point (jobs'
    `start_job`, `i2a generate`, benchmarks). Returns the logged line."""
    import logging

    set_precision(name)
    line = describe(name)
    (logger or logging.getLogger("i2a.infra.precision")).info("%s", line)
    return line
