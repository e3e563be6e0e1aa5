"""The study as it ran (../shared/notes/study-as-run.md): config/study-as-run.yaml against the note's settings, row by
row, and the report's and the logs' numbers beside every measured one."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml

from conftest import REPO
from i2a.evaluation.reference import STUDY_ROWS, reference_columns

STUDY = yaml.safe_load((REPO / "config/config.yaml").read_text())

# ---------------------------------------------------------------- the note's numbers, written down from the note
# "resnet50 (KL 6.594 / FID 36.32)", "no_overfit_resnet50 (6.929 / 50.30, last.ckpt)", "resnet18 (6.837 / 34.37)"
NOTE_LOGGED = {"resnet50-default": (6.594, 36.32), "resnet50-plateau-small-drop-wd": (6.929, 50.30),
               "resnet18-b64g3": (6.837, 34.37)}
# "Table transcription: row 2 FID is 36.32 in its log (table 36.2), row 7 is 34.37 (table 34.7)"
NOTE_TRANSCRIPTION_ERRORS = {"resnet50-default": (36.2, 36.32), "resnet18-b64g3": (34.7, 34.37)}


def report_table1() -> list[dict[str, str]]:
    """design.md §9 (the report's Table 1), row by row, as the text has it."""
    text = (REPO / "docs/design.md").read_text()
    section = text.split("## 9.", 1)[1].split("\n## ", 1)[0]
    lines = next(block for block in section.split("\n\n") if block.startswith("|")).splitlines()  # its first table
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_the_reported_numbers_are_the_reports_table_1_row_by_row():
    table = report_table1()
    assert len(table) == 18 and sorted(r.row for r in STUDY_ROWS.values()) == list(range(1, 19))
    runs = {run["name"]: run for run in STUDY["runs"]}
    for entry in STUDY_ROWS.values():
        spec = table[entry.row - 1]
        assert spec["run"] == entry.run, entry.row  # design.md names each row's run as the config does
        assert (entry.reported_KL, entry.reported_FID) == (float(spec["KL"]), float(spec["FID"])), entry.run
        # the name is the config's run of that row: same features, batch, GPUs and transformer
        run = runs[entry.run]
        assert spec["features"].startswith({"resnet50": "ResNet50", "resnet18": "ResNet18",
                                            "efficientnet_v2_s": "EfficientNetV2-S",
                                            "efficientnet_v2_l": "EfficientNetV2-L",
                                            "clip_vit_b32": "CLIP-ViT-B-32"}[run["features"]]), entry.run
        assert [int(spec[k]) for k in ("batch", "GPUs", "layers", "heads", "embed")] == [
            run["batch"], run["gpus"], run["layers"], run["heads"], run["embed"]], entry.run
        assert float(spec["decay"]) == run["weight_decay"], entry.run


def test_the_logged_numbers_are_the_notes_with_the_two_transcription_errors_corrected():
    for run, (kl, fid) in NOTE_LOGGED.items():
        assert (round(STUDY_ROWS[run].logged_KL, 3), round(STUDY_ROWS[run].logged_FID, 2)) == (kl, fid), run
    for run, (table, log) in NOTE_TRANSCRIPTION_ERRORS.items():
        assert STUDY_ROWS[run].reported_FID == table and round(STUDY_ROWS[run].logged_FID, 2) == log
    # everywhere else the log is the report's number to its last digit (rounded, or in rows 8, 11 and 14 cut off)
    for entry in STUDY_ROWS.values():
        if entry.logged_KL is None:
            assert entry.row == 1  # SpecVQGAN's released model: the study quoted its README and logged nothing
            continue
        assert abs(entry.logged_KL - entry.reported_KL) <= 0.06, entry.run
        if entry.run not in NOTE_TRANSCRIPTION_ERRORS:
            assert abs(entry.logged_FID - entry.reported_FID) <= 0.06, entry.run
        else:
            assert abs(entry.logged_FID - entry.reported_FID) > 0.1, entry.run


def test_the_table_puts_the_reports_and_the_logs_numbers_beside_the_measured_ones(tmp_path):
    from i2a.evaluation.table import build_table
    from i2a.spec.config import validate_config
    from i2a.spec.runspec import RunSpec

    config = validate_config(yaml.safe_load((REPO / "config/config.yaml").read_text()),
                             REPO / "workflow/schemas/config.schema.yaml")
    specs = [RunSpec.from_config(config, r) for r in config["runs"]
             if r["name"] in ("resnet50-published", "resnet50-default", "no-feats-published")]
    scores = {"mkl": {"value": 6.5, "low": 6.3, "high": 6.7}, "fid": {"value": 40.0, "low": 38.0, "high": 42.0},
              "n_videos": 768, "samples_per_video": 2, "n_seeds": 1}
    rows = {}
    for spec in specs:
        for kind in ("samples", "shuffled"):
            folder = tmp_path / "runs" / spec.name / kind
            folder.mkdir(parents=True)
            (folder / "scores.json").write_text(json.dumps(scores))
        rows[spec.name] = f"runs/{spec.name}/samples"
    rows["resnet50-default+shuffled"] = "runs/resnet50-default/shuffled"
    (tmp_path / "runs/resnet50-default/metrics.csv").write_text("epoch,train_loss,val_loss,lr\n0,1.0,2.0,1e-4\n")
    table = build_table(specs, rows, tmp_path, {}, baseline=None, probes={}).set_index("run")
    reference = ["reported_KL", "logged_KL", "reported_FID", "logged_FID"]
    assert table.loc["resnet50-default", reference].tolist() == [6.6, 6.59422, 36.2, 36.32245]
    assert table.loc["resnet50-published", ["published_KL", "reported_KL", "published_FID", "reported_FID"]].tolist() \
        == [6.3, 6.3, 25.1, 25.1]
    assert table.loc["resnet50-published", ["logged_KL", "logged_FID"]].isna().all()  # the study logged none
    assert table.loc[["no-feats-published", "resnet50-default+shuffled"], reference].isna().all().all()
    columns = list(table.reset_index().columns)
    for metric in ("KL", "FID"):  # each beside its measured value, interval and SpecVQGAN's published number
        at = columns.index(f"{metric}_high")
        assert columns[at + 1:at + 4] == [f"published_{metric}", f"reported_{metric}", f"logged_{metric}"]
    assert reference_columns("my-own-run") == dict.fromkeys(reference)


# ---------------------------------------------------------------- config/study-as-run.yaml against the note
# The note's table, row by row (run names: config/config.yaml's): batch x GPUs as logged and the backend, the LR
# used, S and the scheduler. Written here from the note, not from the overlay.
NOTE_ROWS = {
    "resnet50-default": ("DDP", 32, 3, 3.2e-5, 212, "none"),
    "resnet50-plateau-small-drop-wd": ("one GPU", 16, 1, 1.6e-5, 212, "plateau"),
    "resnet50-b64g8-drop": ("DP", 128, 8, 1.28e-4, 1, "none"),
    "resnet50-b64g8-drop-wd": ("DP", 128, 8, 1.28e-4, 1, "none"),
    "resnet18-plateau-small-drop-wd": ("one GPU", 20, 1, 2.0e-5, 212, "plateau"),
    "resnet18-b64g3": ("DDP", 64, 3, 6.4e-5, 212, "none"),
    "effv2s-b32g3": ("DDP", 32, 3, 3.2e-5, 212, "none"),
    "effv2s-b128g8-drop": ("DP", 128, 8, 1.28e-4, 1, "none"),
    "effv2s-b128g8-drop-wd": ("DP", 128, 8, 1.28e-4, 1, "none"),
    "effv2l-b64g3": ("DDP", 64, 3, 6.4e-5, 212, "none"),
    "clip-b32g3": ("DDP", 32, 3, 3.2e-5, 212, "none"),
    "clip-b64g3-drop": ("DP", 128, 3, 1.28e-4, 1, "none"),
    "clip-b64g8-drop-wd": ("DP", 128, 8, 1.28e-4, 1, "none"),
    "clip-plateau-b64g8-e512-drop": ("DP", 256, 8, 2.56e-4, 1, "none"),
    "clip-plateau-b64g8-e512-drop-wd": ("DP", 256, 8, 2.56e-4, 1, "none"),
    "clip-small-b64g3": ("DDP", 64, 3, 6.4e-5, 212, "none"),
    "clip-b64g4-drop-wd": ("DP", 128, 4, 1.28e-4, 1, "none"),
}
NOTE_PLATEAU_PATIENCE = 2  # rows 3 and 6, medium confidence
NOTE_SEED = 23  # "Seed 23 (SpecVQGAN's default), not 0": train.py's --seed
NOTE_SAMPLES_PER_VIDEO = 2


@pytest.fixture(scope="module")
def as_run():
    from i2a.spec.config import merge_config, validate_config

    overlay = yaml.safe_load((REPO / "config/study-as-run.yaml").read_text())
    return validate_config(merge_config(yaml.safe_load((REPO / "config/config.yaml").read_text()), overlay),
                           REPO / "workflow/schemas/config.schema.yaml")


def test_every_trained_row_of_the_overlay_has_the_settings_the_note_logged(as_run):
    from i2a.spec.runspec import RunSpec

    specs = {run["name"]: RunSpec.from_config(as_run, run) for run in as_run["runs"]}
    trained = {name for name, spec in specs.items() if spec.source == "train"}
    assert trained == set(NOTE_ROWS) == {r["name"] for r in STUDY["runs"] if r.get("source", "train") == "train"}
    report = {run["name"]: run for run in STUDY["runs"]}
    for name, (backend, batch, gpus, lr, S, scheduler) in NOTE_ROWS.items():
        spec, train = specs[name], specs[name].train
        if backend == "DP":  # one process, the batch split over the GPUs: here per-GPU batch x GPUs, same global
            assert train.batch * train.gpus == batch and train.gpus > 1, name
            assert train.gpus == gpus or batch % gpus, name  # the logged GPU count where the batch splits in it
        else:
            assert (train.batch, train.gpus) == (batch, gpus), name
        assert train.accumulate == 1 and train.learning_rate == pytest.approx(lr, rel=1e-12), name
        assert (spec.feat_sample_size, train.scheduler) == (S, scheduler), name
        if scheduler == "plateau":
            assert train.plateau_patience == NOTE_PLATEAU_PATIENCE, name
        assert spec.model.dropout == 0.0 and train.seed == NOTE_SEED and not train.early_stopping, name
        assert spec.sampling.samples_per_video == NOTE_SAMPLES_PER_VIDEO and spec.sampling.seeds == 1, name
        # what the logs do not change: the report's transformer and decay, the same backbone
        row = report[name]
        assert (spec.features, spec.model.layers, spec.model.heads, spec.model.embed, train.weight_decay,
                train.max_epochs) == (row["features"], row["layers"], row["heads"], row["embed"],
                                      row["weight_decay"], row["max_epochs"]), name


def test_the_overlay_takes_the_studys_inputs_codebook_and_arithmetic(as_run):
    from i2a.spec.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, resolve_weights
    from i2a.spec.config import component_checkpoint

    assert as_run["vas"]["source"] == "authors"  # the authors' mels, and their ResNet50 features
    assert component_checkpoint(as_run, "codebook").endswith("vas_codebook.last.ckpt")
    for name in ("resnet18", "efficientnet_v2_s", "efficientnet_v2_l"):  # Resize 256 -> crop 224, bilinear, ImageNet
        wf = BACKBONES[name].weights[resolve_weights(name, as_run["backbones"][name]["weights"])]
        assert (wf.transform.resize, wf.transform.crop, wf.transform.interpolation) == (256, 224, "bilinear")
        assert (wf.transform.mean, wf.transform.std, wf.dtype) == (IMAGENET_MEAN, IMAGENET_STD, "float32")
    clip = as_run["backbones"]["clip_vit_b32"]["weights"]
    assert BACKBONES["clip_vit_b32"].weights[clip].dtype == "float16"  # "CLIP features in fp16"
    # the study's A100s under PyTorch 2.2.2 (training, sampling: matmuls fp32) and 2.1.2 (CNN features: TF32 convs)
    assert {run.get("precision") for run in as_run["runs"] if run["source"] == "train"} == {"fp32"}
    assert (as_run["sampling"]["precision"], as_run["features"]["precision"]) == ("fp32", "tf32")
    assert as_run["sampling"]["seed"] == 0  # evaluation/generate_samples.py: torch.manual_seed(0)


def test_the_overlay_plans_the_whole_table():
    """`snakemake -n` with the overlay: every trained row is trained on its inputs (ResNet50 rows on the authors'
    features, the others on features extracted here from the videos of the authors' clips), with the codebook's
    last.ckpt, and sampled, scored and tabled."""
    from workflow_helpers import job_counts, planned_jobs, snakemake

    result = snakemake("-n", "results/as-run/table.csv", "--configfile", "config/study-as-run.yaml")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    counts, jobs = job_counts(result.stdout), set(planned_jobs(result.stdout))
    assert {run for rule, run in jobs if rule == "train_gpt"} == set(NOTE_ROWS)
    assert counts["sample_tokens"] == counts["score_samples"] - 1 == len(NOTE_ROWS) + 1  # and the baseline
    shards = STUDY["shards"]["train"] + STUDY["shards"]["valid"]
    assert counts["import_authors_mels"] == counts["import_authors_features"] == shards
    assert counts["preprocess_authors_videos"] == shards and counts["extract_features"] == 4 * shards
    assert "preprocess_clips" not in counts
    assert "resources/checkpoints/vas_codebook.last.ckpt" in result.stdout
    assert "resources/checkpoints/vas_codebook.ckpt" not in result.stdout
    assert counts["aggregate_table"] == 1 and "results/as-run/table.csv" in result.stdout


def test_the_overlays_jobs_all_have_a_partition_and_the_gpus_their_row_logged():
    from i2a.pipeline.plan import plan_jobs

    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    jobs = plan_jobs(["results/as-run/table.csv"], configfiles=[str(REPO / "config/study-as-run.yaml")],
                     every_job=True)
    unmapped = {job.rule for job in jobs if not job.local and job.rule not in profile["set-resources"]}
    assert not unmapped, f"submitted without a partition in the profile: {unmapped}"
    gpus = {job.wildcards["run"]: job.gpus for job in jobs if job.rule == "train_gpt"}
    assert set(gpus) == set(NOTE_ROWS)
    for name, (backend, batch, logged, *_) in NOTE_ROWS.items():
        if backend == "DP" and batch % logged:  # 128 on 3 GPUs: no equal per-GPU share, so other GPUs
            assert batch % gpus[name] == 0, name
        else:
            assert gpus[name] == logged, name
