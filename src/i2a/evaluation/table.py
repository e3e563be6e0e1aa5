"""The study's table (SPEC section 9): one row per run, hyperparameters, curve summary, KL and FID.

Column names are the config's (`layers`, `heads`, `embed`, `dropout`, `weight_decay`, `batch`, `gpus`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from i2a.atomic import atomic_path
from i2a.features.registry import display_name
from i2a.runspec import RunSpec

SCHEDULER_NAMES = {"none": "none", "plateau": "ReduceLROnPlateau", "cosine": "CosineAnnealing"}

COLUMNS = ["run", "features", "scheduler", "batch", "gpus", "layers", "heads", "embed", "dropout", "weight_decay",
           "epochs", "overfit", "KL", "KL_low", "KL_high", "KL_seed_sd", "FID", "FID_low", "FID_high", "FID_seed_sd",
           "videos", "samples_per_video", "seeds", "train_clips", "train_skipped", "valid_clips", "valid_skipped"]


def clip_counts(manifests: list[pd.DataFrame], clip_table: pd.DataFrame) -> dict[str, int]:
    """Clips used and skipped per split, from the preprocessed shards' manifests."""
    split_of = dict(zip(clip_table["clip"], clip_table["split"]))
    counts = {f"{s}_{k}": 0 for s in ("train", "valid") for k in ("clips", "skipped")}
    for manifest in manifests:
        for clip, status in zip(manifest["clip"], manifest["status"]):
            counts[f"{split_of[clip]}_{'clips' if status == 'ok' else 'skipped'}"] += 1
    return counts


def table_row(spec: RunSpec, scores: dict, training: dict | None, counts: dict[str, int]) -> dict:
    released = spec.source == "released"
    return {
        "run": spec.name,
        "features": display_name(spec.features),
        "scheduler": SCHEDULER_NAMES[spec.train.scheduler],
        "batch": spec.train.batch, "gpus": spec.train.gpus, "layers": spec.model.layers, "heads": spec.model.heads,
        "embed": spec.model.embed, "dropout": spec.model.dropout, "weight_decay": spec.train.weight_decay,
        "epochs": None if released else training["best_epoch"],
        "overfit": None if released else training["overfit"],
        "KL": scores["mkl"]["value"], "KL_low": scores["mkl"]["low"], "KL_high": scores["mkl"]["high"],
        "KL_seed_sd": scores["mkl"].get("seed_sd"),
        "FID": scores["fid"]["value"], "FID_low": scores["fid"]["low"], "FID_high": scores["fid"]["high"],
        "FID_seed_sd": scores["fid"].get("seed_sd"),
        "videos": scores["n_videos"], "samples_per_video": scores["samples_per_video"], "seeds": scores["n_seeds"],
        **counts,
    }


def build_table(specs: Sequence[RunSpec], score_files: dict[str, Path], training_files: dict[str, Path],
                counts: dict[str, int]) -> pd.DataFrame:
    rows = []
    for spec in specs:
        scores = json.loads(Path(score_files[spec.name]).read_text())
        training = json.loads(Path(training_files[spec.name]).read_text()) if spec.name in training_files else None
        rows.append(table_row(spec, scores, training, counts))
    return pd.DataFrame(rows, columns=COLUMNS)


def write_table(runs: Sequence[dict], score_files: Sequence[str], training_files: Sequence[str],
                manifests: Sequence[str], clips_tsv: str | Path, out: str | Path) -> pd.DataFrame:
    """The workflow's aggregate_table job: every run's row from its scores.json and train.json."""
    from i2a.data.clips import Shard, read_clip_table

    counts = clip_counts([Shard(d).table for d in manifests], read_clip_table(clips_tsv))
    table = build_table([RunSpec.from_dict(r) for r in runs], {Path(p).parent.name: p for p in score_files},
                        {Path(p).parent.name: p for p in training_files}, counts)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4g")
    return table
