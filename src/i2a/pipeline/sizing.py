"""How long each compute-heavy job should take, from a device's calibration, and the time limit it asks SLURM for.

One function, `job_minutes`, gives both for a rule and its wildcards: the workflow's `resources: runtime` and
`i2a plan` call it, so the plan shows exactly what the profile submits. The model (docs/cluster.md):

    expected = start-up + work / rate                 (rate: the calibration's figure for that work)
    limit    = min(expected x margin + start-up allowance, max_runtime)     (config `cluster:`)

A training run whose limit is capped by max_runtime trains in segments (`segments_needed`,
i2a.training.segments). Rules without a figure in the calibration keep their own fixed limit, and say so.
Torch-free: planning the DAG calls it for every job.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from i2a import SOURCE_CHECKOUT as REPO
from i2a.data.splits import VAS_VALID_PER_CLASS

CALIBRATION_DIR = REPO / "profiles" / "slurm" / "calibration"
VAS_CLIPS = 12_541  # SpecVQGAN's VAS lists (i2a.data.splits)
# validation costs a forward pass only: about a third of a training step's arithmetic per sample
VALIDATION_SPEEDUP = 3.0


class CalibrationError(ValueError):
    pass


@dataclass(frozen=True)
class JobTime:
    """One job's expected minutes (None: no calibration figure for its work) and the limit it requests."""

    expected_min: float | None
    limit_min: int
    capped: bool = False  # the limit is max_runtime: the work takes more than one job (segments)
    note: str = ""


# ------------------------------------------------------------------------------------------------ calibration
@lru_cache(maxsize=16)
def _load(path: str, mtime: float) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "device" not in data:
        raise CalibrationError(f"{path}: not a calibration file (no `device:`); `i2a calibrate` writes one")
    return data


def load_calibration(path: str | Path) -> dict[str, Any]:
    """A calibration file (`i2a calibrate` writes them); a relative path is taken from the repository."""
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = REPO / path
    if not path.is_file():
        raise CalibrationError(f"calibration file {path} does not exist; `i2a calibrate` measures one "
                               f"(those shipped: {', '.join(p.name for p in sorted(CALIBRATION_DIR.glob('*.yaml')))})")
    return _load(str(path.resolve()), path.stat().st_mtime)


# ------------------------------------------------------------------------------------------------ work sizes
def clip_counts(config: Mapping[str, Any]) -> dict[str, int]:
    """Clips per split the config's dataset has (VAS: SpecVQGAN's 11,773 / 768)."""
    if config["dataset"] == "synthetic":
        s = config["synthetic"]
        return {"train": s["classes"] * (s["clips_per_class"] - s["valid_per_class"]),
                "valid": s["classes"] * s["valid_per_class"]}
    valid = sum(VAS_VALID_PER_CLASS.values())
    return {"train": VAS_CLIPS - valid, "valid": valid}


def per_shard(config: Mapping[str, Any], split: str) -> int:
    return math.ceil(clip_counts(config)[split] / config["shards"][split])


def transformer_flops(layers: int, embed: int, positions: int) -> float:
    """Multiply-adds of one forward pass per sequence (weights and attention): what sets a shape's cost."""
    return layers * positions * (12 * embed * embed + 2 * positions * embed)


def _shape(model: Mapping[str, Any]) -> dict[str, int]:
    return {k: int(model[k]) for k in ("layers", "heads", "embed", "block_size", "feat_dim")}


def _rate_for(entries: list[dict[str, Any]], shape: dict[str, int], batch: int, precision: str,
              key: str) -> tuple[float, str] | None:
    """A rate for this shape, batch and precision: the measured one, else the nearest measured one of the same
    precision (closest batch, then closest cost) scaled by the cost ratio of the two shapes."""
    same = [e for e in entries if e.get("precision") == precision]
    if not same and precision == "tf32":  # TF32 is never slower than fp32: fp32's figure bounds it
        same = [e for e in entries if e.get("precision") == "fp32"]
    for e in same:
        if _shape(e) == shape and int(e["batch"]) == batch:
            return float(e[key]), "measured"
    if not same:
        return None
    cost = transformer_flops(shape["layers"], shape["embed"], shape["block_size"])

    def cost_of(e):
        return transformer_flops(int(e["layers"]), int(e["embed"]), int(e["block_size"]))

    e = min(same, key=lambda e: (abs(math.log(int(e["batch"]) / batch)), abs(math.log(cost_of(e) / cost))))
    other = cost_of(e)
    return float(e[key]) * other / cost, (f"scaled from {e['layers']}x{e['embed']} batch {e['batch']} by its "
                                          "arithmetic")


# ------------------------------------------------------------------------------------------------ the model
def _work_seconds(rule: str, config: Mapping[str, Any], wildcards: Mapping[str, str], spec: Any,
                  cal: Mapping[str, Any], threads: int) -> tuple[float | None, str]:
    """Seconds of work of one job at the calibration's rates (without start-up), or None and why."""
    clips = clip_counts(config)
    if rule == "extract_features":
        backbone, split = wildcards["backbone"], wildcards["split"]
        frames = per_shard(config, split) * config["video"]["feat_frames"]
        precision = config["features"]["precision"]
        rate, how = encoder_rate(cal, backbone, precision)
        decode = cal.get("decode_frames_per_s_per_thread")
        if rate is None or decode is None:
            return None, f"no encoder figure in {precision} or no decode figure"
        return frames / rate + frames / (float(decode) * max(1, threads)), how
    if rule == "encode_tokens":
        rate = (cal.get("codebook") or {}).get("encode_clips_per_s")
        return (None, "no codebook encode figure") if rate is None else (per_shard(config, wildcards["split"])
                                                                         / float(rate), "")
    if rule == "reconstruct_validation":
        cb = cal.get("codebook") or {}
        if "encode_clips_per_s" not in cb or "decode_clips_per_s" not in cb:
            return None, "no codebook figures"
        return clips["valid"] * (1 / float(cb["encode_clips_per_s"]) + 1 / float(cb["decode_clips_per_s"])), ""
    if rule in ("score_samples", "score_reference"):
        rate = (cal.get("melception") or {}).get("spectrograms_per_s")
        if rate is None:
            return None, "no Melception figure"
        if rule == "score_reference":
            n = clips["valid"]
        else:
            folder = wildcards.get("sampleset", "")
            n = clips["valid"] * (1 if folder.startswith("reconstruction") else
                                  spec_samples(config, folder) * config["sampling"]["seeds"])
        return n / float(rate), ""
    if rule in ("train_gpt", "lr_find"):
        train = spec.train
        found = _rate_for(list(cal.get("training") or []), _shape_of(spec), train.batch, train.precision,
                          "samples_per_s")
        if found is None:
            return None, f"no training figure in {train.precision}"
        rate, how = found
        if rule == "lr_find":
            return config["lr_finder"]["steps"] * train.batch * train.accumulate / rate, how
        gpus = train.gpus
        efficiency = float(cal.get("ddp_efficiency", 1.0)) if gpus > 1 else 1.0
        total = rate * gpus * efficiency
        epoch = clips["train"] / total + clips["valid"] / (total * VALIDATION_SPEEDUP)
        epoch += float(cal.get("epoch_overhead_s", 0.0))
        return train.max_epochs * epoch, how
    if rule == "sample_tokens":
        sampling = config["sampling"]
        n = clips["valid"] * spec.sampling.samples_per_video * sampling["seeds"]
        found = _rate_for(list(cal.get("sampling") or []), _shape_of(spec), sampling["batch_size"],
                          sampling["precision"], "seqs_per_s")
        if found is None:
            return None, f"no sampling figure in {sampling['precision']}"
        rate, how = found
        decode = (cal.get("codebook") or {}).get("decode_clips_per_s")
        return n / rate + (n / float(decode) if decode else 0.0), how
    if rule == "vocode":
        rate = (cal.get("vocoder") or {}).get("spectrograms_per_s")
        if rate is None:
            return None, "no vocoder figure"
        vocoder = config["vocoder"]
        return vocoder["listen_videos"] * vocoder.get("listen_samples", 1) / float(rate), ""
    return None, "not calibrated"


def encoder_rate(cal: Mapping[str, Any], backbone: str, precision: str) -> tuple[float | None, str]:
    """Frames/s of a backbone: its own figure; tf32 without one takes fp32's (TF32 is never slower); a backbone
    without a figure takes the slowest one measured (a bound, said in the plan)."""
    encoders = cal.get("encoders") or {}
    for p in (precision, "fp32") if precision == "tf32" else (precision,):
        if p in encoders.get(backbone, {}):
            return float(encoders[backbone][p]), "" if p == precision else "tf32 planned at fp32's rate"
        measured = {name: rates[p] for name, rates in encoders.items() if p in rates}
        if measured:
            slowest = min(measured, key=measured.get)
            return float(measured[slowest]), f"{backbone} not measured: planned at {slowest}'s rate"
    return None, ""


def spec_samples(config: Mapping[str, Any], folder: str) -> int:
    """Samples per video of a sampled folder runs/<run>/<kind> (the run's own, e.g. 100 for a released row)."""
    from i2a.spec.runspec import RunSpec

    run = folder.split("/")[1] if folder.startswith("runs/") else None
    entry = next((r for r in config["runs"] if r["name"] == run), None)
    if entry is None:
        return config["sampling"]["samples_per_video"]
    return RunSpec.from_config(dict(config), entry).sampling.samples_per_video


def _shape_of(spec: Any) -> dict[str, int]:
    m = spec.model
    return {"layers": m.layers, "heads": m.heads, "embed": m.embed, "block_size": m.block_size,
            "feat_dim": m.feat_dim}


def cluster_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    return dict(config.get("cluster") or {})


def limit_minutes(expected_min: float, cluster: Mapping[str, Any]) -> tuple[int, bool]:
    """expected x margin + start-up allowance, capped at max_runtime; whole minutes (SLURM's unit)."""
    wanted = expected_min * float(cluster["margin"]) + float(cluster["startup_minutes"])
    cap = float(cluster["max_runtime_hours"]) * 60
    return int(math.ceil(min(wanted, cap))), wanted > cap


def job_minutes(rule: str, config: Mapping[str, Any], wildcards: Mapping[str, str] | None = None, spec: Any = None,
                threads: int = 1, fallback_min: int = 60, calibration: str | Path | None = None) -> JobTime:
    """The expected minutes of one job of `rule` and the limit it requests (first attempt). `spec`: the run's
    RunSpec for the training and sampling rules. Without a figure for its work the rule keeps `fallback_min`."""
    cluster = cluster_settings(config)
    cal = load_calibration(calibration or cluster["calibration"])
    work, note = _work_seconds(rule, config, dict(wildcards or {}), spec, cal, threads)
    if work is None:
        return JobTime(None, min(int(fallback_min), int(float(cluster["max_runtime_hours"]) * 60)), note=note)
    expected = float(cal.get("startup_s", 0.0)) / 60 + work / 60
    limit, capped = limit_minutes(expected, cluster)
    return JobTime(expected, limit, capped, note)


def segments_needed(time: JobTime, cluster: Mapping[str, Any]) -> int:
    """Jobs a run needs when its limit is capped: its wanted limit over max_runtime, rounded up."""
    if time.expected_min is None or not time.capped:
        return 1
    wanted = time.expected_min * float(cluster["margin"]) + float(cluster["startup_minutes"])
    usable = float(cluster["max_runtime_hours"]) * 60 - float(cluster["startup_minutes"])
    return int(math.ceil(wanted / max(usable, 1.0)))


def runtime(rule: str, config: Mapping[str, Any], fallback_min: int, spec_of=None, threads: int = 1):
    """A rule's `resources: runtime` (minutes): the calibrated limit, x attempt on a retry, never over
    max_runtime (a retried run that was cut by its limit continues in another segment instead)."""
    cap = int(float(cluster_settings(config)["max_runtime_hours"]) * 60)

    def resource(wildcards, attempt):
        spec = spec_of(wildcards) if spec_of else None
        limit = job_minutes(rule, config, dict(wildcards.items()), spec, threads, fallback_min).limit_min
        return min(limit * attempt, cap)

    return resource
