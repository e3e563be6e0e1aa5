"""Which weights file each backbone reads: a table without torch, so planning the DAG stays fast."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE_DIR = "resources/weights"

# backbone -> the weights names it accepts, its default first (besides "none" and a path to a file)
ACCEPTED_WEIGHTS: dict[str, tuple[str, ...]] = {
    "resnet18": ("imagenet_v1",),
    "resnet50": ("imagenet_v1", "imagenet_v2"),
    "efficientnet_v2_s": ("imagenet_v1",),
    "efficientnet_v2_m": ("imagenet_v1",),
    "efficientnet_v2_l": ("imagenet_v1",),
    "clip_vit_b32": ("openai",),
}


@dataclass(frozen=True)
class WeightFile:
    filename: str
    url: str
    sha256: str  # full digest, or the prefix torchvision embeds in its file names


_TV = "https://download.pytorch.org/models/"
WEIGHT_FILES: dict[tuple[str, str], WeightFile] = {
    ("resnet18", "imagenet_v1"): WeightFile("resnet18-f37072fd.pth", _TV + "resnet18-f37072fd.pth", "f37072fd"),
    ("resnet50", "imagenet_v1"): WeightFile("resnet50-0676ba61.pth", _TV + "resnet50-0676ba61.pth", "0676ba61"),
    ("resnet50", "imagenet_v2"): WeightFile("resnet50-11ad3fa6.pth", _TV + "resnet50-11ad3fa6.pth", "11ad3fa6"),
    ("efficientnet_v2_s", "imagenet_v1"): WeightFile(
        "efficientnet_v2_s-dd5fe13b.pth", _TV + "efficientnet_v2_s-dd5fe13b.pth", "dd5fe13b"),
    ("efficientnet_v2_m", "imagenet_v1"): WeightFile(
        "efficientnet_v2_m-dc08266a.pth", _TV + "efficientnet_v2_m-dc08266a.pth", "dc08266a"),
    ("efficientnet_v2_l", "imagenet_v1"): WeightFile(
        "efficientnet_v2_l-59c71312.pth", _TV + "efficientnet_v2_l-59c71312.pth", "59c71312"),
    # The OpenAI release (a TorchScript archive), as open_clip names and fetches it; its URL embeds the SHA-256.
    ("clip_vit_b32", "openai"): WeightFile(
        "ViT-B-32.pt",
        "https://openaipublic.azureedge.net/clip/models/"
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
}



def is_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pth", ".pt", ".bin", ".ckpt"))


def resolve_weights_name(name: str, weights: str) -> str:
    """'default' -> the backbone's default; anything it does not accept is an error listing what it does."""
    if name not in ACCEPTED_WEIGHTS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(ACCEPTED_WEIGHTS)}")
    accepted = ACCEPTED_WEIGHTS[name]
    weights = accepted[0] if weights == "default" else weights
    if weights != "none" and weights not in accepted and not is_path(weights):
        raise ValueError(f"backbone {name!r} accepts weights {sorted(accepted) + ['none']} or a path to a "
                         f"weights file, not {weights!r}")
    return weights


def weights_file_for(name: str, weights: str = "default", cache_dir: str | Path = DEFAULT_CACHE_DIR) -> str | None:
    """The local file the (backbone, weights) pair reads: None for random init, the path itself for a path."""
    weights = resolve_weights_name(name, weights)
    if weights == "none":
        return None
    if (name, weights) in WEIGHT_FILES:
        return str(Path(cache_dir) / WEIGHT_FILES[(name, weights)].filename)
    return weights
