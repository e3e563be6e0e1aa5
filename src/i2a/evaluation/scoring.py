"""The scoring protocol (SPEC section 7): Melception outputs of the real validation clips (the reference every run
is scored against) and of a run's samples, then FID, MKL, ISc and KID with their uncertainty."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from i2a.atomic import atomic_path, write_text
from i2a.evaluation.metrics import METRICS, bootstrap_ci, inception_score, kid, mean_over_seeds, seed_spread

log = logging.getLogger(__name__)


def load_evaluator(melception_ckpt: str | Path, stats: str | Path | None = None, device=None):
    """(Melception, per-bin stats) ready to score; the released one needs its stats file."""
    from i2a.device import pick_device
    from i2a.models.melception import load_melception

    model, mel_stats = load_melception(melception_ckpt, stats_path=stats, device=pick_device(device))
    if mel_stats is None:
        raise ValueError(f"{melception_ckpt} carries no per-mel-bin statistics: set melception.stats to its "
                         "train_means_stds_melspec_10s_22050hz.txt")
    return model, mel_stats


def score_reference(valid_shards: Sequence[str | Path], melception_ckpt: str | Path, stats: str | Path | None,
                    crop_frames: int, out: str | Path, device=None) -> None:
    """Melception outputs of the real validation spectrograms (npz: clips, classes, '2048', logits, ...)."""
    from i2a.data.clips import split_clips, split_mels
    from i2a.models.melception import melception_outputs

    model, mel_stats = load_evaluator(melception_ckpt, stats, device)
    clips = split_clips(valid_shards)
    outputs = melception_outputs(model, split_mels(valid_shards, crop_frames), mel_stats)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, clips=np.array(list(clips["clip"]), dtype=str), classes=np.array(list(clips["class"]), dtype=str),
                 **outputs)
    log.info("reference: %d real clips", len(clips))


def score_samples(mels_path: str | Path, names_path: str | Path, reference_path: str | Path,
                  melception_ckpt: str | Path, stats: str | Path | None, seeds: int, n_boot: int, seed: int,
                  out: str | Path, device=None) -> dict:
    """FID and MKL of a run's samples against the shared real reference, each the mean over sampling seeds of the
    paper's protocol with a 95% bootstrap interval over videos and the spread over seeds; ISc and KID on all
    samples. Writes scores.json and returns it."""
    from i2a.models.melception import melception_outputs

    model, mel_stats = load_evaluator(melception_ckpt, stats, device)
    reference = np.load(reference_path)
    videos = Path(names_path).read_text().splitlines()
    if list(reference["clips"]) != videos:
        raise ValueError("the samples and the real reference list different validation videos")
    mels = np.load(mels_path, mmap_mode="r")  # (V, R x K, n_mels, T), R sampling seeds of K samples
    R = seeds
    V, RK = mels.shape[:2]
    if RK % R:
        raise ValueError(f"{RK} samples per video do not split into {R} sampling seeds")
    K = RK // R
    fake = melception_outputs(model, np.asarray(mels, dtype=np.float32).reshape(V * RK, *mels.shape[2:]), mel_stats)
    fake = {k: v.reshape(V, R, K, -1) for k, v in fake.items()}
    scores = {"n_videos": V, "samples_per_video": K, "n_seeds": R}
    for name, key in (("fid", "2048"), ("mkl", "logits")):
        point, low, high = bootstrap_ci(fake[key], reference[key], mean_over_seeds(name), n_boot=n_boot, seed=seed)
        per_seed = [METRICS[name](fake[key][:, r], reference[key]) for r in range(R)]
        _, seed_sd = seed_spread(per_seed)
        scores[name] = {"value": point, "low": low, "high": high, "per_seed": per_seed, "seed_sd": seed_sd}
    fake = {k: v.reshape(V * R * K, -1) for k, v in fake.items()}
    isc_mean, isc_std = inception_score(fake["logits_unbiased"], splits=min(10, len(fake["logits_unbiased"])))
    kid_mean, kid_std = kid(fake["2048"], reference["2048"])
    scores["isc"] = {"value": isc_mean, "std": isc_std}
    scores["kid"] = {"value": kid_mean, "std": kid_std}
    write_text(out, json.dumps(scores, indent=2, allow_nan=True))
    log.info("FID %.2f [%.2f, %.2f]  MKL %.3f [%.3f, %.3f]  (%d videos x %d seeds x %d samples)",
             scores["fid"]["value"], scores["fid"]["low"], scores["fid"]["high"], scores["mkl"]["value"],
             scores["mkl"]["low"], scores["mkl"]["high"], V, R, K)
    return scores
