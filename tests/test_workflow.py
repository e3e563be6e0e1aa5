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
    # reproduction mode: the released codebook, transformer, MelGAN, Melception and its statistics are fetched
    # (MD5-checked, on the login node) instead of trained
    assert counts["fetch_checkpoint"] == 5 and "train_codebook" not in counts and "train_melception" not in counts
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
    for column in ["features", "scheduler", "batch", "gpus", "layers", "heads", "embed", "dropout", "weight_decay",
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


def test_conditioned_runs_use_the_features(demo):
    """Both conditioned GPTs reach a lower validation loss than the "no feats" baseline: the frame features carry
    the class. (MKL on the demo is not a reliable judge of that: its small Melception classifies codebook
    reconstructions of real clips only about half right, so the table's KL is mostly its own noise.)"""
    import json

    workdir, _ = demo
    runs = {r["features"]: r["name"] for r in yaml.safe_load((workdir / "config/demo.yaml").read_text())["runs"]}
    val = {f: json.loads((workdir / f"results/demo/runs/{name}/train.json").read_text())["best_val_loss"]
           for f, name in runs.items()}
    for features in ("resnet18", "clip_vit_b32"):
        assert val[features] < val["none"], val


def test_every_rule_left_a_benchmark_and_a_log(demo):
    workdir, _ = demo
    logs = workdir / "logs/demo"
    benchmarks = {p.relative_to(logs / "benchmarks").with_suffix("") for p in (logs / "benchmarks").rglob("*.tsv")}
    logged = {p.relative_to(logs).with_suffix("") for p in logs.rglob("*.log")}
    assert benchmarks == logged
    assert {"make_synthetic_videos", "list_clips", "preprocess_clips", "extract_features", "train_codebook",
            "encode_tokens", "train_gpt", "sample_tokens", "vocode", "train_melception", "score_reference",
            "score_run", "aggregate_table", "report_results", "plot_loss_curve", "plot_training_overview",
            "listening_gallery"} == {p.parts[0] for p in benchmarks}


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
                           ("aggregate_table", ""), ("plot_loss_curve", run), ("listening_gallery", run),
                           ("plot_training_overview", ""), ("report_results", ""), ("all", "")]), result.stdout


# ---------------------------------------------------------------- the HTML report, checked in headless Chromium
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]
REPORT_CATEGORIES = {"Results", "Training curves", "Listening gallery"}


@pytest.fixture
def browser(tmp_path):
    """Debian's headless Chromium through chromedriver, with a fresh profile; skips when either is missing."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("the report check needs Chromium: apt-get install -y --no-install-recommends chromium "
                    "chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev dependency group")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    yield driver
    driver.quit()


def wait_for(driver, script: str, *args, timeout: float = 30):
    """What a JavaScript function body returns once it is neither null nor false (else an assertion error)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        value = d.execute_script(script, *args)
        return False if value is None or value is False else (value,)

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(ready)[0]
    except TimeoutException:
        raise AssertionError(f"not true within {timeout} s: {script}") from None


def show_result(driver, category: str, subcategory: str, path: str, entry: dict) -> None:
    """Click through the report's menu to a result and its eye button, as a reader does."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, "//nav//ol/li[1]/a").click()  # the breadcrumbs' home: back to the top menu
    driver.find_element(By.XPATH, f"//nav//a[normalize-space(.)='{category}']").click()
    if len(driver.execute_script("return Object.keys(categories[arguments[0]])", category)) > 1:
        driver.find_element(By.XPATH, f"//nav//a[normalize-space(.)='{subcategory}']").click()
    label = (entry["labels"] or {}).get("run", path)
    row = driver.find_element(By.XPATH, f"//nav//table/tbody/tr[td[1][normalize-space(.)='{label}']]")
    row.find_element(By.XPATH, "./td[last()]//a").click()


def check_image(driver, entry: dict) -> None:
    """The content pane shows the result's image, decoded (natural size > 0)."""
    size = wait_for(driver, """
        const img = Array.from(document.images).find(i => !i.closest('nav') && i.src === arguments[0]);
        return img && img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null;
    """, entry["data_uri"])
    assert size[1] > 0


def check_page(driver, entry: dict) -> dict:
    """The content pane's iframe holds the result's page; what it shows, once its images and audio loaded."""
    from selenium.webdriver.common.by import By

    wait_for(driver, "const f = document.querySelector('iframe'); return f && f.src === arguments[0];",
             entry["data_uri"])
    driver.switch_to.frame(driver.find_element(By.TAG_NAME, "iframe"))
    try:
        wait_for(driver, "return document.readyState === 'complete'")
        images = wait_for(driver, """
            const imgs = Array.from(document.images);
            return imgs.every(i => i.complete) ? imgs.map(i => [i.alt, i.naturalWidth, i.naturalHeight]) : null;
        """)
        audio = wait_for(driver, """
            const players = Array.from(document.querySelectorAll('audio'));
            return players.every(a => a.error || a.readyState >= 1)
                ? players.map(a => [a.className, a.error && a.error.code, a.readyState, a.duration]) : null;
        """) if driver.find_elements(By.TAG_NAME, "audio") else []
        shown = {"images": images, "audio": audio,
                 "table_runs": [tr.get_attribute("data-run") for tr in
                                driver.find_elements(By.CSS_SELECTOR, "table#results tbody tr")],
                 "videos": len(driver.find_elements(By.CSS_SELECTOR, "section.video"))}
    finally:
        driver.switch_to.default_content()
    return shown


def test_report_shows_table_curves_scores_and_gallery(demo, tmp_path, browser):
    """`snakemake --report` after the demo: one HTML file whose table, figures and listening gallery all load
    in Chromium (images decoded, audio players with a duration)."""
    workdir, _ = demo
    report = tmp_path / "report.html"
    start = time.monotonic()
    result = snakemake("--report", str(report), "--configfile", "config/demo.yaml", cwd=workdir, timeout=300)
    built = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-4000:]
    runs = list(pd.read_csv(workdir / "results/demo/table.csv")["run"])
    trained = [name for name in runs if (workdir / f"results/demo/runs/{name}/metrics.csv").exists()]
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    config = yaml.safe_load((workdir / "config/demo.yaml").read_text())
    gallery_videos = config.get("report", {}).get(
        "gallery_videos", schema["properties"]["report"]["properties"]["gallery_videos"]["default"])

    browser.get(report.as_uri())
    wait_for(browser, "return typeof app !== 'undefined' && typeof categories !== 'undefined'")
    categories = browser.execute_script("return categories")
    entries = browser.execute_script("return results")
    assert set(categories) == REPORT_CATEGORIES, categories
    shown = {"image": 0, "page": 0}
    for category, subcategories in categories.items():
        for subcategory, paths in subcategories.items():
            for path in paths:
                entry = entries[path]
                if entry["mime_type"] not in ("image/svg+xml", "text/html"):
                    continue  # table.csv: a download link
                show_result(browser, category, subcategory, path, entry)
                if entry["mime_type"] == "image/svg+xml":
                    check_image(browser, entry)
                    shown["image"] += 1
                    continue
                page = check_page(browser, entry)
                shown["page"] += 1
                assert all(width > 0 and height > 0 for _, width, height in page["images"]), (path, page["images"])
                if path.endswith("report/table.html"):
                    assert page["table_runs"] == runs, page["table_runs"]
                else:
                    run = entry["labels"]["run"]
                    assert run in entry["caption"], entry["caption"]  # the caption's template was filled in
                    vocoded = pd.read_csv(workdir / f"results/demo/runs/{run}/audio/index.tsv", sep="\t")
                    assert page["videos"] == min(gallery_videos, vocoded["clip"].nunique()) >= 1
                    assert len(page["images"]) == 3 * page["videos"]  # frame, real and generated spectrogram
                    players = sorted(kind for kind, *_ in page["audio"])
                    assert players == sorted(["generated", "real"] * page["videos"]), page["audio"]
                    assert all(error is None and ready >= 1 and duration > 0
                               for _, error, ready, duration in page["audio"]), (path, page["audio"])
    # the scores, one loss curve per trained run plus the overview, the learning rates; table and galleries
    assert shown == {"image": 1 + len(trained) + 2, "page": 1 + len(runs)}, shown
    print(f"report {report.stat().st_size / 1e6:.1f} MB built in {built:.1f} s; {shown}")


def test_melgan_vocoder_trains_and_vocodes_through_the_workflow(demo, tmp_path):
    """vocoder.kind melgan with source train: the demo's data trains a (tiny, short) MelGAN, and one run's
    samples are vocoded with it to 22,050 Hz wavs, for all validation videos (listen_videos 0)."""
    import soundfile

    workdir, _ = demo
    melgan = write_config(tmp_path / "melgan.yaml", workdir / "config/demo.yaml", lambda c: c.update(vocoder={
        "kind": "melgan", "source": "train", "listen_videos": 0,
        "train": {"ngf": 4, "n_residual_layers": 1, "steps": 20, "batch_size": 4, "segment_length": 4096}}))
    run = yaml.safe_load(melgan.read_text())["runs"][0]["name"]
    target = f"results/demo/runs/{run}/audio"
    plan = snakemake("-n", target, "--configfile", str(melgan), cwd=workdir)
    assert sorted(planned_jobs(plan.stdout)) == [("train_melgan", ""), ("vocode", run)], plan.stdout
    result = snakemake(target, "--cores", "2", "--configfile", str(melgan), cwd=workdir, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (workdir / "results/demo/vocoder/melgan.ckpt").is_file()
    index = pd.read_csv(workdir / target / "index.tsv", sep="\t")
    valid_videos = len((workdir / f"results/demo/runs/{run}/samples/videos.txt").read_text().splitlines())
    assert index["clip"].nunique() == valid_videos
    info = soundfile.info(str(workdir / target / index["file"].iloc[0]))
    assert info.samplerate == 22050 and info.channels == 1 and info.frames > 0
