"""The scoring protocol (design.md §7): Melception outputs of the real validation clips (the reference every run
is scored against) and of a run's samples, then FID, MKL, ISc and KID with their uncertainty."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from i2a.evaluation.metrics import inception_score, kid, score_with_uncertainty
from i2a.infra.atomic import atomic_path, write_text

log = logging.getLogger(__name__)


def load_evaluator(melception_ckpt: str | Path, stats: str | Path | None = None, device=None):
    """(Melception, per-bin stats) ready to score; the released one needs its stats file."""
    from i2a.infra.device import pick_device
    from i2a.models.melception import load_melception

    model, mel_stats = load_melception(melception_ckpt, stats_path=stats, device=pick_device(device))
    if mel_stats is None:
        raise ValueError(f"{melception_ckpt} carries no per-mel-bin statistics: set melception.stats to its "
                         "train_means_stds_melspec_10s_22050hz.txt")
    return model, mel_stats


def class_agreement(logits: np.ndarray, class_names: Sequence[str] | None, video_classes: Sequence[str]) -> float | None:
    """Fraction of (V, N, C) logits whose top class is their video's class; None when the evaluator does not know
    the dataset's classes (the released Melception classifies VGGSound's 309)."""
    if class_names is None or not set(video_classes) <= set(class_names):
        return None
    predicted = np.asarray(class_names)[np.asarray(logits).argmax(-1)]
    return float((predicted == np.asarray(video_classes)[:, None]).mean())


def score_reference(valid_shards: Sequence[str | Path], melception_ckpt: str | Path, stats: str | Path | None,
                    crop_frames: int, out: str | Path, evaluator_out: str | Path, device=None) -> None:
    """Melception outputs of the real validation spectrograms (npz: clips, classes, '2048', logits, ...), and
    evaluator.json: how often the evaluator recognises the real clips' classes."""
    from i2a.data.clips import split_clips, split_mels
    from i2a.models.melception import melception_outputs

    model, mel_stats = load_evaluator(melception_ckpt, stats, device)
    clips = split_clips(valid_shards)
    outputs = melception_outputs(model, split_mels(valid_shards, crop_frames), mel_stats)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, clips=np.array(list(clips["clip"]), dtype=str), classes=np.array(list(clips["class"]), dtype=str),
                 **outputs)
    accuracy = class_agreement(outputs["logits"][:, None], model.class_names, list(clips["class"]))
    write_text(evaluator_out, json.dumps({"real_clips": len(clips), "real_acc": accuracy,
                                          "classes": model.class_names}, indent=2))
    log.info("reference: %d real clips%s", len(clips),
             "" if accuracy is None else f", recognised {100 * accuracy:.1f}% by the evaluator")


def score_samples(mels_path: str | Path, names_path: str | Path, reference_path: str | Path,
                  melception_ckpt: str | Path, stats: str | Path | None, seeds: int, n_boot: int, seed: int,
                  out: str | Path, outputs_out: str | Path | None = None, device=None) -> dict:
    """FID and MKL of a set of samples (a run's, a control's, the codebook's reconstructions) against the shared
    real reference, each the mean over sampling seeds of the paper's protocol with a 95% bootstrap interval over
    videos and the spread over seeds; ISc and KID on all samples; the share of samples the evaluator recognises
    as their video's class. Writes scores.json (returned) and, for paired comparisons, the samples' Melception
    outputs (outputs_out: '2048' and 'logits' as (V, R, K, ...)). Mels are streamed through Melception."""
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
    fake = melception_outputs(model, mels.reshape(V * RK, *mels.shape[2:]), mel_stats)
    fake = {k: v.reshape(V, R, K, -1) for k, v in fake.items()}
    if outputs_out is not None:
        with atomic_path(outputs_out) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **{"2048": fake["2048"], "logits": fake["logits"]})
    scores = {"n_videos": V, "samples_per_video": K, "n_seeds": R}
    for name, key in (("fid", "2048"), ("mkl", "logits")):
        scores[name] = score_with_uncertainty(fake[key], reference[key], name, n_boot=n_boot, seed=seed)
    flat = {k: v.reshape(V * R * K, -1) for k, v in fake.items()}
    isc_mean, isc_std = inception_score(flat["logits_unbiased"], splits=min(10, len(flat["logits_unbiased"])))
    kid_mean, kid_std = kid(flat["2048"], reference["2048"])
    scores["isc"] = {"value": isc_mean, "std": isc_std}
    scores["kid"] = {"value": kid_mean, "std": kid_std}
    scores["class_acc"] = class_agreement(fake["logits"].reshape(V, R * K, -1), model.class_names,
                                          list(reference["classes"]))
    write_text(out, json.dumps(scores, indent=2, allow_nan=True))
    log.info("FID %.2f [%.2f, %.2f]  MKL %.3f [%.3f, %.3f]  (%d videos x %d seeds x %d samples)%s",
             scores["fid"]["value"], scores["fid"]["low"], scores["fid"]["high"], scores["mkl"]["value"],
             scores["mkl"]["low"], scores["mkl"]["high"], V, R, K,
             "" if scores["class_acc"] is None else f"; {100 * scores['class_acc']:.0f}% recognised as their class")
    return scores


def compare_rows(outputs: str | Path, against_outputs: str | Path, reference: str | Path, row: str, against: str,
                 relation: str, n_boot: int, seed: int, out: str | Path) -> dict:
    """One row against another on the same validation videos: dKL and dFID (row minus `against`), each with a
    paired bootstrap 95% interval that resamples the videos jointly for both (see paired_bootstrap). `relation`
    says why they are compared (`baseline`: every row against the baseline run; `best`: a conditioned run against
    the best one). Writes and returns {row, against, relation, videos, dKL, dFID}."""
    from i2a.evaluation.metrics import paired_bootstrap

    result = {"row": row, "against": against, "relation": relation}
    if Path(outputs) == Path(against_outputs):  # a row against itself: paired_bootstrap's exact 0, not computed
        result["videos"] = len(np.load(reference)["clips"])
        result |= {name: {"value": 0.0, "low": 0.0, "high": 0.0} for name in ("dKL", "dFID")}
    else:
        a, b, real = np.load(outputs), np.load(against_outputs), np.load(reference)
        result["videos"] = len(real["clips"])
        for name, key, metric in (("dKL", "logits", "mkl"), ("dFID", "2048", "fid")):
            value, low, high = paired_bootstrap(a[key], b[key], real[key], metric, n_boot=n_boot, seed=seed)
            result[name] = {"value": value, "low": low, "high": high}
    write_text(out, json.dumps(result, indent=2, allow_nan=True))
    log.info("%s against %s (%s): dKL %+.3f [%+.3f, %+.3f], dFID %+.2f [%+.2f, %+.2f]", row, against, relation,
             result["dKL"]["value"], result["dKL"]["low"], result["dKL"]["high"], result["dFID"]["value"],
             result["dFID"]["low"], result["dFID"]["high"])
    return result


def best_row(scores: dict[str, str | Path]) -> str:
    """Of {row: its scores.json}, the row with the lowest MKL (the first of equals, in the given order)."""
    if not scores:
        raise ValueError("no rows to choose the best from")
    mkl = {row: json.loads(Path(path).read_text())["mkl"]["value"] for row, path in scores.items()}
    unscored = [row for row, value in mkl.items() if value is None or np.isnan(value)]
    if unscored:
        raise ValueError(f"no MKL for {', '.join(unscored)}: the best run cannot be chosen")
    return min(mkl, key=mkl.get)


def compare_with_best(row: str, outputs: dict[str, str | Path], scores: dict[str, str | Path],
                      reference: str | Path, n_boot: int, seed: int, out: str | Path) -> dict:
    """A conditioned run against the best of the conditioned runs (lowest MKL; `outputs` and `scores` per run), on
    the same videos (compare_rows with relation `best`). The best is chosen on the videos it is compared on, which
    favours it slightly: an interval that covers 0 says the two cannot be told apart, not that they are equal."""
    best = best_row(scores)
    return compare_rows(outputs[row], outputs[best], reference, row, best, "best", n_boot, seed, out)
