"""The Makefile as a user meets it: what `make demo` ends with, and what `make test` says it will install as root
before it starts (and that saying it installs nothing)."""
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO


def make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)


def test_make_demo_ends_with_the_report_and_the_answer():
    """`make demo` runs the workflow, then `make report`: the report, then the answer printed last."""
    result = make("-n", "demo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    run = next(i for i, line in enumerate(lines) if line.startswith(".venv/bin/snakemake --cores"))
    report = next(i for i, line in enumerate(lines) if line.startswith(".venv/bin/snakemake --report"))
    assert run < report and lines[-1] == ".venv/bin/python -m i2a.report.summary --configfile config/demo.yaml"


def test_make_report_reports_the_config_given():
    result = make("-n", "report", "CONFIG=config/config.yaml")
    assert result.returncode == 0, result.stderr
    assert "--configfile config/config.yaml --report-path" in result.stdout
    assert result.stdout.splitlines()[-1] == ".venv/bin/python -m i2a.report.summary --configfile config/config.yaml"


def test_make_test_says_what_it_installs_as_root_before_anything_else():
    lines = make("-n", "test").stdout.splitlines()
    assert lines[0] == "bash .ci/notice.sh auto auto"
    assert lines.index("bash .ci/slurm/setup.sh") > 0 and lines.index("bash .ci/browser/setup.sh") > 0
    assert lines[-1] == ".venv/bin/python -m pytest"  # the whole suite, as CI runs it
    skipped = make("-n", "test", "SLURM=no", "BROWSER=no").stdout.splitlines()
    assert skipped[0] == "bash .ci/notice.sh no no"
    assert not any("setup.sh" in line for line in skipped)


@pytest.fixture
def recording_apt(tmp_path):
    """A PATH whose apt-get (and apt, dpkg) only record that they were called."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("apt-get", "apt", "dpkg"):
        (fake / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {tmp_path / 'called'}\n")
        (fake / name).chmod(0o755)
    return fake, tmp_path / "called"


def test_the_notice_says_what_would_be_installed_and_how_to_skip_it(recording_apt):
    fake, called = recording_apt
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", ".ci/notice.sh", "auto", "auto"], cwd=REPO, capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    slurm = next(line for line in out.splitlines() if line.startswith("slurm-setup: "))
    browser = next(line for line in out.splitlines() if line.startswith("browser-setup: "))
    # as root with apt-get: what will be installed and started; else that nothing is
    assert any(words in slurm for words in ("will install", "will start", "already up", "not root or no apt-get"))
    assert any(words in browser for words in ("will install chromium", "already installed", "not root"))
    if "will" in slurm:
        assert "munged, MariaDB, slurmdbd, slurmctld and slurmd" in slurm
    assert "make test SLURM=no BROWSER=no" in out
    assert not called.exists(), called.read_text()  # saying it installed nothing
    quiet = subprocess.run(["bash", ".ci/notice.sh", "no", "no"], cwd=REPO, capture_output=True, text=True,
                           timeout=60).stdout
    assert "SLURM=no: not set up" in quiet and "BROWSER=no: not installed" in quiet


@pytest.mark.parametrize("uid, expected", [("0", "as root, will install chromium and chromium-driver with apt-get"),
                                           ("1000", "not root or no apt-get: leaving this machine alone")])
def test_the_browser_dry_run_on_a_machine_without_chromium(recording_apt, uid, expected):
    """Only the tools the script needs on PATH (no Chromium): as root it says what it would install, otherwise that
    it leaves the machine alone; it never calls apt-get."""
    fake, called = recording_apt
    (fake / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (fake / "id").chmod(0o755)
    result = subprocess.run(["/bin/bash", ".ci/browser/setup.sh", "--dry-run"], cwd=REPO, capture_output=True,
                            text=True, env={"PATH": str(fake)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout, result.stdout
    assert not called.exists()


def test_a_skipped_slurm_test_says_how_to_run_it(monkeypatch):
    import test_slurm

    monkeypatch.setattr(test_slurm.shutil, "which", lambda name: None)
    reason = test_slurm.skip_reason()
    assert "make test" in reason and "SLURM=no" in reason and "as root" in reason
