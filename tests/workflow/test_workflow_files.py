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
    result = subprocess.run([str(snakefmt), "--check", "workflow"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, f"run `snakefmt workflow`:\n{result.stdout}{result.stderr}"


def test_conda_envs_install_the_workflow_package():
    """Jobs import `i2a` as an installed package (no sys.path edits): each conda env installs it after creation."""
    for env_file in (REPO / "workflow/envs").glob("*.yaml"):
        script = env_file.with_suffix(".post-deploy.sh")
        assert script.is_file(), f"{env_file.name} has no post-deploy script"
        assert "pip install --no-deps --editable" in script.read_text()
    assert "sys.path" not in (REPO / "workflow/rules/common.smk").read_text()


def _rules():
    """(file, rule name, block) for every rule of workflow/rules."""
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule |checkpoint )", smk.read_text())[1:]:
            yield smk.name, block.split(":", 1)[0].split()[1], block


def test_rules_in_the_light_environment_never_import_torch():
    """The report, the table, the comparisons and the data stage run in workflow/envs/data.yaml, which has no torch:
    what their scripts import must not need it (imported here in a fresh interpreter, as the job would)."""
    import subprocess
    import sys

    pip = yaml.safe_load((REPO / "workflow/envs/data.yaml").read_text())["dependencies"][-1]["pip"]
    assert not [p for p in pip if p.startswith(("torch", "lightning"))]
    light = {name: re.search(r'script:\n\s+"\.\./scripts/(\w+\.py)"', block).group(1)
             for _, name, block in _rules() if re.search(r"conda:\n\s+CPU_ENV", block) and "script:" in block}
    assert {"aggregate_table", "compare_with_baseline", "compare_with_best", "compare_precision", "report_results",
            "listening_gallery", "report_landing"} <= set(light)
    for name, script in sorted(light.items()):
        imports = [line for line in (REPO / "workflow/scripts" / script).read_text().splitlines()
                   if re.match(r"(from \S+ )?import ", line)]
        code = "\n".join(imports + ["import sys", "sys.exit(3 if 'torch' in sys.modules else 0)"])
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, f"rule {name} ({script}) imports torch:\n{result.stderr[-2000:]}"


def test_the_snakefile_and_local_rules_follow_the_catalog():
    """workflow/Snakefile opens with min_version, the config and the report; local rules say so themselves."""
    snakefile = (REPO / "workflow/Snakefile").read_text()
    assert not (REPO / "Snakefile").exists()
    head = snakefile.split("include:")[0]
    assert 'min_version("9.0")' in head and 'configfile: "config/config.yaml"' in head and "\nreport:" in head
    assert all("localrules:" not in (REPO / "workflow/rules" / f).read_text() for f, _, _ in _rules())
    local = {name for _, name, block in _rules() if "localrule: True" in block}
    assert {"download_vas", "fetch_weights", "fetch_checkpoint", "aggregate_table", "report_landing"} <= local


def test_the_catalog_test_directory_plans_the_demo():
    """`snakemake --directory .test` (the catalog's tooling) plans the built-in demo, from its own config."""
    import subprocess
    import sys

    snakemake = Path(sys.executable).with_name("snakemake")
    result = subprocess.run([str(snakemake), "-n", "--quiet", "rules", "--directory", ".test"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "make_synthetic_videos" in result.stdout and "train_gpt" in result.stdout
