"""The workflow as a user drives it: lint, planning, config errors, the demo end to end, exact reruns."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from workflow_helpers import (FIRST_SCREENS, REPORT_CATEGORIES, copy_workflow, headless_chromium, job_counts,
                              planned_jobs, snakemake, write_config)

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
    assert len(runs) == 21  # the 18 of the study's Table 1 and SpecVQGAN's three other released VAS transformers
    trained = [r for r in runs if r.get("source", "train") == "train"]
    assert counts["train_gpt"] == len(trained) == 17
    assert counts["sample_tokens"] == counts["vocode"] == 21
    assert counts["score_samples"] == 21 + 1  # and the codebook's reconstructions, the ceiling row
    assert counts["compare_with_baseline"] == 21  # every row but the baseline (the released no-feats model)
    conditioned = [r for r in runs if r["features"] != "none"]
    assert counts["compare_with_best"] == len(conditioned) == 20  # every conditioned run against the best one
    backbones = {r["features"] for r in runs} - {"none"}
    shards = study["shards"]["train"] + study["shards"]["valid"]
    assert counts["extract_features"] == len(backbones) * shards
    assert counts["preprocess_clips"] == shards
    assert counts["aggregate_table"] == 1
    # reproduction mode: the released codebook, transformer, MelGAN, Melception and its statistics are fetched
    # (MD5-checked, on the login node) instead of trained
    assert counts["fetch_checkpoint"] == 8 and "train_codebook" not in counts and "train_melception" not in counts
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
    assert list(table[table["kind"] == "run"]["run"]) == [r["name"] for r in demo_cfg["runs"]]
    for column in ["features", "scheduler", "batch", "gpus", "layers", "heads", "embed", "dropout", "weight_decay",
                   "epochs", "overfit", "KL", "FID", "train_clips", "valid_clips"]:
        assert column in table.columns
    runs = table[table["kind"] == "run"]
    assert set(runs["features"]) == {"ResNet18", "CLIP-ViT-B-32", "none"}
    assert table["kind"].str.split(":").str[0].value_counts().to_dict() == {"run": 3, "control": 2, "ceiling": 1}
    synthetic = demo_cfg["synthetic"]
    assert table["valid_clips"].iloc[0] == synthetic["classes"] * synthetic["valid_per_class"]
    assert table["train_clips"].iloc[0] == synthetic["classes"] * (synthetic["clips_per_class"]
                                                                  - synthetic["valid_per_class"])
    assert table[["KL", "FID"]].notna().all().all()
    assert ((table["KL_low"] <= table["KL"]) & (table["KL"] <= table["KL_high"])).all()
    # FID's intervals stay in FID's range (the 'centered' interval of a shuffled control reached below 0)
    assert ((0 < table["FID_low"]) & (table["FID_low"] <= table["FID"]) & (table["FID"] <= table["FID_high"])).all()
    assert (workdir / "results/demo/runs/no-feats/audio/index.tsv").exists()
    print(f"demo wall time {elapsed:.0f} s\n{table.to_string(index=False)}")


def test_the_demo_shows_the_science(demo):
    """The demo as a miniature of the study: the evaluator can judge what the codebook reproduces, the features
    carry the class, both conditioned runs beat "no feats" with the whole paired interval below 0, neither
    control with another video's features beats its own run, and the codebook's reconstructions (the ceiling)
    score better than every run."""
    import json

    workdir, _ = demo
    results = workdir / "results/demo"
    table = pd.read_csv(results / "table.csv").set_index("run")
    print(table[["KL", "dKL", "dKL_low", "dKL_high", "FID", "dFID", "class_acc", "probe_acc"]].to_string())
    runs = table[table["kind"] == "run"]
    for run in ("resnet18-s5", "clip-s5"):
        assert table.loc[run, "baseline"] == "no-feats"
        assert table.loc[run, "dKL_high"] < 0, table.loc[run]  # beats the baseline, the whole interval below 0
        assert table.loc[f"{run}+shuffled", "KL"] > table.loc[run, "KL"]  # the wrong picture does not help
        assert table.loc[run, "probe_acc"] >= 0.9  # the class is in the features
    assert table.loc["reconstruction", "KL"] < runs["KL"].min()
    assert table.loc["reconstruction", "class_acc"] >= 0.9  # the evaluator recognises what the codebook keeps
    assert json.loads((results / "eval/evaluator.json").read_text())["real_acc"] >= 0.9
    # the kept codebook uses nearly all its codes, and once it has used most of them it never collapses (a
    # PatchGAN phase used to drop it to 3 of 32 codes within an epoch)
    used = pd.read_csv(results / "codebook/metrics.csv")["val_codes_used"].to_numpy()
    summary = json.loads((results / "codebook/summary.json").read_text())
    assert summary["codes_used"] >= 0.85 * summary["codes"]
    warm = int(np.argmax(used >= 0.75 * summary["codes"]))
    assert used[warm] >= 0.75 * summary["codes"] and used[warm:].min() >= 0.6 * summary["codes"], list(used)
    # the report's front page answers the question: who beats the baseline, and whether the best run can be told
    # from the other conditioned one (its paired interval against the best)
    landing = (results / "report/landing.rst").read_text()
    assert "better than the baseline" in landing and "Ceiling" in landing and "Control" in landing
    versus = pd.read_csv(results / "comparisons.csv").query("relation == 'best'").set_index("row")
    conditioned = runs[runs["features"] != "none"]
    best = conditioned["KL"].idxmin()
    assert set(versus.index) == set(conditioned.index) and set(versus["against"]) == {best}
    sentence = re.search(r"The best run is \*\*(\S+)\*\* \(MKL [^)]*\)\.(.*)", landing)
    assert sentence and sentence.group(1) == best, landing
    for run in conditioned.index.drop(best):
        low, high = versus.loc[run, "dKL_low"], versus.loc[run, "dKL_high"]
        said = "**not separable**" if low <= 0 <= high else "worse than it" if low > 0 else None
        assert said and f"**{run}**" in sentence.group(2) and said in sentence.group(2), sentence.group(0)
        interval = f"{versus.loc[run, 'dKL']:+.3f} [{low:+.3f}, {high:+.3f}]"
        assert interval in sentence.group(2)


def test_bf16_sampling_scores_like_fp32_on_the_demo(demo):
    """sampling.precision is what the sampler computes in: each conditioned run sampled again in bf16 draws other
    tokens (any rounding change diverges a sampled sequence), and its paired dKL against the fp32 samples (same
    videos, same seeds) has an interval that covers 0: the faster arithmetic does not change the result."""
    workdir, _ = demo
    results = workdir / "results/demo"
    comparisons = pd.read_csv(results / "comparisons.csv")
    precision = comparisons[comparisons["relation"] == "bf16 vs fp32"].set_index("against")
    conditioned = [r["name"] for r in yaml.safe_load((workdir / "config/demo.yaml").read_text())["runs"]
                   if r["features"] != "none"]
    print(precision.to_string())
    assert sorted(precision.index) == sorted(conditioned)
    for run in conditioned:
        line = precision.loc[run]
        assert line["row"] == f"{run}+bf16" and line["videos"] > 0
        assert line["dKL_low"] <= 0 <= line["dKL_high"], line
        fp32 = np.load(results / f"runs/{run}/samples/tokens.npy")
        bf16 = np.load(results / f"runs/{run}/bf16/tokens.npy")
        assert fp32.shape == bf16.shape and (fp32 != bf16).any()
    table = pd.read_csv(results / "table.csv")
    assert not table["run"].str.contains("bf16").any()  # a comparison, not a row of the table
    assert "bf16 vs fp32" in (results / "report/landing.rst").read_text()


def test_the_same_machine_gives_the_same_table_twice(demo, tmp_path):
    """Everything after the features, redone for one run (training, sampling, the control, scoring, the
    comparisons), gives the same table, to the last digit."""
    workdir, _ = demo
    table = workdir / "results/demo/table.csv"
    before = table.read_bytes()
    run = yaml.safe_load((workdir / "config/demo.yaml").read_text())["runs"][1]["name"]
    shutil.rmtree(workdir / f"results/demo/runs/{run}/state")  # no resumable state: it trains from scratch
    result = snakemake("all", "--cores", "2", "--configfile", "config/demo.yaml", "--forcerun",
                       f"results/demo/runs/{run}/best.ckpt", cwd=workdir, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rule train_gpt" in result.stdout + result.stderr  # it really ran again
    assert table.read_bytes() == before


def test_every_rule_left_a_benchmark_and_a_log(demo):
    workdir, _ = demo
    logs = workdir / "logs/demo"
    benchmarks = {p.relative_to(logs / "benchmarks").with_suffix("") for p in (logs / "benchmarks").rglob("*.tsv")}
    logged = {p.relative_to(logs).with_suffix("") for p in logs.rglob("*.log")}
    assert benchmarks == logged
    assert {"make_synthetic_videos", "list_clips", "preprocess_clips", "extract_features", "feature_summary",
            "train_codebook", "encode_tokens", "train_gpt", "sample_tokens", "vocode", "train_melception",
            "score_reference", "reconstruct_validation", "score_samples", "compare_with_baseline",
            "compare_with_best", "compare_precision", "aggregate_table", "report_results", "report_landing", "plot_codebook", "plot_loss_curve",
            "plot_training_overview",
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
    # the run, its shuffled-features control (same transformer), its bf16 samples (controls.precision) and their
    # comparisons (with the baseline, bf16 vs fp32); every
    # conditioned run's comparison with the best (which run is best may change)
    samples, shuffled, bf16 = f"{run}/samples", f"{run}/shuffled", f"{run}/bf16"
    conditioned = [r["name"] for r in yaml.safe_load(changed.read_text())["runs"] if r["features"] != "none"]
    assert jobs == sorted([("train_gpt", run), ("sample_tokens", samples), ("sample_tokens", shuffled),
                           ("vocode", run), ("score_samples", samples), ("score_samples", shuffled),
                           ("compare_with_baseline", samples), ("compare_with_baseline", shuffled),
                           ("sample_tokens", bf16), ("score_samples", bf16), ("compare_precision", run),
                           *[("compare_with_best", name) for name in conditioned],
                           ("aggregate_table", ""), ("plot_loss_curve", run), ("listening_gallery", run),
                           ("plot_training_overview", ""), ("report_results", ""), ("report_landing", ""),
                           ("all", "")]), result.stdout


# ---------------------------------------------------------------- the HTML report, checked in headless Chromium
@pytest.fixture(scope="module")
def demo_report(demo):
    """`make report` after the shared demo, as a user runs it: the report it wrote and what it printed."""
    workdir, _ = demo
    shutil.copy(REPO / "Makefile", workdir / "Makefile")
    venv = workdir / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.executable).parents[1])  # the environment under test (make report's .venv)
    start = time.monotonic()
    result = subprocess.run(["make", "--no-print-directory", "report"], cwd=workdir, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"make report: {time.monotonic() - start:.1f} s")
    return workdir / "results/demo/report.html", result.stdout


@pytest.fixture
def browser(tmp_path):
    with headless_chromium(tmp_path) as driver:
        yield driver


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
                 "videos": len(driver.find_elements(By.CSS_SELECTOR, "section.video")),
                 "text": driver.execute_script("return document.body.innerText")}
    finally:
        driver.switch_to.default_content()
    return shown


def test_make_report_builds_the_report_and_prints_the_answer(demo_report):
    """`make report` (which `make demo` ends with): the report in the demo's results folder, then the answer, the
    runs best first and where the report is, printed."""
    report, printed = demo_report
    assert report.is_file() and report.stat().st_size > 100_000
    table = pd.read_csv(report.parent / "table.csv")
    assert "The answer (results/demo: Melception MKL" in printed
    assert re.search(r"runs? beats? the baseline no-feats in MKL", printed), printed
    runs = table[table["kind"] == "run"].sort_values("KL")
    listed = re.findall(r"^  (\S+)  +\d", printed, re.MULTILINE)
    assert listed == list(runs["run"]), printed  # every run, best first
    assert f"Report: {report.resolve()}" in printed and f"xdg-open results/demo/report.html" in printed
    assert printed.rstrip().endswith(report.resolve().as_uri())


def element_on_screen(driver, selector: str) -> dict:
    """Where an element is and whether a reader sees it: its box inside the viewport, and the element at its
    centre being it or inside it (not covered by another)."""
    return driver.execute_script("""
        const el = document.querySelector(arguments[0]);
        if (!el) return null;
        const r = el.getBoundingClientRect();
        const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, vw: innerWidth, vh: innerHeight,
                seen: r.width > 0 && r.height > 0 && r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight
                      && r.right <= innerWidth,
                uncovered: hit !== null && (hit === el || el.contains(hit)), text: el.innerText};
    """, selector)


def set_viewport(driver, width: int, height: int) -> None:
    """The page's viewport (innerWidth x innerHeight) exactly width x height."""
    driver.set_window_size(width, height)
    inner = driver.execute_script("return [innerWidth, innerHeight]")
    driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])
    if driver.execute_script("return [innerWidth, innerHeight]") != [width, height]:
        # headless Chromium may clamp the window to its virtual screen (1920x1080 less the window's frame): set the
        # viewport itself, as the browser's device emulation does
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    assert driver.execute_script("return [innerWidth, innerHeight]") == [width, height]


def test_report_shows_its_answer_on_the_first_screen(demo_report, browser):
    """On a 1366x768 laptop screen (and larger ones) the report opens on its title and the answer box, both
    inside the viewport and not covered (the template used to centre the description in a scrolling pane, its top
    out of reach, and draw the rule graph over its table)."""
    report, _ = demo_report
    for width, height in FIRST_SCREENS:
        set_viewport(browser, width, height)
        browser.get(report.as_uri())
        wait_for(browser, "return document.querySelector('div.verdict') !== null")
        wait_for(browser, "const g = document.querySelector('#rulegraph'); return g && g.querySelector('svg, canvas')")
        title, answer = element_on_screen(browser, "h1.title"), element_on_screen(browser, "div.verdict")
        assert "which visual features help" in title["text"]
        assert "beat the baseline" in answer["text"] and "The best run is" in answer["text"]
        for name, box in (("title", title), ("answer", answer)):
            assert box["seen"] and box["uncovered"], (width, height, name, box)
        # the rule graph follows the description, below it, not over it
        description = browser.execute_script(
            "return document.querySelector('h1.title').closest('.prose').getBoundingClientRect().bottom")
        graph = browser.execute_script("return document.querySelector('#rulegraph').getBoundingClientRect().top")
        assert graph >= description, (width, height, graph, description)


def test_report_shows_table_curves_scores_and_gallery(demo_report, browser):
    """`make report` after the demo: one HTML file whose table, figures, method page and listening gallery all
    load in Chromium (images decoded, audio players with a duration)."""
    report, _ = demo_report
    workdir = report.parents[2]
    rows = list(pd.read_csv(workdir / "results/demo/table.csv")["run"])  # the runs, their controls, the ceiling
    runs = [r["name"] for r in yaml.safe_load((workdir / "config/demo.yaml").read_text())["runs"]]
    trained = [name for name in runs if (workdir / f"results/demo/runs/{name}/metrics.csv").exists()]
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    config = yaml.safe_load((workdir / "config/demo.yaml").read_text())
    gallery_videos = config.get("report", {}).get(
        "gallery_videos", schema["properties"]["report"]["properties"]["gallery_videos"]["default"])

    browser.get(report.as_uri())
    wait_for(browser, "return typeof app !== 'undefined' && typeof categories !== 'undefined'")
    # the front page is the study's answer: every run against the baseline and the best, the ceiling, the controls
    wait_for(browser, "return document.body.innerText.includes('which visual features help')")
    front = browser.execute_script("return document.body.innerText")
    assert "better than the baseline" in front and "Ceiling" in front and "Control" in front
    assert "dKL vs best" in front
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
                    assert page["table_runs"] == rows, page["table_runs"]
                elif path.endswith("report/method.html"):
                    assert "Caveats" in page["text"] and "FID's intervals are wide" in page["text"]
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
    # the scores, one loss curve per trained run plus the overview, the learning rates, the codebook; the table, the
    # method page and one gallery per run
    assert shown == {"image": 1 + len(trained) + 2 + 1, "page": 2 + len(runs)}, shown

    print(f"report {report.stat().st_size / 1e6:.1f} MB; {shown}")


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


# ---------------------------------------------------------------- i2a generate on the demo's trained models
def i2a_command() -> str:
    """The `i2a` console script of this environment (pyproject's [project.scripts]; `uv sync` installs it)."""
    script = Path(sys.executable).with_name("i2a")
    assert script.is_file(), f"no {script}: reinstall the project (uv sync) to get the i2a console script"
    return str(script)


def i2a(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([i2a_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def valid_frames(demo, tmp_path_factory) -> dict[Path, str]:
    """The middle frame of every demo validation video as a PNG, with the video's class."""
    from PIL import Image

    from i2a.data.clips import Shard
    from i2a.report.gallery import middle_frame

    workdir, _ = demo
    folder = tmp_path_factory.mktemp("frames")
    frames = {}
    for shard in sorted((workdir / "results/demo/data/valid").glob("shard*")):
        shard = Shard(shard)
        for clip, cls, video in zip(shard.clips, shard.classes, shard.video_paths()):
            path = folder / f"{clip.replace('/', '_')}.png"
            Image.fromarray(middle_frame(video)).save(path)
            frames[path] = cls
    return frames


@pytest.mark.parametrize("run", ["resnet18-s5", "clip-s5"])
def test_a_picture_generates_the_sound_of_its_class(demo, valid_frames, run, tmp_path, monkeypatch):
    """The middle frame of each validation video, given as an image: the demo's Melception hears that video's
    class in the generated spectrograms far above chance (4 classes: 25%)."""
    from i2a.evaluation.scoring import load_evaluator
    from i2a.models.melception import melception_outputs
    from i2a.sampling.loading import load_run_model
    from i2a.sampling.loop import generate
    from i2a.spec.config import load_config

    workdir, _ = demo
    monkeypatch.chdir(workdir)
    model = load_run_model(load_config("config/demo.yaml"), run, "cpu")
    assert model.S == 5 and model.spec.features in ("resnet18", "clip_vit_b32")  # what the checkpoint says
    results = generate(model, list(valid_frames), tmp_path, samples=4, seed=0, keep_mels=True,
                       progress=False)
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    evaluator, stats = load_evaluator(workdir / "results/demo/eval/melception.ckpt")
    mels = np.concatenate([r.mels for r in results])
    logits = melception_outputs(evaluator, mels, stats)["logits"].reshape(len(results), 4, -1)
    heard = np.asarray(evaluator.class_names)[logits.argmax(-1)]
    shown = np.asarray([valid_frames[r.path] for r in results])[:, None]
    rate, chance = float((heard == shown).mean()), 1 / len(evaluator.class_names)
    print(f"{run}: {100 * rate:.1f}% of the sounds generated from a picture are its class (chance "
          f"{100 * chance:.0f}%, {len(results)} pictures x 4 samples)")
    assert rate >= 0.6 > 2 * chance


def test_the_no_feats_run_does_not_look_at_the_picture(demo, valid_frames, tmp_path):
    workdir, _ = demo
    first, other = list(valid_frames)[0], list(valid_frames)[-1]
    assert valid_frames[first] != valid_frames[other]
    for image, out in ((first, "a"), (other, "b")):
        result = i2a("generate", "--config", "config/demo.yaml", "--run", "no-feats", "--out", str(tmp_path / out),
                     "--samples", "2", "--seed", "3", str(image), cwd=workdir)
        assert result.returncode == 0, result.stderr[-3000:]
    for k in range(2):
        assert (tmp_path / f"a/{first.stem}_sample{k:02d}.wav").read_bytes() == \
            (tmp_path / f"b/{other.stem}_sample{k:02d}.wav").read_bytes()


def test_the_same_seed_gives_the_same_wav(demo, valid_frames, tmp_path):
    workdir, _ = demo
    image = list(valid_frames)[0]
    for out, seed in (("first", "7"), ("again", "7"), ("other", "8")):
        result = i2a("generate", "--config", "config/demo.yaml", "--run", "clip-s5", "--out", str(tmp_path / out),
                     "--seed", seed, str(image), cwd=workdir)
        assert result.returncode == 0, result.stderr[-3000:]
    wav = f"{image.stem}_sample00.wav"
    assert (tmp_path / "first" / wav).read_bytes() == (tmp_path / "again" / wav).read_bytes()
    assert (tmp_path / "first" / wav).read_bytes() != (tmp_path / "other" / wav).read_bytes()


def test_a_folder_with_a_corrupt_file_generates_the_rest_and_fails(demo, valid_frames, tmp_path):
    """The README's example: pictures and a video in a folder, one file corrupt. The others are generated (a
    video also as an mp4 with the generated sound), the corrupt one is named, and the exit status is non-zero."""
    import soundfile

    from i2a.data.media import probe_clip

    workdir, _ = demo
    folder = tmp_path / "mine"
    folder.mkdir()
    image = list(valid_frames)[0]
    shutil.copy(image, folder / "photo.png")
    shutil.copy(sorted((workdir / "results/demo/data/valid").glob("shard*/video/*.mp4"))[0], folder / "clip.mp4")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    out = tmp_path / "generated"
    result = i2a("generate", "--config", "config/demo.yaml", "--run", "resnet18-s5", "--out", str(out),
                 "--samples", "2", "--mux", str(folder), cwd=workdir)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "broken.jpg: not a readable image" in result.stderr and "2 of 3 inputs generated" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{stem}_sample{k:02d}.wav" for stem in ("clip", "photo") for k in range(2)]
        + ["clip_spectrogram.png", "photo_spectrogram.png", "clip_sample00.mp4", "clip_sample01.mp4"]
        + [".i2a-generate.json"])  # generate's list of the files it wrote (it never overwrites another's)
    info = soundfile.info(str(out / "photo_sample00.wav"))
    assert info.samplerate == 22050 and info.channels == 1 and abs(info.duration - 160 * 256 / 22050) < 0.01
    muxed = probe_clip(out / "clip_sample00.mp4")
    assert muxed["orig_sample_rate"] == 22050 and abs(muxed["container_duration"] - 2.0) < 0.1
