"""Frame-feature backbones (SPEC section 3), torchvision-model-builder style.

One registry maps a backbone name to its architecture, feature size and the weights it accepts; each weights
entry carries the preprocessing it was trained with, so picking weights picks the transform. Pretrained weights
are read from local files only (GPU nodes are often offline): `fetch_weights` (run by the workflow's
`fetch_weights` rule) downloads and checksum-verifies them beforehand.
"""
from __future__ import annotations

import argparse
import logging
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from i2a.download import download, file_digest
from i2a.torchscript_weights import read_torchscript_state_dict
from i2a.weights import (ACCEPTED_WEIGHTS, DEFAULT_CACHE_DIR, WEIGHT_FILES, WeightFile, is_path as _is_path,
                         resolve_weights_name as _resolve_weights_name, weights_file_for)

log = logging.getLogger(__name__)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class FrameTransform:
    """Resize the shorter side, centre crop, scale to [0, 1], normalise: on whole uint8 frame batches.

    Same geometry as torchvision's PIL pipeline `Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize`
    (video_features, CLIP), but on tensors (antialiased, like PIL) so a clip is transformed in one call.
    Split in two so that workers can do the geometric part and ship compact uint8 crops.
    """

    resize: int  # shorter side after resizing
    crop: int  # square centre crop
    interpolation: str  # "bilinear" | "bicubic"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def resize_crop(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [T,H,W,3] or [T,3,H,W] -> uint8 [T,3,crop,crop]."""
        x = torch.as_tensor(frames)
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"expected a uint8 frame batch [T,H,W,3] or [T,3,H,W], got {x.dtype} {tuple(x.shape)}")
        if x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)  # a channels_last view: no copy
        elif x.shape[1] != 3:
            raise ValueError(f"expected 3 colour channels first or last, got shape {tuple(x.shape)}")
        mode = InterpolationMode(self.interpolation)
        x = TF.resize(x, [self.resize], interpolation=mode, antialias=True)
        return TF.center_crop(x, [self.crop, self.crop])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [T,3,S,S] (any device) -> float32, mean/std normalised."""
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.normalize(self.resize_crop(frames))

    def scaled(self, image_size: int) -> FrameTransform:
        """Same recipe at a smaller crop, the resize shrunk in proportion (demo only)."""
        return replace(self, crop=image_size, resize=round(image_size * self.resize / self.crop))


# video_features' ResNet recipe (PIL Resize(256) default bilinear, CenterCrop(224), ImageNet stats): the
# authors' ResNet50 features; the study used the same for its other CNNs (SPEC section 3).
VIDEO_FEATURES_CNN = FrameTransform(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
# torchvision's recipe for its IMAGENET1K_V2 ResNet50 weights.
TORCHVISION_V2 = FrameTransform(232, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
# CLIP's own preprocessing: Resize(224, bicubic), CenterCrop(224), CLIP stats.
CLIP_PREPROCESS = FrameTransform(224, 224, "bicubic", CLIP_MEAN, CLIP_STD)


class WeightsNotFoundError(FileNotFoundError):
    pass


class ChecksumError(ValueError):
    pass


def sha256_of(path: str | Path) -> str:
    return file_digest(path, "sha256")


def verify_checksum(path: str | Path, expected: str) -> None:
    """Raise ChecksumError unless the file's SHA-256 starts with `expected` (a full digest or a prefix)."""
    digest = sha256_of(path)
    if not digest.startswith(expected.lower()):
        raise ChecksumError(f"{path}: SHA-256 {digest} does not match the expected {expected!r} "
                            "(corrupt or wrong file: delete it and fetch it again)")


# ----------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class BackboneSpec:
    feat_dim: int
    default_weights: str
    transforms: dict[str, FrameTransform]  # weights name -> its preprocessing; "none" and paths use the default's
    arch: str  # torchvision builder name, or "open_clip"
    head: str | None = None  # the torchvision classifier, replaced by Identity: the pooled output is the feature


_CNN = {"imagenet_v1": VIDEO_FEATURES_CNN}
BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(512, "imagenet_v1", _CNN, "resnet18", "fc"),
    "resnet50": BackboneSpec(2048, "imagenet_v1", {**_CNN, "imagenet_v2": TORCHVISION_V2}, "resnet50", "fc"),
    "efficientnet_v2_s": BackboneSpec(1280, "imagenet_v1", _CNN, "efficientnet_v2_s", "classifier"),
    "efficientnet_v2_m": BackboneSpec(1280, "imagenet_v1", _CNN, "efficientnet_v2_m", "classifier"),
    "efficientnet_v2_l": BackboneSpec(1280, "imagenet_v1", _CNN, "efficientnet_v2_l", "classifier"),
    "clip_vit_b32": BackboneSpec(512, "openai", {"openai": CLIP_PREPROCESS}, "open_clip"),
}


@dataclass
class Backbone:
    """A frame encoder: `model(transform(frames))` -> [T, feat_dim] features."""

    name: str
    feat_dim: int
    weights: str
    model: nn.Module
    transform: FrameTransform


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def _missing_weights_message(name: str, weights: str, path: Path) -> str:
    wf = WEIGHT_FILES[(name, weights)]
    return (f"weights file {wf.filename!r} for backbone {name!r} (weights {weights!r}) not found: expected at "
            f"{path}. Fetch it (needs internet; verifies the checksum) with\n"
            f"    snakemake --cores 1 {path}\n"
            f"or download {wf.url} into {path.parent}/. "
            f"Use weights 'none' for random init (demo/tests only).")


def _is_torchscript(path: str | Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") for n in zf.namelist())


def _load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict, read without running anything from the file.

    torch.load(weights_only=True) for checkpoints; OpenAI's CLIP release is a TorchScript archive, which that
    refuses and torch.jit.load would deserialise and compile: its tensors are read by an allowlisting reader
    instead (same keys as `torch.jit.load(path).state_dict()`, metadata buffers such as `input_resolution`
    included).
    """
    if _is_torchscript(path):
        obj = read_torchscript_state_dict(path)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)


def _weights_path(name: str, weights: str, cache_dir: str | Path) -> tuple[Path, str | None]:
    """(path, expected sha256 or None) for named or path weights; raises a helpful error when absent."""
    if (name, weights) in WEIGHT_FILES:
        path = Path(cache_dir) / WEIGHT_FILES[(name, weights)].filename
        if not path.is_file():
            raise WeightsNotFoundError(_missing_weights_message(name, weights, path))
        return path, WEIGHT_FILES[(name, weights)].sha256
    path = Path(weights)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} for backbone {name!r} not found")
    return path, None


def _build_cnn(spec: BackboneSpec, state_dict: dict[str, torch.Tensor] | None) -> nn.Module:
    model = getattr(torchvision.models, spec.arch)(weights=None)
    head = spec.head
    if state_dict is not None:
        try:
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"weights do not fit the {spec.arch} architecture: {str(err)[:500]}") from err
        # a features-only file without the classifier is fine; anything else is the wrong architecture
        missing = [k for k in missing if not k.startswith(head + ".")]
        if missing or unexpected:
            raise ValueError(f"weights do not fit the {spec.arch} architecture: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    setattr(model, head, nn.Identity())  # global-average-pool output is the feature
    return model


def _build_clip(state_dict: dict[str, torch.Tensor] | None, image_size: int | None) -> nn.Module:
    import open_clip
    from open_clip.model import resize_pos_embed

    # OpenAI's models use QuickGELU; a random-init demo model may be built at a smaller input size
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None, force_image_size=image_size)
    if state_dict is not None:
        for key in ("input_resolution", "context_length", "vocab_size"):  # metadata in OpenAI's archive
            state_dict.pop(key, None)
        resize_pos_embed(state_dict, model)  # only when image_size differs from the weights' 224
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as err:
            raise ValueError(f"weights do not fit CLIP ViT-B/32 (open_clip layout): {str(err)[:500]}") from err
    return model.visual.float()  # encode_image(x, normalize=False) is exactly visual(x)


RANDOM_INIT_SEED = 0


def build_backbone(name: str, weights: str = "default", cache_dir: str | Path = DEFAULT_CACHE_DIR,
                   image_size: int | None = None) -> Backbone:
    """Backbone in eval mode with its preprocessing.

    weights: 'default' (ImageNet V1 for CNNs, what the authors used; OpenAI for CLIP), 'imagenet_v1',
    'imagenet_v2' (ResNet50), 'openai' (CLIP), 'none' (random init) or a path to a state dict.
    image_size: a smaller crop for laptop demos; the resize shrinks in proportion.
    """
    spec = _spec(name)
    weights = _resolve_weights_name(name, weights)
    transform = spec.transforms.get(weights, spec.transforms[spec.default_weights])
    if image_size is not None:
        if spec.arch == "open_clip" and image_size % 32:
            raise ValueError(f"CLIP ViT-B/32 needs an image_size that is a multiple of its 32-px patches, "
                             f"got {image_size}")
        transform = transform.scaled(image_size)

    state_dict = None
    if weights != "none":
        path, sha = _weights_path(name, weights, cache_dir)
        if sha is not None:
            verify_checksum(path, sha)
        state_dict = _load_state_dict(path)
        log.info("backbone %s: weights %s from %s", name, weights, path)

    # Random init is seeded: every shard job must encode with the same network, or train and valid features
    # come from different random models.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = _build_clip(state_dict, image_size) if spec.arch == "open_clip" else _build_cnn(spec, state_dict)
    return Backbone(name=name, feat_dim=spec.feat_dim, weights=weights, model=model.eval(), transform=transform)


# ----------------------------------------------------------------------------------------------- downloads
def fetch_weights(name: str, weights: str = "default", cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """Download a pretrained weights file once: resumable (.part), checksum-verified, renamed into place."""
    weights = _resolve_weights_name(name, weights)
    if (name, weights) not in WEIGHT_FILES:
        raise ValueError(f"nothing to fetch for backbone {name!r} with weights {weights!r}")
    wf = WEIGHT_FILES[(name, weights)]
    path = Path(cache_dir) / wf.filename
    if path.is_file():
        verify_checksum(path, wf.sha256)
        return path
    log.info("downloading %s -> %s", wf.url, path)
    return download(wf.url, path, sha256_prefix=wf.sha256.lower())


def fetch_weights_file(path: str | Path) -> Path:
    """Fetch by target file (what the workflow's rule asks for): the registry entry is found by file name."""
    path = Path(path)
    for (name, weights), wf in WEIGHT_FILES.items():
        if wf.filename == path.name:
            return fetch_weights(name, weights, path.parent)
    raise ValueError(f"{path.name!r} is not a known weights file; known: "
                     f"{sorted(wf.filename for wf in WEIGHT_FILES.values())}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fetch pretrained backbone weights (checksum verified).")
    parser.add_argument("files", nargs="+", help="target paths, e.g. resources/weights/resnet50-0676ba61.pth")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    for f in args.files:
        print(fetch_weights_file(f))


if __name__ == "__main__":
    main()
