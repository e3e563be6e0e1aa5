"""Conventions of the workflow files: every rule has a log, a benchmark where it computes, a conda env pinned
to the versions uv.lock installs."""
import re
import tomllib
from pathlib import Path

import yaml

from conftest import REPO


def locked_versions() -> dict[str, set[str]]:
    """Versions per package (a few, e.g. numpy, are locked per Python version)."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        versions.setdefault(package["name"], set()).add(package["version"])
    return versions


def test_conda_envs_pin_the_locked_versions():
    locked = locked_versions()
    for env_file in (REPO / "workflow/envs").glob("*.yaml"):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        for requirement in pip:
            name, version = requirement.split("==")
            key = name.lower().replace("_", "-")
            assert key in locked, f"{env_file.name}: {name} is not in uv.lock"
            assert version in locked[key], f"{env_file.name}: {name}=={version} but uv.lock has {locked[key]}"


def test_every_rule_has_log_benchmark_conda_and_resources():
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        text = smk.read_text()
        for block in re.split(r"\n(?=rule |checkpoint )", text)[1:]:
            name = block.split(":", 1)[0].split()[1]
            assert "\n    log:" in block, f"{smk.name}: rule {name} has no log"
            assert "\n    benchmark:" in block, f"{smk.name}: rule {name} has no benchmark"
            assert "\n    conda:" in block, f"{smk.name}: rule {name} has no conda env"
            assert "\n    resources:" in block, f"{smk.name}: rule {name} has no resources"


def test_rule_files_are_snakefmt_formatted():
    import subprocess
    import sys

    snakefmt = Path(sys.executable).with_name("snakefmt")
    result = subprocess.run([str(snakefmt), "--check", "workflow", "Snakefile"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, f"run `snakefmt workflow Snakefile`:\n{result.stdout}{result.stderr}"


def test_conda_envs_install_the_workflow_package():
    """Jobs import `i2a` as an installed package (no sys.path edits): each conda env installs it after creation."""
    for env_file in (REPO / "workflow/envs").glob("*.yaml"):
        script = env_file.with_suffix(".post-deploy.sh")
        assert script.is_file(), f"{env_file.name} has no post-deploy script"
        assert "pip install --no-deps --editable" in script.read_text()
    assert "sys.path" not in (REPO / "workflow/rules/common.smk").read_text()
