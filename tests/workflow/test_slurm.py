"""The SLURM profile on a real SLURM: the demo through sbatch, each rule on its partition, GPUs requested, the table
written, and training jobs that are cancelled or preempted mid-way resuming from their last checkpoint.

Runs where `sinfo` answers and the cluster is the single-node one `.ci/slurm/setup.sh` starts (cluster `ci`);
set I2A_SLURM_TEST=1 to run it on another cluster, with I2A_SLURM_ACCOUNT, I2A_SLURM_CPU_PARTITION and
I2A_SLURM_GPU_PARTITION naming yours (the profile reads them; nothing else of it is changed). Skips everywhere else.

To stay cheap (CI has 2 cores) the demo is trimmed (config overlay below): one train shard, two runs, fewer
codebook/Melception epochs, one sampling seed, the table as target (the report's figures are local jobs). It
asks for GPUs as the study does (`gpu: true`; the gpu partition's node declares stand-in GPUs). Both runs are
interrupted mid-training: one is scancel'ed (Snakemake submits it again), the other is requeued the way SLURM
requeues a preempted job (the same job id runs again).
"""
from __future__ import annotations

import csv
import getpass
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

RUN_TIMEOUT_S = 1200
CANCELLED_RUN, REQUEUED_RUN = "resnet18-s5", "no-feats"
DEMO = yaml.safe_load((REPO / "config/demo.yaml").read_text())
TRAIN_EPOCHS = 150  # ~0.2 s each on an idle 2-core machine: a wide window to interrupt mid-training
INTERRUPT_AFTER_EPOCHS = 3


def _run(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return _run("sinfo", "-h", timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def cluster_name() -> str:
    config = _run("scontrol", "show", "config").stdout
    match = re.search(r"^ClusterName\s*=\s*(\S+)", config, re.MULTILINE)
    return match.group(1) if match else ""


def skip_reason() -> str | None:
    if not slurm_answers():
        return ("no SLURM here (sinfo does not answer): to run the SLURM tests, as root on a machine with apt-get, "
                "`make test` (without SLURM=no) starts a one-node SLURM first (.ci/slurm/setup.sh)")
    if cluster_name() != "ci" and os.environ.get("I2A_SLURM_TEST") != "1":
        return "this SLURM is not the CI cluster from .ci/slurm/setup.sh; set I2A_SLURM_TEST=1 to submit to it"
    return None


SKIP_REASON = skip_reason()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


def cluster_names() -> dict[str, str]:
    """The account and partitions to use here: from the environment, else this user's account and cpu/gpu."""
    account = os.environ.get("I2A_SLURM_ACCOUNT")
    if not account:
        assoc = _run("sacctmgr", "-n", "-P", "show", "assoc", f"user={getpass.getuser()}", "format=account").stdout
        account = next((line.strip() for line in assoc.splitlines() if line.strip()), "root")
    return {"account": account, "cpu": os.environ.get("I2A_SLURM_CPU_PARTITION", "cpu"),
            "gpu": os.environ.get("I2A_SLURM_GPU_PARTITION", "gpu")}


def cluster_environment(names: dict[str, str]) -> dict[str, str]:
    """The environment the profile reads the cluster's names from (profiles/slurm/README.md): the only thing this
    test changes about the profile."""
    return {**os.environ, "I2A_SLURM_ACCOUNT": names["account"], "I2A_SLURM_CPU_PARTITION": names["cpu"],
            "I2A_SLURM_GPU_PARTITION": names["gpu"]}


def partition_kind(resources: dict) -> str:
    """'gpu' or 'cpu': which of the profile's partitions a rule's set-resources name."""
    return "gpu" if "I2A_SLURM_GPU_PARTITION" in resources["slurm_partition"] else "cpu"


def demo_overlay(path: Path) -> Path:
    """Trims the demo for CI and makes its two runs train long enough to be interrupted."""
    runs = [dict(run, max_epochs=TRAIN_EPOCHS) for run in DEMO["runs"] if run["name"] in (CANCELLED_RUN,
                                                                                          REQUEUED_RUN)]
    # cluster.cpus_per_gpu 1: the CI node has 2 CPUs (the study's 8 per GPU would never be scheduled there)
    overlay = {"gpu": True, "cluster": {"cpus_per_gpu": 1}, "shards": {"train": 1, "valid": 1}, "codebook": {"train": {"max_epochs": 4}},
               "melception": {"train": {"epochs": 2}}, "sampling": {"seeds": 1}, "metrics": {"bootstrap": 50},
               "vocoder": {"listen_videos": 1}, "controls": {"shuffled": False}, "runs": runs}
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("config", "workflow"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    (dest / "src").symlink_to(REPO / "src")
    return dest


# ------------------------------------------------------------------------------------------ SLURM queries

def epochs_done(state_dir: Path) -> int:
    metrics = state_dir / "metrics.csv"
    if not metrics.exists() or not (state_dir / "last.ckpt").exists():
        return 0
    with open(metrics) as fh:
        return sum(1 for _ in csv.DictReader(fh))


def running_job(job_name: str, comment: str) -> str | None:
    """The id of this workflow's running job with that comment (the plugin's rule_<rule>_wildcards_<...>)."""
    out = _run("squeue", "-h", "-t", "RUNNING", "-n", job_name, "-o", "%i|%k").stdout
    return next((line.split("|")[0] for line in out.splitlines() if line.split("|", 1)[-1] == comment), None)


def preempt(job_id: str) -> None:
    """What SLURM does to a preempted job submitted with --requeue: kill it and queue it again under the same
    id. The requeued job then waits two minutes before it may start: `release_requeued` lets it start at once."""
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)


def release_requeued(job_id: str) -> bool:
    """Start a requeued job now once it waits in the queue (reason BeginTime); False while it is not there yet."""
    if _run("squeue", "-h", "-j", job_id, "-o", "%T %r").stdout.split() != ["PENDING", "BeginTime"]:
        return False
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True, capture_output=True)
    return True


def sacct_records(job_name: str) -> list[dict[str, str]]:
    """Every accounting record of the workflow's jobs, requeued runs of a job included (-D)."""
    fields = ["JobIDRaw", "Partition", "State", "Comment", "AllocTRES"]
    out = _run("sacct", "-X", "-D", "-P", "-n", "--name", job_name, "--starttime", "now-1days",
               "-o", ",".join(fields)).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def rule_of(comment: str) -> str:
    match = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", comment)
    assert match, comment
    return match.group(1)


# ------------------------------------------------------------------------------------------ the run

@pytest.fixture(scope="module")
def slurm_demo(tmp_path_factory):
    """The trimmed demo through the profile, with one training job cancelled and one preempted mid-way."""
    tmp = tmp_path_factory.mktemp("slurm")
    names = cluster_names()
    profile = REPO / "profiles/slurm"
    overlay = demo_overlay(tmp / "overlay.yaml")
    workdir = copy_workflow(tmp / "wf")
    log_path = tmp / "snakemake.log"
    cmd = [sys.executable, "-m", "snakemake", "results/demo/table.csv", "--profile", str(profile), "--configfile",
           "config/demo.yaml", str(overlay),
           "--slurm-init-seconds-before-status-checks", "1"]  # CI: poll sooner than the plugin's 40 s
    start = time.monotonic()
    interrupted: dict[str, dict] = {}
    with open(log_path, "w") as log:
        # the node's GPUs are stand-ins (null device files): the jobs given one run on the CPU on purpose
        # (sbatch passes the environment on), where a real job would stop at once (i2a.infra.device.check_gpu_given)
        env = {**cluster_environment(names), "I2A_ALLOW_NO_CUDA": "1"}
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
        job_name = None
        try:
            while proc.poll() is None:
                if time.monotonic() - start > RUN_TIMEOUT_S:
                    pytest.fail(f"the SLURM demo took over {RUN_TIMEOUT_S} s:\n{log_path.read_text()[-5000:]}")
                job_name = job_name or _slurm_job_name(log_path)
                if job_name:
                    _interrupt_training(workdir, job_name, interrupted)
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # Snakemake then cancels its SLURM jobs
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if job_name:
                _run("scancel", "-n", job_name)
    elapsed = time.monotonic() - start
    output = log_path.read_text()
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted((workdir / "logs").rglob("*.log")))
        pytest.fail(f"the SLURM demo failed:\n{output[-6000:]}\n{logs[-12000:]}")
    return {"workdir": workdir, "names": names, "job_name": job_name, "elapsed": elapsed, "output": output,
            "interrupted": interrupted, "records": sacct_records(job_name)}


def _slurm_job_name(log_path: Path) -> str | None:
    match = re.search(r"SLURM run ID: (\S+)", log_path.read_text())
    return match.group(1) if match else None


def _interrupt_training(workdir: Path, job_name: str, interrupted: dict) -> None:
    """Called every half second: interrupt each training job once it has a few epochs, never blocking, so that
    the other job is not left to finish its training meanwhile."""
    for run, action in ((CANCELLED_RUN, "scancel"), (REQUEUED_RUN, "requeue")):
        if run in interrupted:
            if interrupted[run].get("waiting") and release_requeued(interrupted[run]["job_id"]):
                interrupted[run]["waiting"] = False
            continue
        epochs = epochs_done(workdir / f"results/demo/runs/{run}/state")
        if epochs < INTERRUPT_AFTER_EPOCHS:
            continue
        job_id = running_job(job_name, f"rule_train_gpt_wildcards_{run}")
        if job_id is None:
            continue
        if action == "scancel":
            subprocess.run(["scancel", job_id], check=True, capture_output=True)
        else:
            preempt(job_id)
        interrupted[run] = {"job_id": job_id, "epochs": epochs, "action": action, "waiting": action == "requeue"}


# ------------------------------------------------------------------------------------------ the checks

def test_demo_through_slurm_writes_the_table(slurm_demo):
    table = pd.read_csv(slurm_demo["workdir"] / "results/demo/table.csv")
    assert list(table[table["kind"] == "run"]["run"]) == [CANCELLED_RUN, REQUEUED_RUN]
    assert list(table["kind"].str.split(":").str[0]) == ["run", "run", "ceiling"]  # shuffled controls are off
    assert table[["KL", "FID"]].notna().all().all()
    print(f"SLURM demo wall time {slurm_demo['elapsed']:.0f} s, {len(slurm_demo['records'])} sacct records\n"
          f"{table.to_string(index=False)}")


def test_every_job_ran_through_sbatch_on_the_partition_its_rule_asks_for(slurm_demo):
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    names = slurm_demo["names"]
    wanted = {rule: names[partition_kind(res)] for rule, res in profile["set-resources"].items()}
    records = slurm_demo["records"]
    rules = {rule_of(r["Comment"]) for r in records}
    assert rules <= set(wanted), f"submitted without a partition in the profile: {rules - set(wanted)}"
    assert rules == {"make_synthetic_videos", "list_clips", "preprocess_clips", "extract_features",
                     "feature_summary", "train_codebook", "encode_tokens", "train_gpt", "sample_tokens", "vocode",
                     "train_melception", "score_reference", "reconstruct_validation",
                     "score_samples", "compare_with_baseline", "compare_precision"}
    # aggregate_table and the report's pages are local
    for record in records:
        rule = rule_of(record["Comment"])
        assert record["Partition"] == wanted[rule], record
        gpus = re.search(r"gres/gpu=(\d+)", record["AllocTRES"])
        if wanted[rule] == names["gpu"]:
            assert gpus and int(gpus.group(1)) == 1, record  # the rule's gpu resource, config gpu: true
        else:
            assert gpus is None, record
    uninterrupted = [r for r in records if r["Comment"] not in
                     {f"rule_train_gpt_wildcards_{run}" for run in (CANCELLED_RUN, REQUEUED_RUN)}]
    assert {r["State"] for r in uninterrupted} == {"COMPLETED"}
    assert "localrule aggregate_table:" in slurm_demo["output"]


def _train_records(slurm_demo, run):
    return [r for r in slurm_demo["records"] if r["Comment"] == f"rule_train_gpt_wildcards_{run}"]


def _resumed_from_epoch(workdir: Path, run: str) -> int:
    log = (workdir / f"logs/demo/train_gpt/{run}.log").read_text()
    match = re.search(r"resuming from \S+last\.ckpt \(epoch (\d+)", log)
    assert match, f"no resume in the log of {run}:\n{log[-3000:]}"
    return int(match.group(1))


def _trained_every_epoch_once(workdir: Path, run: str) -> None:
    metrics = pd.read_csv(workdir / f"results/demo/runs/{run}/metrics.csv")
    assert list(metrics["epoch"]) == list(range(TRAIN_EPOCHS))


def test_cancelled_training_is_resubmitted_and_resumes_from_its_checkpoint(slurm_demo):
    interrupted = slurm_demo["interrupted"].get(CANCELLED_RUN)
    assert interrupted, f"{CANCELLED_RUN} finished before it could be cancelled: raise TRAIN_EPOCHS"
    records = _train_records(slurm_demo, CANCELLED_RUN)
    assert [r["State"].split()[0] for r in records] == ["CANCELLED", "COMPLETED"], records
    assert records[0]["JobIDRaw"] == interrupted["job_id"] != records[1]["JobIDRaw"]
    workdir = slurm_demo["workdir"]
    assert 1 <= _resumed_from_epoch(workdir, CANCELLED_RUN) < TRAIN_EPOCHS - 1
    _trained_every_epoch_once(workdir, CANCELLED_RUN)


def test_preempted_training_is_requeued_and_resumes_from_its_checkpoint(slurm_demo):
    interrupted = slurm_demo["interrupted"].get(REQUEUED_RUN)
    assert interrupted, f"{REQUEUED_RUN} finished before it could be requeued: raise TRAIN_EPOCHS"
    records = _train_records(slurm_demo, REQUEUED_RUN)
    assert [(r["JobIDRaw"], r["State"]) for r in records] == [(interrupted["job_id"], "REQUEUED"),
                                                              (interrupted["job_id"], "COMPLETED")]
    workdir = slurm_demo["workdir"]
    assert 1 <= _resumed_from_epoch(workdir, REQUEUED_RUN) < TRAIN_EPOCHS - 1
    _trained_every_epoch_once(workdir, REQUEUED_RUN)
