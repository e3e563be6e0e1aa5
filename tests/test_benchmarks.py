"""Every benchmark runs, at its smallest size, in the suite: a benchmark that no longer imports or runs fails here.

A new script in benchmarks/ needs its smallest arguments in SMALLEST (the test says so), so none rots unseen.
The figures they print are not checked (timings on a shared test machine mean nothing); their form is: each
prints its result last, as `name: value`.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED

BENCHMARKS = REPO / "benchmarks"

# script -> (smallest arguments, needs ../shared's sample clips)
SMALLEST = {
    "decode.py": (["--clips", "1", "--repeats", "1"], True),
    "decode_rate.py": (["--sizes", "64x48", "--clips", "1", "--repeats", "1", "--workers", "1"], False),
    "feature_precision.py": (["--backbone", "resnet18", "--frames", "2"], True),
    "features.py": (["--backbones", "resnet50", "--clips", "1", "--seconds", "0.2", "--batch-size", "8"], True),
    "loader.py": (["--clips", "16", "--shards", "2", "--batch", "4", "--workers", "0", "--repeats", "1"], False),
    "rehearsal_memory.py": (["--logs", "{tmp}/logs", "--configfile", "config/rehearsal.yaml", "--no-full-study"], False),
    "sampling.py": (["--layers", "1", "--batch", "1", "--tokens", "3", "--feat-sample-size", "2", "--repeats", "1",
                     "--threads", "1", "--device", "cpu"], False),
    "train_step.py": (["--sizes", "tiny", "--batch", "2", "--steps", "2", "--warmup", "1", "--repeats", "1",
                       "--device", "cpu"], False),
    "scoring.py": (["--videos", "8", "--samples", "2", "--dim", "16", "--boot", "2"], False),
}

LAST_LINE = re.compile(r"^[a-z][a-z0-9_]*: \S")


def test_every_benchmark_has_its_smallest_arguments():
    scripts = sorted(p.name for p in BENCHMARKS.glob("*.py"))
    missing = [s for s in scripts if s not in SMALLEST]
    assert not missing, f"add the smallest arguments of {missing} to SMALLEST in {__file__}"
    gone = [s for s in SMALLEST if s not in scripts]
    assert not gone, f"SMALLEST names scripts that are not in benchmarks/: {gone}"


def _rehearsal_logs(tmp: Path) -> None:
    """One Snakemake benchmark file (its real columns) as a rehearsal leaves them: the report reads max_rss/max_pss."""
    folder = tmp / "logs" / "benchmarks" / "preprocess_clips"
    folder.mkdir(parents=True)
    (folder / "shard0.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "1.5\t0:00:01\t120.5\t900.1\t100.2\t110.3\t0.1\t0.2\t50.0\t0.8\n")


@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs_at_its_smallest_size(script, tmp_path):
    args, needs_samples = SMALLEST[script]
    if needs_samples and not (SHARED / "data" / "vas-samples" / "videos").is_dir():
        pytest.skip("needs the VAS sample clips of ../shared (only beside the developers' checkout)")
    if script == "rehearsal_memory.py":
        _rehearsal_logs(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    run = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, f"{script} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert lines and LAST_LINE.match(lines[-1]), f"{script}: last line is not `name: value`: {lines[-1:]}"
