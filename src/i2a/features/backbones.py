"""Frame-feature backbones (design.md §3) built from their registry entries (`i2a.spec.backbones`).

Pretrained weights are read from local files only (GPU nodes are often offline): the workflow's `fetch_weights`
rule downloads them beforehand, checksum verified. Every file is read without running anything from it:
torchvision's with `torch.load(weights_only=True)`, CLIP's as OpenCLIP's plain safetensors state dict.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from i2a.infra.checkpoint import CheckpointError, load_checkpoint
from i2a.infra.checksum import verify_file
from i2a.infra.download import download
from i2a.spec.backbones import (DEFAULT_CACHE_DIR, FrameTransform, backbone, resolve_weights, weights_by_filename,
                                weights_file)

log = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0


class WeightsNotFoundError(FileNotFoundError):
    pass


@dataclass
class FrameEncoder:
    """A backbone ready to encode frames: `model(transform(frames))` -> [T, feat_dim] features."""

    name: str
    feat_dim: int
    weights: str
    model: nn.Module
    transform: FrameTransform
    dtype: torch.dtype = torch.float32  # what the model's input is cast to (its weights' dtype)


def _missing_weights_message(name: str, weights: str, path: Path) -> str:
    wf = backbone(name).weights[weights]
    return (f"weights file {wf.filename!r} for backbone {name!r} (weights {weights!r}) not found: expected at "
            f"{path}. Fetch it (needs internet; verifies the checksum) with\n"
            f"    snakemake --cores 1 {path}\n"
            f"or download {wf.url} into {path.parent}/. "
            f"Use weights 'none' for random init (demo/tests only).")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a safetensors file or a torch checkpoint (read with weights_only=True)."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: an 8-byte length, then the JSON header
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = load_checkpoint(path, "backbone weights", "give a state dict saved with torch.save or a safetensors file")
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)


def _weights_path(name: str, weights: str, cache_dir: str | Path) -> tuple[Path, str | None]:
    """(path, expected sha256 or None) for named or path weights; raises a helpful error when absent."""
    path = Path(weights_file(name, weights, cache_dir))
    known = backbone(name).weights.get(weights)
    if not path.is_file():
        raise WeightsNotFoundError(_missing_weights_message(name, weights, path) if known else
                                   f"weights file {path} for backbone {name!r} not found")
    return path, known.sha256 if known else None


def _build_torchvision(arch: str, head: str, state_dict: dict[str, torch.Tensor] | None) -> nn.Module:
    model = getattr(torchvision.models, arch)(weights=None)
    if state_dict is not None:
        try:
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"weights do not fit the {arch} architecture: {str(err)[:500]}") from err
        # a features-only file without the classifier is fine; anything else is the wrong architecture
        missing = [k for k in missing if not k.startswith(head + ".")]
        if missing or unexpected:
            raise ValueError(f"weights do not fit the {arch} architecture: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    setattr(model, head, nn.Identity())  # global-average-pool output is the feature
    return model


def _build_open_clip(arch: str, state_dict: dict[str, torch.Tensor] | None, image_size: int | None,
                     dtype: str = "float32") -> nn.Module:
    import open_clip
    from open_clip.model import resize_pos_embed

    # OpenAI's models use QuickGELU; a random-init demo model may be built at a smaller input size. float16:
    # OpenCLIP's "fp16", fp16 weights and activations with LayerNorm in fp32 (OpenAI's own clip.load on a GPU)
    model = open_clip.create_model(arch, pretrained=None, force_image_size=image_size,
                                   precision="fp16" if dtype == "float16" else "fp32")
    if state_dict is not None:
        for key in ("input_resolution", "context_length", "vocab_size"):  # scalars of OpenAI's own archive
            state_dict.pop(key, None)
        resize_pos_embed(state_dict, model)  # only when image_size differs from the weights' 224
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as err:
            raise ValueError(f"weights do not fit OpenCLIP's {arch}: {str(err)[:500]}") from err
    # encode_image(x, normalize=False) is exactly visual(x); loading fp32 tensors kept fp16 parameters in fp16
    return model.visual if dtype == "float16" else model.visual.float()


def build_backbone(name: str, weights: str = "default", cache_dir: str | Path = DEFAULT_CACHE_DIR,
                   image_size: int | None = None) -> FrameEncoder:
    """A backbone in eval mode with its preprocessing.

    weights: 'default' (the registry's first: ImageNet V1 for CNNs, what the authors used; OpenAI for CLIP),
    another name the registry lists for it, 'none' (random init) or a path to a state dict.
    image_size: a smaller crop for laptop demos; the resize shrinks in proportion.
    """
    entry = backbone(name)
    weights = resolve_weights(name, weights)
    transform = entry.transform(weights)
    dtype = entry.weights[weights].dtype if weights in entry.weights else "float32"
    if dtype != "float32" and entry.builder != "open_clip":
        raise ValueError(f"{name} weights {weights!r}: a {dtype} network is built for OpenCLIP backbones only")
    if image_size is not None:
        if entry.patch and image_size % entry.patch:
            raise ValueError(f"{entry.display_name} needs an image_size that is a multiple of its {entry.patch}-px "
                             f"patches, got {image_size}")
        transform = transform.scaled(image_size)

    state_dict = None
    if weights != "none":
        path, sha = _weights_path(name, weights, cache_dir)
        if sha is not None:
            verify_file(path, sha, "sha256", remedy=f"fetch it again with: snakemake --cores 1 {path}")
        state_dict = load_state_dict(path)
        log.info("backbone %s: weights %s from %s", name, weights, path)

    # Random init is seeded: every shard job must encode with the same network, or train and valid features
    # come from different random models.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        if entry.builder == "open_clip":
            model = _build_open_clip(entry.arch, state_dict, image_size, dtype)
        else:
            model = _build_torchvision(entry.arch, entry.head, state_dict)
    return FrameEncoder(name=name, feat_dim=entry.feat_dim, weights=weights, model=model.eval(), transform=transform,
                        dtype=getattr(torch, dtype))


def fetch_weights(name: str, weights: str = "default", cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """Download a pretrained weights file once: resumable (.part), checksum-verified, renamed into place."""
    weights = resolve_weights(name, weights)
    if weights not in backbone(name).weights:
        raise ValueError(f"nothing to fetch for backbone {name!r} with weights {weights!r}")
    wf = backbone(name).weights[weights]
    path = Path(cache_dir) / wf.filename
    if path.is_file():
        verify_file(path, wf.sha256, "sha256")
        return path
    log.info("downloading %s -> %s", wf.url, path)
    return download(wf.url, path, sha256=wf.sha256)


def fetch_weights_file(path: str | Path) -> Path:
    """Fetch by target file (what the workflow's rule asks for): the registry entry is found by file name."""
    path = Path(path)
    name, weights, _ = weights_by_filename(path.name)
    return fetch_weights(name, weights, path.parent)

