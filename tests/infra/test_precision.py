"""Precision, explicit and exact (issue 21.6): the backend flags each setting leaves, and every torch job sets
and logs its precision at its entry point."""
import ast
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from i2a.infra.precision import PRECISIONS, autocast_dtype, describe, lightning_precision, set_precision, use_precision

# (float32_matmul_precision, cuBLAS TF32, cuDNN TF32, autocast) as each setting must leave them
EXPECTED = {"fp32": ("highest", False, False, None), "tf32": ("high", True, True, None),
            "bf16": ("high", True, True, torch.bfloat16)}


@pytest.fixture
def restore_flags():
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]


@pytest.mark.parametrize("first", PRECISIONS)
@pytest.mark.parametrize("name", PRECISIONS)
def test_each_setting_leaves_its_backend_flags(name, first, restore_flags):
    set_precision(first)  # whatever was set before, the setting decides alone
    flags = set_precision(name)
    matmul, cublas, cudnn, autocast = EXPECTED[name]
    assert torch.get_float32_matmul_precision() == flags["float32_matmul_precision"] == matmul
    assert torch.backends.cuda.matmul.allow_tf32 is cublas and torch.backends.cudnn.allow_tf32 is cudnn
    assert autocast_dtype(name) == autocast
    assert lightning_precision(name) == ("bf16-mixed" if name == "bf16" else "32-true")


def test_pytorch_default_is_not_strict_fp32():
    """Why `fp32` must be set: PyTorch's own defaults leave cuDNN's convolutions in TF32 (in a fresh process)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_float32_matmul_precision(), "
                          "torch.backends.cudnn.allow_tf32)"], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["highest", "True"]


def test_log_line_names_the_setting(restore_flags, caplog):
    caplog.set_level("INFO")
    line = use_precision("tf32")
    assert line == "precision: tf32 (matmul high: TF32 on, cuDNN TF32 on, autocast off)" in caplog.text
    set_precision("fp32")
    assert describe("fp32") == "precision: fp32 (matmul highest: TF32 off, cuDNN TF32 off, autocast off)"
    set_precision("bf16")
    assert describe("bf16") == "precision: bf16 (matmul high: TF32 on, cuDNN TF32 on, autocast bfloat16)"
    with pytest.raises(ValueError, match="fp32, tf32, bf16"):
        use_precision("32")


# ------------------------------------------------------------------------------------------------ entry points
def _torch_scripts() -> dict[str, str]:
    """script name -> rule, for every rule of the torch environment (the jobs that compute with torch)."""
    scripts = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for rule in re.split(r"(?m)^rule ", smk.read_text())[1:]:
            script = re.search(r'script:\s*\n\s*"\.\./scripts/([\w.]+)"', rule)
            if script and re.search(r"conda:\s*\n\s*TORCH_ENV", rule):
                scripts[script.group(1)] = rule.split(":", 1)[0]
    return scripts


# the jobs whose config has a precision setting, and the setting they must pass
CONFIGURED = {"train_gpt.py": "spec.train.precision", "lr_find.py": "spec.train.precision",
              "sample_tokens.py": "spec.sampling.precision", "extract_features.py": "snakemake.params.precision"}


def test_every_torch_job_sets_its_precision_first():
    scripts = _torch_scripts()
    assert set(CONFIGURED) <= set(scripts) and len(scripts) >= 15, scripts
    for name in scripts:
        tree = ast.parse((REPO / "workflow" / "scripts" / name).read_text())
        # module-level calls in order (`log = start_job(...)` too); reading the run's description and the clock (the
        # job's start, for a segment's deadline) may come first
        calls = [node.value for node in tree.body if isinstance(node, (ast.Expr, ast.Assign))
                 and isinstance(node.value, ast.Call)
                 and ast.unparse(node.value.func) not in ("RunSpec.from_dict", "time.time")]
        assert calls and ast.unparse(calls[0].func) == "start_job", f"{name}: the job's first call must be start_job"
        precision = {kw.arg: ast.unparse(kw.value) for kw in calls[0].keywords}.get("precision")
        assert precision == CONFIGURED.get(name), f"{name}: start_job(precision=...) is {precision}"


@pytest.mark.parametrize("precision", ["tf32", None])
def test_a_job_log_records_its_precision(tmp_path, precision):
    """start_job as a job runs it (in its own process: it takes over stdout and logging)."""
    log = tmp_path / "job.log"
    arg = "" if precision is None else f", precision={precision!r}"
    code = ("from types import SimpleNamespace as NS\nimport torch\nfrom i2a.pipeline.jobs import start_job\n"
            f"start_job(NS(log=[{str(log)!r}], threads=1, rule='r', wildcards={{}}){arg})\n"
            "print('flags', torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    text = log.read_text()
    if precision == "tf32":
        assert "precision: tf32 (matmul high: TF32 on, cuDNN TF32 on, autocast off)" in text
        assert "flags high True" in text
    else:  # a job without a setting of its own computes in strict fp32
        assert "precision: fp32 (matmul highest: TF32 off, cuDNN TF32 off, autocast off)" in text
        assert "flags highest False" in text


def test_training_computes_in_its_runs_precision(tmp_path, restore_flags):
    """train_gpt sets its run's precision itself (a calibration or a benchmark calling it computes as the job)."""
    from test_train_gpt import _cfg, _data
    from i2a.training.gpt import GPTDataset, train_gpt

    set_precision("fp32")
    tokens, feats = _data(8, 0)
    train_gpt(_cfg(max_epochs=1, precision="tf32"), GPTDataset(tokens, feats, S=2), GPTDataset(tokens, feats, S=2),
              tmp_path / "state", accelerator="cpu")
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
