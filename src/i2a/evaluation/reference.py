"""The study's own numbers for each row of its grid, keyed by the run names of config/config.yaml: what its report's
Table 1 says (`reported_KL`, `reported_FID`) and what its evaluation logs say (`logged_KL`, `logged_FID`).

The logs are `results/result_eval_<log>.txt` in the study's repository (Exploration-of-image-to-audio-synthesis/
SpecVQGAN-fine-tuning-experiments at 1f2cb83), each one's summary line `KL: ...; FID: ...` at 2 samples per
video; the report rounded them to one decimal and mistyped two FIDs (row 2: 36.32 in its log, 36.2 in the table;
row 7: 34.37, 34.7). Row 1 is SpecVQGAN's released ResNet50 model, whose number the report quotes from SpecVQGAN's
README (`published_*` of i2a.spec.released): the study logged no evaluation of it. The table puts these beside
the measured values (i2a.evaluation.table). Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass

STUDY_REPOSITORY = "Exploration-of-image-to-audio-synthesis/SpecVQGAN-fine-tuning-experiments@1f2cb83"
LOGGED_SAMPLES_PER_VIDEO = 2  # every evaluation log: "Samples per video: 2"


@dataclass(frozen=True)
class StudyRow:
    """One row of the report's Table 1: its number there, the run name here, its numbers in the report and the log."""

    row: int
    run: str
    reported_KL: float
    reported_FID: float
    log: str | None = None  # results/result_eval_<log>.txt of the study's repository
    logged_KL: float | None = None
    logged_FID: float | None = None
    checkpoint: str | None = None  # the transformer checkpoint the log says it evaluated

    @property
    def log_file(self) -> str | None:
        return None if self.log is None else f"results/result_eval_{self.log}.txt"


def _row(row, run, reported, log=None, logged=(None, None), checkpoint=None) -> StudyRow:
    return StudyRow(row, run, *reported, log, *logged, checkpoint)


STUDY_ROWS: dict[str, StudyRow] = {r.run: r for r in [
    _row(1, "resnet50-published", (6.3, 25.1)),
    _row(2, "resnet50-default", (6.6, 36.2), "resnet50", (6.59422, 36.32245), "epoch=000010.ckpt"),
    _row(3, "resnet50-plateau-small-drop-wd", (6.9, 50.3), "no_overfit_resnet50", (6.92905, 50.30038), "last.ckpt"),
    _row(4, "resnet50-b64g8-drop", (6.8, 32.3), "resnet50_small_loss", (6.75543, 32.26603), "epoch=000010.ckpt"),
    _row(5, "resnet50-b64g8-drop-wd", (7.1, 39.6), "resnet50_small_loss_larger_weight_decay", (7.11921, 39.61237),
         "epoch=000007.ckpt"),
    _row(6, "resnet18-plateau-small-drop-wd", (7.2, 51.4), "no_overfit_resnet18", (7.20987, 51.35994),
         "epoch=000098.ckpt"),
    _row(7, "resnet18-b64g3", (6.8, 34.7), "resnet18", (6.83667, 34.37452), "epoch=000013.ckpt"),
    _row(8, "effv2s-b32g3", (6.5, 47.7), "fnet", (6.48598, 47.75074), "epoch=000006.ckpt"),
    _row(9, "effv2s-b128g8-drop", (7.2, 37.1), "fnet_small_loss", (7.23859, 37.10961), "epoch=000008.ckpt"),
    _row(10, "effv2s-b128g8-drop-wd", (6.5, 30.6), "fnet_small_loss_larger_weight_decay", (6.47183, 30.58257),
         "epoch=000010.ckpt"),
    _row(11, "effv2l-b64g3", (7.9, 34.0), "fnet_l", (7.95402, 33.98802), "epoch=000016.ckpt"),
    _row(12, "clip-b32g3", (6.4, 43.1), "clip", (6.40870, 43.10587), "epoch=000008.ckpt"),
    _row(13, "clip-b64g3-drop", (5.7, 27.1), "clip_small_loss_reproducing_embed_1024", (5.72096, 27.10052),
         "epoch=000010.ckpt"),
    _row(14, "clip-b64g8-drop-wd", (6.1, 25.1), "clip_small_loss_reproducing_larger_weight_decay_embed_1024",
         (6.08588, 25.05114), "epoch=000011.ckpt"),
    _row(15, "clip-plateau-b64g8-e512-drop", (5.9, 24.8), "clip_small_loss_smaller_embed", (5.93284, 24.84786),
         "epoch=000024.ckpt"),
    _row(16, "clip-plateau-b64g8-e512-drop-wd", (6.0, 25.9), "clip_small_loss_smaller_embed_larger_weight_decay",
         (5.98177, 25.91340), "epoch=000025.ckpt"),
    _row(17, "clip-small-b64g3", (5.9, 34.4), "reduced_transformer_clip", (5.92329, 34.35847), "epoch=000016.ckpt"),
    _row(18, "clip-b64g4-drop-wd", (6.2, 24.9), "regularization_clip", (6.15768, 24.92012), "epoch=000011.ckpt"),
]}


def study_row(run: str) -> StudyRow | None:
    """The study's row for a run name of config/config.yaml (a `+shuffled` control has none), or None."""
    return STUDY_ROWS.get(run)


def reference_columns(run: str) -> dict[str, float | None]:
    """The table's `reported_*` and `logged_*` columns for a row: empty for a row the study does not have."""
    found = study_row(run)
    return {name: None if found is None else getattr(found, name)
            for name in ("reported_KL", "logged_KL", "reported_FID", "logged_FID")}
