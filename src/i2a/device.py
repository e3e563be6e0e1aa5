"""The one place that chooses where tensors go: the GPU when the job has one, else the CPU."""
from __future__ import annotations


def pick_device(requested: str | None = None):
    """torch.device for `requested` ('cuda', 'cpu', 'cuda:1'); None or 'auto' takes CUDA when it is available.

    Asking for CUDA on a machine without it is an error, not a silent fallback to a CPU run of many hours.
    """
    import torch

    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} asked for, but torch sees no CUDA GPU on this machine")
    return device
