"""`i2a calibrate` on the demo config with tiny step counts, and the sizing model that reads its file."""
from __future__ import annotations

import math

import pytest
import yaml

from conftest import REPO
from i2a.pipeline import sizing
from i2a.pipeline.calibrate import PARTS, load_study_config, main
from i2a.spec.runspec import RunSpec


def test_calibrate_measures_every_part_of_the_demo_and_the_plan_reads_it(tmp_path, capsys):
    out = tmp_path / "cal" / "cpu.yaml"
    assert main(["--configfile", str(REPO / "config/demo.yaml"), "--device", "cpu", "--out", str(out),
                 "--steps", "2", "--warmup", "1", "--repeats", "1"]) == 0
    assert str(out) in capsys.readouterr().out
    cal = yaml.safe_load(out.read_text())
    assert cal["parts"] == list(PARTS) and cal["torch"] and cal["date"] and "i2a calibrate" in cal["how"]
    config = load_study_config([REPO / "config/demo.yaml"])
    specs = [RunSpec.from_config(config, run) for run in config["runs"]]
    shapes = {(s.model.layers, s.model.embed, s.model.block_size, s.model.feat_dim, s.train.batch) for s in specs}
    measured = {(e["layers"], e["embed"], e["block_size"], e["feat_dim"], e["batch"]) for e in cal["training"]}
    assert measured == shapes  # one entry per distinct run shape (two demo runs share theirs)
    assert all(e["samples_per_s"] > 0 and e["precision"] == "fp32" for e in cal["training"])
    assert all(e["seqs_per_s"] > 0 and e["batch"] == config["sampling"]["batch_size"] for e in cal["sampling"])
    assert set(cal["encoders"]) == {"resnet18", "clip_vit_b32"}
    assert cal["decode_frames_per_s_per_thread"] > 0 and cal["startup_s"] > 0
    assert min(cal["codebook"].values()) > 0 and cal["melception"]["spectrograms_per_s"] > 0
    assert cal["vocoder"]["kind"] == "griffin_lim"
    # every GPU rule of the demo is sized from it
    for rule, wildcards, spec in (("train_gpt", {"run": "clip-s5"}, specs[1]),
                                  ("extract_features", {"backbone": "resnet18", "split": "train"}, None),
                                  ("sample_tokens", {"run": "no-feats", "kind": "samples"}, specs[2]),
                                  ("score_samples", {"sampleset": "runs/no-feats/samples"}, None),
                                  ("encode_tokens", {"split": "valid"}, None), ("vocode", {"run": "clip-s5"}, None)):
        time = sizing.job_minutes(rule, config, wildcards, spec, calibration=out)
        assert time.expected_min is not None and time.expected_min > cal["startup_s"] / 60, rule


def test_calibrate_rejects_unknown_parts():
    with pytest.raises(SystemExit):
        main(["--only", "training,warp_drive"])


CLUSTER = {"margin": 2.0, "startup_minutes": 5, "max_runtime_hours": 24}


def test_limit_is_expected_times_margin_plus_startup_capped_at_max_runtime():
    assert sizing.limit_minutes(30, CLUSTER) == (65, False)
    assert sizing.limit_minutes(30.2, CLUSTER) == (66, False)  # whole minutes, rounded up
    assert sizing.limit_minutes(1000, CLUSTER) == (24 * 60, True)
    long = sizing.JobTime(1000.0, 24 * 60, capped=True)
    assert sizing.segments_needed(long, CLUSTER) == math.ceil(2005 / (24 * 60 - 5)) == 2
    assert sizing.segments_needed(sizing.JobTime(30.0, 65), CLUSTER) == 1


def _config(calibration, **cluster):
    config = load_study_config()
    config["cluster"] = {**config["cluster"], "calibration": str(calibration), **cluster}
    return config


def test_training_time_from_the_measured_rate_and_scaled_for_unmeasured_shapes(tmp_path):
    config = load_study_config()
    spec = RunSpec.from_config(config, next(r for r in config["runs"] if r["name"] == "resnet50-default"))
    entry = {"layers": 24, "heads": 16, "embed": 1024, "block_size": 477, "feat_dim": 2048, "batch": 16,
             "precision": "fp32", "samples_per_s": 50.0}
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump({"device": "test GPU", "startup_s": 60, "epoch_overhead_s": 10,
                                    "ddp_efficiency": 1.0, "training": [entry]}))
    config = _config(path)
    time = sizing.job_minutes("train_gpt", config, {"run": spec.name}, spec, calibration=path)
    clips = sizing.clip_counts(config)
    per_epoch = (clips["train"] + clips["valid"] / sizing.VALIDATION_SPEEDUP) / (50.0 * spec.train.gpus) + 10
    assert time.expected_min == pytest.approx(1 + spec.train.max_epochs * per_epoch / 60)
    assert time.limit_min == math.ceil(time.expected_min * 2 + 5)
    # half the layers: half the arithmetic per sequence, planned at twice the rate; bf16 has no figure
    small = spec.__class__.from_config(config, {**next(r for r in config["runs"] if r["name"] == spec.name),
                                                "layers": 12, "heads": 16})
    small_time = sizing.job_minutes("train_gpt", config, {"run": spec.name}, small, calibration=path)
    assert (small_time.expected_min - 1) == pytest.approx((time.expected_min - 1 - spec.train.max_epochs * 10 / 60)
                                                          / 2 + spec.train.max_epochs * 10 / 60)
    bf16 = spec.__class__.from_config(config, {**next(r for r in config["runs"] if r["name"] == spec.name),
                                               "precision": "bf16"})
    missing = sizing.job_minutes("train_gpt", config, {"run": spec.name}, bf16, fallback_min=77, calibration=path)
    assert (missing.expected_min, missing.limit_min) == (None, 77) and "bf16" in missing.note


def test_a_missing_calibration_file_is_a_clear_error(tmp_path):
    with pytest.raises(sizing.CalibrationError, match="i2a calibrate"):
        sizing.load_calibration(tmp_path / "nope.yaml")
