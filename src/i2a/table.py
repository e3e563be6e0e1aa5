"""The study's table (SPEC section 9): one row per run, hyperparameters, curve summary, KL and FID."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

FEATURE_NAMES = {
    "resnet18": "ResNet18", "resnet50": "ResNet50", "efficientnet_v2_s": "EfficientNetV2-S",
    "efficientnet_v2_m": "EfficientNetV2-M", "efficientnet_v2_l": "EfficientNetV2-L",
    "clip_vit_b32": "CLIP-ViT-B-32", "none": "none",
}
SCHEDULER_NAMES = {"none": "none", "plateau": "ReduceLROnPlateau", "cosine": "CosineAnnealing"}

COLUMNS = ["run", "features", "scheduler", "batch", "gpus", "layers", "heads", "embed", "dropout", "decay",
           "epochs", "overfit", "KL", "KL_low", "KL_high", "KL_seed_sd", "FID", "FID_low", "FID_high", "FID_seed_sd",
           "videos",
           "samples_per_video", "seeds", "train_clips", "train_skipped", "valid_clips", "valid_skipped"]


def clip_counts(manifests: list[pd.DataFrame], clip_table: pd.DataFrame) -> dict[str, int]:
    """Clips used and skipped per split, from the preprocessed shards' manifests."""
    split_of = dict(zip(clip_table["clip"], clip_table["split"]))
    counts = {f"{s}_{k}": 0 for s in ("train", "valid") for k in ("clips", "skipped")}
    for manifest in manifests:
        for clip, status in zip(manifest["clip"], manifest["status"]):
            counts[f"{split_of[clip]}_{'clips' if status == 'ok' else 'skipped'}"] += 1
    return counts


def table_row(run: dict, scores: dict, training: dict | None, counts: dict[str, int]) -> dict:
    released = run.get("source") == "released"
    return {
        "run": run["name"],
        "features": FEATURE_NAMES[run["features"]],
        "scheduler": SCHEDULER_NAMES[run["scheduler"]],
        "batch": run["batch"], "gpus": run["gpus"], "layers": run["layers"], "heads": run["heads"],
        "embed": run["embed"], "dropout": run["dropout"], "decay": run["weight_decay"],
        "epochs": None if released else training["best_epoch"],
        "overfit": None if released else training["overfit"],
        "KL": scores["mkl"]["value"], "KL_low": scores["mkl"]["low"], "KL_high": scores["mkl"]["high"],
        "KL_seed_sd": scores["mkl"].get("seed_sd"),
        "FID": scores["fid"]["value"], "FID_low": scores["fid"]["low"], "FID_high": scores["fid"]["high"],
        "FID_seed_sd": scores["fid"].get("seed_sd"),
        "videos": scores["n_videos"], "samples_per_video": scores["samples_per_video"], "seeds": scores["n_seeds"],
        **counts,
    }


def build_table(runs: list[dict], score_files: dict[str, Path], training_files: dict[str, Path],
                counts: dict[str, int]) -> pd.DataFrame:
    rows = []
    for run in runs:
        scores = json.loads(Path(score_files[run["name"]]).read_text())
        training = json.loads(Path(training_files[run["name"]]).read_text()) if run["name"] in training_files else None
        rows.append(table_row(run, scores, training, counts))
    return pd.DataFrame(rows, columns=COLUMNS)
