"""The allocation plan: jobs per rule and the GPU/CPU-hours the SLURM profile would request, without running."""
from __future__ import annotations

import time

import pytest
import yaml

from conftest import REPO
from i2a.pipeline.plan import JobRequest, format_plan, main, plan_jobs, summarise

STUDY = yaml.safe_load((REPO / "config/config.yaml").read_text())
PROFILE = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())


def job(rule, runtime, gpus=0, threads=1, partition="gpu", local=False, mem_mb=1000):
    return JobRequest(rule, {}, threads, {"runtime": runtime, "gpu": gpus, "slurm_partition": partition,
                                          "mem_mb": mem_mb}, local=local)


def test_hours_are_runtime_times_gpus_and_cpus():
    rows = summarise([job("train", 90, gpus=8, threads=4), job("train", 30, gpus=1, threads=4),
                      job("prep", 120, threads=2, partition="cpu")])
    train, prep = rows
    assert (train.jobs, train.gpu_hours, train.cpu_hours) == (2, 12.5, 8.0)
    assert (prep.jobs, prep.gpu_hours, prep.cpu_hours, prep.partitions) == (1, 0.0, 4.0, {"cpu"})
    assert train.gpus == {1, 8} and train.runtime_h == {1.5, 0.5}


def test_local_jobs_request_nothing_from_slurm():
    (row,) = summarise([job("aggregate_table", 10, threads=4, local=True)])
    assert (row.gpu_hours, row.cpu_hours) == (0.0, 0.0)
    assert row.partitions == {"login node (local)"}


def test_unknown_resources_count_as_zero():
    request = JobRequest("r", {}, 1, {"runtime": "<TBD>", "gpu": None})
    assert (request.runtime_min, request.gpus, request.gpu_hours) == (0.0, 0, 0.0)


def test_table_has_a_row_per_rule_ranges_and_a_total():
    text = format_plan(summarise([job("train", 60, gpus=1), job("train", 120, gpus=8), job("prep", 60,
                                                                                           partition="cpu")]))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["rule", "jobs", "partition"]
    train = next(line for line in lines if line.startswith("train"))
    assert "1-8" in train and "1-2" in train and "17.0" in train
    assert lines[-1].split()[:2] == ["total", "3"] and lines[-1].split()[-2:] == ["17.0", "4.0"]


@pytest.fixture(scope="module")
def study_plan():
    start = time.monotonic()
    jobs = plan_jobs(["results/table.csv"], every_job=True)
    return jobs, time.monotonic() - start


def test_study_plan_is_fast_and_counts_every_job(study_plan):
    jobs, elapsed = study_plan
    assert elapsed < 30, f"planning took {elapsed:.1f} s"
    counts = {}
    for request in jobs:
        counts[request.rule] = counts.get(request.rule, 0) + 1
    runs = STUDY["runs"]
    shards = STUDY["shards"]["train"] + STUDY["shards"]["valid"]
    assert counts["train_gpt"] == sum(r.get("source", "train") == "train" for r in runs) == 17
    # every run's samples, and the codebook's reconstructions (the ceiling row) are scored
    assert counts["sample_tokens"] == counts["score_samples"] - 1 == len(runs)
    assert counts["extract_features"] == len({r["features"] for r in runs} - {"none"}) * shards
    assert counts["preprocess_clips"] == shards
    # the reproduction rows: SpecVQGAN's four released VAS transformers are fetched (MD5-checked) and sampled
    released = {r["name"]: r["released"] for r in runs if r.get("source") == "released"}
    assert sorted(released.values()) == ["no_feats", "resnet50_1feat", "resnet50_212feat", "resnet50_5feat"]
    assert set(released.values()) <= {r.wildcards["name"] for r in jobs if r.rule == "fetch_checkpoint"}
    assert set(released) <= {r.wildcards["run"] for r in jobs if r.rule == "sample_tokens"}


def test_study_plan_takes_the_rules_requests_and_the_profiles_partitions(study_plan):
    jobs, _ = study_plan
    mapped = PROFILE["set-resources"]
    trained = {r["name"]: r for r in STUDY["runs"] if r.get("source", "train") == "train"}
    assert {r.rule for r in jobs if r.local} >= {"download_vas", "unpack_vas", "fetch_weights", "fetch_checkpoint",
                                                 "aggregate_table"}
    for request in jobs:
        if request.local:
            assert request.rule not in mapped, f"{request.rule} is a local rule but has a partition in the profile"
            continue
        assert request.rule in mapped, f"{request.rule} would be submitted but the profile gives it no partition"
        assert request.resources["slurm_account"] == ""  # no I2A_SLURM_ACCOUNT here: the plugin finds it
        gpu_rule = "I2A_SLURM_GPU_PARTITION" in mapped[request.rule]["slurm_partition"]
        assert request.partition == ("gpu" if gpu_rule else "cpu")  # the documented defaults
        if gpu_rule:
            assert request.resources["gpu_model"] == "" and request.gpus >= 1  # any GPU model
        else:
            assert request.gpus == 0
        if request.rule in ("preprocess_clips", "extract_features"):
            assert request.threads == 4  # the schema's default `threads`: the study config sets none
    train = [r for r in jobs if r.rule == "train_gpt"]
    assert {r.wildcards["run"]: r.gpus for r in train} == {name: r["gpus"] for name, r in trained.items()}
    # CPUs per GPU (cluster.cpus_per_gpu, 8 by default): 8 GPUs, 64 CPUs for their ranks and loader workers
    assert {r.wildcards["run"]: r.threads for r in train} == {name: 8 * r["gpus"] for name, r in trained.items()}


def test_study_requests_at_most_3x_its_expected_gpu_hours_and_no_job_over_max_runtime(study_plan):
    """With the H200 calibration (the study config's default), limits follow the work: at most 3x the expected
    GPU-hours in all, each job's limit from the same function as the rule's (i2a.pipeline.sizing), none over 24 h."""
    from i2a.pipeline.plan import totals
    from i2a.pipeline.sizing import load_calibration

    jobs, _ = study_plan
    summary = totals(jobs, load_calibration("profiles/slurm/calibration/h200.yaml"), 8)
    assert summary["uncalibrated_jobs"] == 0
    assert 0 < summary["requested_gpu_hours"] <= 3 * summary["expected_gpu_hours"], summary
    assert summary["max_job_hours"] <= 24
    for job in jobs:
        if job.gpus and not job.local:
            assert job.expected_min < job.runtime_min <= 24 * 60, job


def test_more_gpus_request_fewer_hours_for_the_same_run(tmp_path):
    """An 8-GPU run asks for a shorter limit than the same run on one GPU (and 8x the CPUs), and a run longer
    than max_runtime is planned as segments that each fit under it."""
    base = {k: v for k, v in next(r for r in STUDY["runs"] if r["name"] == "resnet50-b64g8-drop").items()}
    runs = [dict(base, name="wide", gpus=8), dict(base, name="narrow", gpus=1),
            dict(base, name="long", gpus=1, max_epochs=1500)]
    overlay = tmp_path / "runs.yaml"
    overlay.write_text(yaml.safe_dump({"runs": runs}))
    targets = [f"results/runs/{run['name']}/best.ckpt" for run in runs]
    jobs = {j.wildcards["run"]: j for j in plan_jobs(targets, configfiles=[str(overlay)], every_job=True)
            if j.rule == "train_gpt"}
    assert jobs["wide"].runtime_min < jobs["narrow"].runtime_min
    assert jobs["wide"].expected_min < jobs["narrow"].expected_min
    assert jobs["wide"].threads == 64 and jobs["narrow"].threads == 8
    assert jobs["narrow"].segments == 1 and jobs["long"].segments > 1
    assert jobs["long"].runtime_min == 24 * 60
    assert jobs["long"].expected_min * 2 <= jobs["long"].segments * (24 * 60 - 5)


def test_profile_reads_the_cluster_names_from_the_environment(monkeypatch):
    from i2a.pipeline.plan import placeholders

    names = {"I2A_SLURM_ACCOUNT": "proj42", "I2A_SLURM_CPU_PARTITION": "short", "I2A_SLURM_GPU_PARTITION": "h200",
             "I2A_SLURM_GPU_MODEL": "h200", "I2A_SLURM_QOS": "normal"}
    for key, value in names.items():
        monkeypatch.setenv(key, value)
    jobs = plan_jobs(["results/demo/table.csv"], configfiles=[str(REPO / "config/demo.yaml")], every_job=True)
    submitted = [j for j in jobs if not j.local]
    assert {j.resources["slurm_account"] for j in submitted} == {"proj42"}
    assert {j.resources["qos"] for j in submitted} == {"normal"}
    assert {j.partition for j in submitted if j.rule == "train_gpt"} == {"h200"}
    assert {j.resources["gpu_model"] for j in submitted if j.rule == "train_gpt"} == {"h200"}
    assert {j.partition for j in submitted if j.rule == "preprocess_clips"} == {"short"}
    assert placeholders(jobs) == []
    for key in names:
        monkeypatch.delenv(key)
    flagged = placeholders(plan_jobs(["results/demo/table.csv"], configfiles=[str(REPO / "config/demo.yaml")]))
    assert len(flagged) == 4 and "I2A_SLURM_ACCOUNT is not set" in flagged[0]
    template = [JobRequest("train_gpt", {}, 1, {"slurm_account": "your_account"})]
    assert placeholders(template, environ=names) == ["train_gpt: slurm_account is the placeholder 'your_account'"]


def test_json_totals_for_scripts(capsys):
    import json

    assert main(["--configfile", str(REPO / "config/demo.yaml"), "--all", "--json", "--gpus", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["calibration"]["path"].endswith("cpu-2core.yaml")
    assert out["expected_gpu_hours"] == 0 and out["requested_gpu_hours"] == 0  # the demo: gpu: false
    assert 0 < out["max_job_hours"] <= 24 and out["concurrent_gpus"] == 2
    assert {r["run"] for r in out["runs"]} == {r["name"] for r in yaml.safe_load(
        (REPO / "config/demo.yaml").read_text())["runs"]}


def test_profile_overrides_change_the_plan(tmp_path):
    """A profile's set-resources and set-threads win over the rules' own requests, as on the cluster."""
    profile = dict(PROFILE)
    profile["set-resources"] = {**PROFILE["set-resources"],
                                "train_gpt": {**PROFILE["set-resources"]["train_gpt"], "runtime": 30}}
    profile["set-threads"] = {"train_gpt": 3}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(profile))
    jobs = plan_jobs(["results/demo/table.csv"], profile=tmp_path, configfiles=[str(REPO / "config/demo.yaml")],
                     every_job=True)
    train = [r for r in jobs if r.rule == "train_gpt"]
    assert len(train) == 3
    assert all(r.runtime_min == 30 and r.threads == 3 and r.gpus == 0 for r in train)  # the demo: gpu: false
    assert sum(r.cpu_hours for r in train) == pytest.approx(3 * 0.5 * 3)


def test_command_prints_the_table(capsys):
    """Without a target it plans the default one, rule all (the table and the report's local jobs)."""
    assert main(["--configfile", str(REPO / "config/demo.yaml"), "--all"]) == 0
    out = capsys.readouterr().out
    assert "rule all" in out and "jobs would run" in out and "nothing was run" in out
    for rule in ("train_gpt", "train_codebook", "aggregate_table", "total", "training run", "wall time"):
        assert rule in out


def test_i2a_command_dispatches_plan_and_make_plan_calls_it(capsys):
    from i2a.cli import main as i2a

    assert i2a(["plan", "--configfile", str(REPO / "config/demo.yaml"), "--all", "--json"]) == 0
    assert "expected_gpu_hours" in capsys.readouterr().out
    assert i2a([]) == 0 and "calibrate" in capsys.readouterr().out
    assert "\t.venv/bin/i2a plan results/table.csv" in (REPO / "Makefile").read_text()


def test_dry_run_through_the_profile_flags_unset_cluster_names(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("I2A_SLURM_")}
    env["I2A_SLURM_GPU_PARTITION"] = "h200"
    out = subprocess.run([sys.executable, "-m", "snakemake", "results/demo/table.csv", "--profile", "profiles/slurm",
                          "-n", "--configfile", "config/demo.yaml", "--quiet", "rules"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    said = out.stdout + out.stderr
    assert "I2A_SLURM_ACCOUNT is not set" in said and "I2A_SLURM_CPU_PARTITION is not set" in said
    assert "I2A_SLURM_GPU_PARTITION is not set" not in said


def test_a_missing_calibration_is_a_clear_error(tmp_path, capsys):
    assert main(["--calibration", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_planning_in_a_process_leaves_its_run_guard_as_it_was(study_plan, tmp_path):
    """A plan built in this process skips the run guard only while it plans: the same process (a test worker, a
    script that plans and then runs) is guarded afterwards."""
    from i2a.pipeline import lock

    assert lock.PLANNING_ONLY is False
    record = tmp_path / "instance.json"
    assert lock.guard(["--cores", "1"], record) == "run"
    lock.release(record)
