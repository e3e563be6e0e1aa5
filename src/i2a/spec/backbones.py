"""Every frame-feature backbone the study can use, one entry each (torchvision model-builder style).

An entry carries everything known about a backbone: its display name, feature size, how to build it, and the
weights it accepts, each weights file with its URL, checksum and the preprocessing it was trained with. The
config schema's allowed values, the workflow's wildcard constraints and fetch rules, the table's display names
and the builders all read this table, so adding a backbone is adding one entry. Torch-free: planning the DAG
reads it without importing torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

DEFAULT_CACHE_DIR = "resources/weights"
NO_FEATS_DIM = 2048  # SpecVQGAN's no-feats baseline draws noise of the ResNet50/BN-Inception feature depth

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


MAX_ASPECT = 4.0  # frames wider (or taller) than this are centre-cut to it before resizing (identical output below)


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

    def resize_crop(self, frames):
        """uint8 [T,H,W,3] or [T,3,H,W] -> uint8 [T,3,crop,crop]."""
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        x = torch.as_tensor(frames)
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"expected a uint8 frame batch [T,H,W,3] or [T,3,H,W], got {x.dtype} {tuple(x.shape)}")
        if x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)  # a channels_last view: no copy
        elif x.shape[1] != 3:
            raise ValueError(f"expected 3 colour channels first or last, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if max(h, w) > MAX_ASPECT * min(h, w):
            # A 4 x 2048 frame resized to a shorter side of 256 would be 256 x 131072 pixels (21 GB for a clip);
            # the centre crop only ever sees the middle, so cut the long side to MAX_ASPECT x the short side first.
            keep = math.ceil(MAX_ASPECT * min(h, w))
            x = TF.center_crop(x, [min(h, keep), min(w, keep)])
        x = TF.resize(x, [self.resize], interpolation=InterpolationMode(self.interpolation), antialias=True)
        return TF.center_crop(x, [self.crop, self.crop])

    def normalize(self, x):
        """uint8 [T,3,S,S] (any device) -> float32, mean/std normalised."""
        import torch

        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def __call__(self, frames):
        return self.normalize(self.resize_crop(frames))

    def scaled(self, image_size: int) -> FrameTransform:
        """Same recipe at a smaller crop, the resize shrunk in proportion (demo only)."""
        return replace(self, crop=image_size, resize=round(image_size * self.resize / self.crop))


# video_features' ResNet recipe (PIL Resize(256) default bilinear, CenterCrop(224), ImageNet stats): the
# authors' ResNet50 features; the study used the same for its other CNNs (design.md §3).
VIDEO_FEATURES_CNN = FrameTransform(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
# torchvision's recipe for its IMAGENET1K_V2 ResNet50 weights.
TORCHVISION_V2 = FrameTransform(232, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
# CLIP's own preprocessing: Resize(224, bicubic), CenterCrop(224), CLIP stats.
CLIP_PREPROCESS = FrameTransform(224, 224, "bicubic", CLIP_MEAN, CLIP_STD)


@dataclass(frozen=True)
class WeightsFile:
    """A pretrained weights file: where it comes from, its SHA-256 (full, or the prefix torchvision puts in its
    file names), the preprocessing the weights were trained with and the dtype the network runs them in."""

    filename: str
    url: str
    sha256: str
    transform: FrameTransform
    # float16 (OpenCLIP backbones): fp16 weights and activations with LayerNorm in fp32, as OpenAI's clip.load runs
    # CLIP on a GPU; features.precision still sets the arithmetic of whatever stays fp32
    dtype: str = "float32"


@dataclass(frozen=True)
class Backbone:
    name: str  # config and wildcard name
    display_name: str  # the table's name
    feat_dim: int
    builder: str  # "torchvision" (the torchvision builder of `arch`) or "open_clip" (the image tower of `arch`)
    arch: str
    weights: dict[str, WeightsFile]  # the first is the default
    head: str | None = None  # torchvision's classifier attribute, replaced by Identity: the pooled output
    patch: int | None = None  # a ViT's patch size: a smaller demo image_size must be a multiple of it
    random_init_transform: FrameTransform | None = None  # for weights "none"; the default weights' otherwise
    notes: str = ""

    @property
    def default_weights(self) -> str:
        return next(iter(self.weights))

    def transform(self, weights: str) -> FrameTransform:
        if weights in self.weights:
            return self.weights[weights].transform
        return self.random_init_transform or self.weights[self.default_weights].transform


_TV = "https://download.pytorch.org/models/"


def _torchvision(filename: str, transform: FrameTransform = VIDEO_FEATURES_CNN) -> WeightsFile:
    # torchvision's file names end in the first 8 hex digits of the file's SHA-256
    return WeightsFile(filename, _TV + filename, filename.rsplit("-", 1)[1].split(".")[0], transform)


# OpenCLIP publishes OpenAI's CLIP weights as a plain fp32 state dict (safetensors) of its own model: the same
# tensors as OpenAI's fp16 TorchScript release, readable without unpickling anything. Pinned to a commit.
_HF = "https://huggingface.co/timm/{repo}/resolve/{revision}/open_clip_model.safetensors"

_CLIP_B32 = WeightsFile(
    "clip_vit_b32_openai.safetensors",
    _HF.format(repo="vit_base_patch32_clip_224.openai", revision="a6f597a30f7b82c51704746581f9a4e41421e878"),
    "e6d1bd7789aa45192b3bf90570a789b478bae1b74ebcce7eddd908e83a2b7c31", CLIP_PREPROCESS)

_ENTRIES = [
    Backbone("resnet18", "ResNet18", 512, "torchvision", "resnet18",
             {"imagenet_v1": _torchvision("resnet18-f37072fd.pth")}, head="fc"),
    Backbone("resnet50", "ResNet50", 2048, "torchvision", "resnet50",
             {"imagenet_v1": _torchvision("resnet50-0676ba61.pth"),
              "imagenet_v2": _torchvision("resnet50-11ad3fa6.pth", TORCHVISION_V2)}, head="fc"),
    Backbone("efficientnet_v2_s", "EfficientNetV2-S", 1280, "torchvision", "efficientnet_v2_s",
             {"imagenet_v1": _torchvision("efficientnet_v2_s-dd5fe13b.pth")}, head="classifier"),
    Backbone("efficientnet_v2_m", "EfficientNetV2-M", 1280, "torchvision", "efficientnet_v2_m",
             {"imagenet_v1": _torchvision("efficientnet_v2_m-dc08266a.pth")}, head="classifier"),
    Backbone("efficientnet_v2_l", "EfficientNetV2-L", 1280, "torchvision", "efficientnet_v2_l",
             {"imagenet_v1": _torchvision("efficientnet_v2_l-59c71312.pth")}, head="classifier"),
    # openai_fp16: the same weights run in fp16, as the study extracted its CLIP features (clip.load on a GPU)
    Backbone("clip_vit_b32", "CLIP-ViT-B-32", 512, "open_clip", "ViT-B-32-quickgelu",
             {"openai": _CLIP_B32, "openai_fp16": replace(_CLIP_B32, dtype="float16")}, patch=32),
    Backbone("clip_vit_b16", "CLIP-ViT-B-16", 512, "open_clip", "ViT-B-16-quickgelu",
             {"openai": WeightsFile(
                 "clip_vit_b16_openai.safetensors",
                 _HF.format(repo="vit_base_patch16_clip_224.openai", revision="main"),
                 "4b8699299b1e8997753c64b052ba32031449d5d853f55a039148560ee02b820f", CLIP_PREPROCESS)}, patch=16,
             notes="the OpenAI ViT-B/16 image tower: 4x the patches of ViT-B/32, finer spatial detail"),
]
BACKBONES: dict[str, Backbone] = {entry.name: entry for entry in _ENTRIES}
FEATURE_CHOICES = [*BACKBONES, "none"]  # a run's `features`


def backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def feature_dim(features: str) -> int:
    """The conditioning depth a run's transformer reads: the backbone's, or the no-feats noise's."""
    return NO_FEATS_DIM if features == "none" else backbone(features).feat_dim


def display_name(features: str) -> str:
    return "none" if features == "none" else backbone(features).display_name


def is_path(weights: str) -> bool:
    return "/" in weights or weights.endswith((".pth", ".pt", ".bin", ".ckpt", ".safetensors"))


def resolve_weights(name: str, weights: str = "default") -> str:
    """'default' -> the backbone's default; anything it does not accept is an error listing what it does."""
    entry = backbone(name)
    weights = entry.default_weights if weights == "default" else weights
    if weights != "none" and weights not in entry.weights and not is_path(weights):
        raise ValueError(f"backbone {name!r} accepts weights {[*entry.weights, 'none']} or a path to a weights "
                         f"file, not {weights!r}")
    return weights


def weights_file(name: str, weights: str = "default", cache_dir: str | Path = DEFAULT_CACHE_DIR) -> str | None:
    """The local file a (backbone, weights) pair reads: None for random init, the path itself for a path."""
    weights = resolve_weights(name, weights)
    if weights == "none":
        return None
    if weights in backbone(name).weights:
        return str(Path(cache_dir) / backbone(name).weights[weights].filename)
    return weights


def weights_by_filename(filename: str) -> tuple[str, str, WeightsFile]:
    """(backbone, weights name, file) of a registry file, for the fetch rule that is asked for it by path."""
    for entry in BACKBONES.values():
        for weights, wf in entry.weights.items():
            if wf.filename == filename:
                return entry.name, weights, wf
    known = sorted(wf.filename for e in BACKBONES.values() for wf in e.weights.values())
    raise ValueError(f"{filename!r} is not a weights file of any backbone; known: {known}")


WEIGHTS_FILES = sorted({wf.filename for entry in BACKBONES.values() for wf in entry.weights.values()})
