"""What the workflow tests share: running Snakemake, reading its dry runs, a copy of the workflow to run in, and
the headless Chromium the report and app tests drive. A module of its own (not a test file), so that test files
import it without importing each other."""
from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO

# What a copy of the workflow needs; src is linked so the copy runs the code under test.
WORKFLOW_FILES = ["config", "workflow"]


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
    """(rule, run or '') for every job a dry run lists; the run is its `run` wildcard, with `/<kind>` for the
    sample sets of a run (samples, shuffled) that `kind` or `sampleset` name."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \S+:)", output):
        head = re.match(r"(?:local)?rule (\S+):", block.strip())
        if head:
            wildcards = dict(re.findall(r"(\w+)=([^,\s]+)", (re.search(r"wildcards: (.*)", block) or ["", ""])[1]))
            run = wildcards.get("run", "")
            if "kind" in wildcards:
                run += "/" + wildcards["kind"]
            if wildcards.get("sampleset", "").startswith("runs/"):
                run = wildcards["sampleset"].removeprefix("runs/")
            jobs.append((head.group(1), run))
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


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]
REPORT_CATEGORIES = {"Results", "Training curves", "Listening gallery", "Method and caveats"}
# the screens a reader opens the report on: a laptop's, and two larger ones
FIRST_SCREENS = [(1366, 768), (1400, 1000), (1920, 1080)]
NO_BROWSER = ("no Chromium and ChromeDriver here: to run the report tests, as root on a machine with apt-get, "
              "`make test` (without BROWSER=no) or `make browser` installs them (.ci/browser/setup.sh)")


@contextlib.contextmanager
def headless_chromium(profile_dir: Path):
    """Debian's headless Chromium through chromedriver, with a fresh profile; skips when either is missing."""
    import pytest

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip(NO_BROWSER)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev dependency group")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={Path(profile_dir) / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        yield driver
    finally:
        driver.quit()
