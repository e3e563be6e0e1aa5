"""The study's table (design.md §9): one row per run, hyperparameters, curve summary, KL and FID.

Column names are the config's (`layers`, `heads`, `embed`, `dropout`, `weight_decay`, `batch`, `gpus`). A row
of a released transformer carries the published numbers beside the measured ones (`published_KL`,
`published_FID`, from i2a.spec.released), a row of the study's grid its report's and its evaluation logs' numbers
(`reported_*`, `logged_*`, from i2a.evaluation.reference), and every row says which inputs it was computed on
(`inputs`: derived here, the authors' precomputed mels and features, or their mels with features derived here).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from i2a.evaluation.reference import reference_columns
from i2a.infra.atomic import atomic_path
from i2a.spec.backbones import display_name
from i2a.spec.released import released as released_file
from i2a.spec.runspec import CEILING_ROW, CONTROL_SUFFIX, RunSpec
from i2a.training.curves import curve_summary

SCHEDULER_NAMES = {"none": "none", "plateau": "ReduceLROnPlateau", "cosine": "CosineAnnealing"}

# the scores first, so they are not the columns that fall off a screen; then what made them
COLUMNS = ["run", "kind", "features", "KL", "KL_low", "KL_high", "published_KL", "reported_KL", "logged_KL", "dKL",
           "dKL_low", "dKL_high", "FID", "FID_low", "FID_high", "published_FID", "reported_FID", "logged_FID", "dFID",
           "dFID_low", "dFID_high", "ISc", "KID", "class_acc", "probe_acc", "inputs", "feat_sample_size", "feature_norm",
           "scheduler", "batch", "gpus", "layers", "heads", "embed", "dropout", "weight_decay", "precision", "epochs",
           "overfit", "KL_seed_sd", "FID_seed_sd", "videos", "samples_per_video", "seeds", "baseline", "train_clips",
           "train_skipped", "valid_clips", "valid_skipped"]
# comparisons.csv: one line per paired comparison, row minus `against`; `relation` says why they are compared
COMPARISON_COLUMNS = ["row", "against", "relation", "dKL", "dKL_low", "dKL_high", "dFID", "dFID_low", "dFID_high",
                      "videos"]
KINDS = {"run": "run", "control": "control: features of another video", "ceiling": "ceiling: codebook reconstruction"}


def clip_counts(manifests: list[pd.DataFrame], clip_table: pd.DataFrame) -> dict[str, int]:
    """Clips used and skipped per split, from the preprocessed shards' manifests."""
    split_of = dict(zip(clip_table["clip"], clip_table["split"]))
    counts = {f"{s}_{k}": 0 for s in ("train", "valid") for k in ("clips", "skipped")}
    for manifest in manifests:
        for clip, status in zip(manifest["clip"], manifest["status"]):
            counts[f"{split_of[clip]}_{'clips' if status == 'ok' else 'skipped'}"] += 1
    return counts


def score_columns(scores: dict, comparison: dict | None) -> dict:
    """The row's scores: MKL and FID with intervals, the paired differences to the baseline, ISc, KID."""
    row = {"KL": scores["mkl"]["value"], "KL_low": scores["mkl"]["low"], "KL_high": scores["mkl"]["high"],
           "KL_seed_sd": scores["mkl"].get("seed_sd"),
           "FID": scores["fid"]["value"], "FID_low": scores["fid"]["low"], "FID_high": scores["fid"]["high"],
           "FID_seed_sd": scores["fid"].get("seed_sd"),
           "ISc": scores.get("isc", {}).get("value"), "KID": scores.get("kid", {}).get("value"),
           "class_acc": scores.get("class_acc"),
           "videos": scores["n_videos"], "samples_per_video": scores["samples_per_video"], "seeds": scores["n_seeds"]}
    if comparison is not None:
        for name in ("dKL", "dFID"):
            row.update({name: comparison[name]["value"], f"{name}_low": comparison[name]["low"],
                        f"{name}_high": comparison[name]["high"]})
        row["baseline"] = comparison["against"]
    return row


def run_columns(spec: RunSpec, training: dict | None, probe: dict | None) -> dict:
    """What made a run's row: its settings (the config's names), its training curve (`curve_summary`: the best
    epoch, counted here from 1, and whether it overfit), its features' probe; for a released transformer, what
    the paper reports for it."""
    released = spec.source == "released"
    published = released_file(spec.released).published if released else None
    return {
        "published_KL": None if published is None else published.KL,
        "published_FID": None if published is None else published.FID,
        "precision": None if released else spec.train.precision,
        "features": display_name(spec.features), "probe_acc": None if probe is None else probe["probe_acc"],
        "feat_sample_size": spec.feat_sample_size, "feature_norm": spec.feature_norm,
        "scheduler": SCHEDULER_NAMES[spec.train.scheduler],
        "batch": spec.train.batch, "gpus": spec.train.gpus, "layers": spec.model.layers, "heads": spec.model.heads,
        "embed": spec.model.embed, "dropout": spec.model.dropout, "weight_decay": spec.train.weight_decay,
        "epochs": None if released else training["best_epoch"] + 1,
        "overfit": None if released else training["overfit"],
    }



def _read(path) -> dict | None:
    return None if path is None else json.loads(Path(path).read_text())


def build_table(specs: Sequence[RunSpec], rows: dict[str, str], results: str | Path, counts: dict[str, int],
                baseline: str | None, probes: dict[str, Path], inputs: str | dict[str, str] = "derived",
                overfit_margin: float = 0.01, overfit_patience: int = 2) -> pd.DataFrame:
    """One row per entry of `rows` ({row name: its folder under `results`}): runs, controls, the ceiling. A
    trained run's curve is read from its metrics.csv and summarised with the overfit margin and patience.
    `inputs`: the `inputs` column, one for all rows or per run (and "reconstruction"), a control taking its run's."""
    results, by_name = Path(results), {spec.name: spec for spec in specs}
    table = []
    for name, folder in rows.items():
        scores = _read(results / folder / "scores.json")
        comparison = None if name == baseline or baseline is None else _read(results / folder / "comparison.json")
        if name == CEILING_ROW:
            row = {"run": name, "kind": KINDS["ceiling"], "features": "codebook"}
        else:
            spec = by_name[name.removesuffix(CONTROL_SUFFIX)]
            training = (curve_summary(results / "runs" / spec.name / "metrics.csv", overfit_margin, overfit_patience)
                        if spec.source == "train" else None)
            row = {"run": name, "kind": KINDS["control" if name.endswith(CONTROL_SUFFIX) else "run"],
                   **run_columns(spec, training, _read(probes.get(spec.features))),
                   **reference_columns(name)}  # the study's numbers: its rows, not their controls
        source = inputs if isinstance(inputs, str) else inputs[name.removesuffix(CONTROL_SUFFIX)]
        table.append({**row, "inputs": source, **score_columns(scores, comparison), **counts})
    return pd.DataFrame(table, columns=COLUMNS)


def comparison_table(files: Sequence[str | Path]) -> pd.DataFrame:
    """Paired comparisons (compare_rows' files) as comparisons.csv's lines, in the files' order."""
    lines = []
    for path in files:
        result = _read(path)
        line = {name: result[name] for name in ("row", "against", "relation", "videos")}
        for name in ("dKL", "dFID"):
            line |= {name: result[name]["value"], f"{name}_low": result[name]["low"],
                     f"{name}_high": result[name]["high"]}
        lines.append(line)
    return pd.DataFrame(lines, columns=COMPARISON_COLUMNS)


def write_table(runs: Sequence[dict], rows: dict[str, str], baseline: str | None, results: str | Path,
                probe_files: Sequence[str], manifests: Sequence[str], clips_tsv: str | Path,
                out: str | Path, inputs: str | dict[str, str] = "derived", settings: dict | None = None,
                comparisons: Sequence[str | Path] = (), comparisons_out: str | Path | None = None) -> pd.DataFrame:
    """The workflow's aggregate_table job: every row's scores, its comparison with the baseline, its run's
    settings and training summary, and its backbone's probe. `settings`: the config's `table` section. With
    `comparisons_out`, also every paired comparison (`comparisons`: their files) as comparisons.csv."""
    from i2a.data.clips import Shard, read_clip_table

    counts = clip_counts([Shard(d).table for d in manifests], read_clip_table(clips_tsv))
    probes = {Path(p).parent.name: Path(p) for p in probe_files}
    settings = settings or {}
    table = build_table([RunSpec.from_dict(r) for r in runs], rows, results, counts, baseline, probes, inputs=inputs,
                        overfit_margin=settings.get("overfit_margin", 0.01),
                        overfit_patience=settings.get("overfit_patience", 2))
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4g")
    if comparisons_out is not None:
        with atomic_path(comparisons_out) as tmp:
            comparison_table(comparisons).to_csv(tmp, index=False, float_format="%.4g")
    return table
