"""The workflow as a user drives it: lint, planning, config errors, the demo end to end, exact reruns."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

# What a copy of the workflow needs; src is linked so the copy runs the code under test.
WORKFLOW_FILES = ["Snakefile", "config", "workflow"]


def snakemake(*args: str, cwd: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    counts = {}
    block = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    for line in block.splitlines()[3:]:
        match = re.fullmatch(r"\s*(\S+)\s+(\d+)\s*", line)
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total", None)
    return counts


def planned_jobs(output: str) -> list[tuple[str, str]]:
    """(rule, run wildcard or '') for every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \S+:)", output):
        head = re.match(r"(?:local)?rule (\S+):", block.strip())
        if head:
            run = re.search(r"wildcards: .*?run=([^,\s]+)", block)
            jobs.append((head.group(1), run.group(1) if run else ""))
    return jobs


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    (dest / "src").symlink_to(REPO / "src")
    return dest


def write_config(path: Path, base: Path, edit) -> Path:
    config = yaml.safe_load(base.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_full_study_plans_every_run_quickly():
    start = time.monotonic()
    result = snakemake("-n", "results/table.csv", "--quiet", "rules")
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr
    counts = job_counts(result.stdout)
    study = yaml.safe_load((REPO / "config/config.yaml").read_text())
    runs = study["runs"]
    assert len(runs) == 18
    trained = [r for r in runs if r.get("source", "train") == "train"]
    assert counts["train_gpt"] == len(trained) == 17
    assert counts["sample_tokens"] == counts["score_run"] == counts["vocode"] == 18
    backbones = {r["features"] for r in runs}
    shards = study["shards"]["train"] + study["shards"]["valid"]
    assert counts["extract_features"] == len(backbones) * shards
    assert counts["preprocess_clips"] == shards
    assert counts["aggregate_table"] == 1
    assert elapsed < 60, f"planning took {elapsed:.1f} s"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda c: c["runs"][0].update(features="resnet51"),
         ["runs[0].features", "'resnet51'", "resnet18", "clip_vit_b32", "none"]),
        (lambda c: c["runs"][1].update(dropout=-0.1), ["runs[1].dropout", "-0.1", "minimum"]),
        (lambda c: c["runs"][2].pop("features"), ["runs[2]", "features"]),
        (lambda c: c["runs"][0].update(dropuot=0.1), ["runs[0]", "dropuot", "dropout"]),
        (lambda c: c.update(dataset="audioset"), ["dataset", "'audioset'", "vas", "synthetic"]),
        (lambda c: c["runs"][0].update(heads=3), ["runs[0]", "embed", "heads=3"]),
    ],
    ids=["unknown-backbone", "negative-dropout", "missing-key", "misspelt-key", "unknown-dataset", "heads"],
)
def test_bad_config_stops_before_any_job_naming_the_key(tmp_path, edit, expected):
    bad = write_config(tmp_path / "bad.yaml", REPO / "config/demo.yaml", edit)
    workdir = copy_workflow(tmp_path / "wf")
    result = snakemake("--cores", "1", "--configfile", str(bad), cwd=workdir, timeout=300)
    message = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid config" in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from:\n{message[-2000:]}"
    assert not (workdir / "results").exists(), "a job ran despite the bad config"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The whole demo DAG, run once in a copy of the workflow."""
    workdir = copy_workflow(tmp_path_factory.mktemp("demo"))
    start = time.monotonic()
    result = snakemake("--cores", "2", "--configfile", "config/demo.yaml", cwd=workdir, timeout=1500)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log")))
        pytest.fail(f"demo failed:\n{result.stderr[-5000:]}\n{logs[-20000:]}")
    return workdir, elapsed


def test_demo_writes_the_table(demo):
    workdir, elapsed = demo
    table = pd.read_csv(workdir / "results/demo/table.csv")
    demo_cfg = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    assert list(table["run"]) == [r["name"] for r in demo_cfg["runs"]]
    for column in ["features", "scheduler", "batch", "gpus", "layers", "heads", "embed", "dropout", "decay",
                   "epochs", "overfit", "KL", "FID", "train_clips", "valid_clips"]:
        assert column in table.columns
    assert set(table["features"]) == {"ResNet18", "CLIP-ViT-B-32", "none"}
    synthetic = demo_cfg["synthetic"]
    assert table["valid_clips"].iloc[0] == synthetic["classes"] * synthetic["valid_per_class"]
    assert table["train_clips"].iloc[0] == synthetic["classes"] * (synthetic["clips_per_class"]
                                                                  - synthetic["valid_per_class"])
    assert table[["KL", "FID"]].notna().all().all()
    assert ((table["KL_low"] <= table["KL"]) & (table["KL"] <= table["KL_high"])).all()
    assert (workdir / "results/demo/runs/no-feats/audio/index.tsv").exists()
    print(f"demo wall time {elapsed:.0f} s\n{table.to_string(index=False)}")


def test_conditioned_runs_beat_the_no_feats_baseline_on_mkl(demo):
    workdir, _ = demo
    table = pd.read_csv(workdir / "results/demo/table.csv").set_index("features")
    baseline = table.loc["none", "KL"]
    for features in ("ResNet18", "CLIP-ViT-B-32"):
        assert table.loc[features, "KL"] < baseline, table[["KL", "FID"]]


def test_every_rule_left_a_benchmark_and_a_log(demo):
    workdir, _ = demo
    logs = workdir / "logs/demo"
    benchmarks = {p.relative_to(logs / "benchmarks").with_suffix("") for p in (logs / "benchmarks").rglob("*.tsv")}
    logged = {p.relative_to(logs).with_suffix("") for p in logs.rglob("*.log")}
    assert benchmarks == logged
    assert {"make_synthetic_videos", "list_clips", "preprocess_clips", "extract_features", "train_codebook",
            "encode_tokens", "train_gpt", "sample_tokens", "vocode", "train_melception", "score_reference",
            "score_run", "aggregate_table"} == {p.parts[0] for p in benchmarks}


def test_second_invocation_runs_nothing(demo):
    workdir, _ = demo
    result = snakemake("-n", "--configfile", "config/demo.yaml", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout


def test_changing_one_runs_dropout_reruns_exactly_that_run(demo, tmp_path):
    workdir, _ = demo
    changed = write_config(tmp_path / "changed.yaml", workdir / "config/demo.yaml",
                           lambda c: c["runs"][1].update(dropout=0.2))
    result = snakemake("-n", "--configfile", str(changed), cwd=workdir)
    assert result.returncode == 0, result.stderr
    run = yaml.safe_load(changed.read_text())["runs"][1]["name"]
    jobs = sorted(planned_jobs(result.stdout))
    assert jobs == sorted([("train_gpt", run), ("sample_tokens", run), ("vocode", run), ("score_run", run),
                           ("aggregate_table", ""), ("all", "")]), result.stdout
