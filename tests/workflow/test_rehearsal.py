"""The rehearsal: the study's real shapes and architectures end to end on CPU (config/rehearsal.yaml).

10 s clips, (80, 848) mels, 212 frames of 2048-d ResNet50 features at 224 px, the released codebook's architecture
(128 codes on a 5 x 53 grid), the 24-layer 1024-wide GPT (two training steps, one validation step), complete
265-token KV-cache samples, the full-size MelGAN and Melception, scoring and the table; random weights. Then each
rule's peak memory against what it asks SLURM for (benchmarks/rehearsal_memory.py).

About 7 minutes on 2 cores, so not part of the default run (pyproject: `-m 'not rehearsal'`):

    .venv/bin/python -m pytest -n0 -s -m rehearsal tests/workflow/test_rehearsal.py
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO

pytestmark = pytest.mark.rehearsal

CONFIG = REPO / "config" / "rehearsal.yaml"


def _memory_script():
    spec = importlib.util.spec_from_file_location("rehearsal_memory", REPO / "benchmarks" / "rehearsal_memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """The rehearsal DAG, run once in a copy of the workflow (src linked: the code under test)."""
    from workflow_helpers import copy_workflow

    workdir = copy_workflow(tmp_path_factory.mktemp("rehearsal"))
    shutil.copytree(REPO / "profiles", workdir / "profiles")  # benchmarks/rehearsal_memory.py reads the profile
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/rehearsal.yaml"],
                            cwd=workdir, capture_output=True, text=True, timeout=3 * 3600)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log")))
        pytest.fail(f"the rehearsal failed:\n{result.stderr[-5000:]}\n{logs[-20000:]}")
    config = yaml.safe_load(CONFIG.read_text())
    print(f"rehearsal wall time {elapsed:.0f} s")
    return workdir, workdir / config["results"], workdir / config["logs"], elapsed


def test_the_real_shapes_go_through_every_stage(rehearsal):
    workdir, results, _, _ = rehearsal
    study = yaml.safe_load((REPO / "config/config.yaml").read_text())
    run = yaml.safe_load(CONFIG.read_text())["runs"][0]["name"]
    # 212 frames of 2048-d features per clip, stored as the study stores them
    feats = np.load(next((results / "features/resnet50/train").glob("shard*.npy")), mmap_mode="r")
    assert feats.shape[1:] == (212, 2048) and feats.dtype == np.dtype(study["features"]["dtype"])
    assert np.isfinite(feats).all()
    # the codebook's 5 x 53 grid of 128 codes
    tokens = np.load(next((results / "codebook/tokens/train").glob("shard*.npy")))
    assert tokens.shape[1] == 265 and 0 <= tokens.min() and tokens.max() < 128
    # the 24-layer, 16-head, 1024-wide GPT over S = 212 + 265 tokens, trained for two steps, validated once
    best = torch.load(results / f"runs/{run}/best.ckpt", map_location="cpu", weights_only=False)
    model = best["run_spec"]["model"]
    assert (model["layers"], model["heads"], model["embed"], model["block_size"], model["vocab_size"]) == \
        (24, 16, 1024, 212 + 265, 128)
    metrics = pd.read_csv(results / f"runs/{run}/metrics.csv")
    assert len(metrics) == 1 and np.isfinite(metrics[["train_loss", "val_loss"]].to_numpy()).all()
    # complete 265-token samples, decoded to (80, 848) spectrograms
    sampled = np.load(results / f"runs/{run}/samples/tokens.npy")
    mels = np.load(results / f"runs/{run}/samples/mels.npy", mmap_mode="r")
    assert sampled.shape[-1] == 265 and mels.shape[-2:] == (80, 848) and np.isfinite(mels).all()
    # the full MelGAN made 10 s of 22,050 Hz audio from a spectrogram (848 frames x hop 256)
    import soundfile

    wavs = sorted((results / f"runs/{run}/audio").rglob("*.wav"))
    assert wavs
    info = soundfile.info(str(wavs[0]))
    assert info.samplerate == 22050 and abs(info.frames - 848 * 256) <= 256
    # scored by the full Melception: the table has the run's and the ceiling's rows
    table = pd.read_csv(results / "table.csv").set_index("run")
    assert {run, "reconstruction"} <= set(table.index)
    assert np.isfinite(table.loc[run, ["KL", "FID"]].astype(float)).all()


def test_every_rule_fits_its_slurm_memory_request(rehearsal):
    workdir, _, logs, elapsed = rehearsal
    memory = _memory_script()
    rows = memory.rule_memory(logs, [str(workdir / "config/rehearsal.yaml")], workdir / "profiles/slurm",
                              full_study=True, workdir=workdir)
    print(f"rehearsal wall time {elapsed:.0f} s")
    print(memory.format_table(rows, cuda_host_mb=3000))
    ran = {r.rule for r in rows}
    assert {"extract_features", "train_codebook", "encode_tokens", "train_gpt", "sample_tokens", "train_melgan",
            "vocode", "train_melception", "score_reference", "score_samples", "aggregate_table"} <= ran
    over = [r.rule for r in rows if r.verdict(3000) == "OVER"]
    assert not over, f"rules whose rehearsal peak exceeds their SLURM memory request: {over}"
