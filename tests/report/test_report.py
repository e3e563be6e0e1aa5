"""The report's pieces: figures as deterministic SVG, the results table page, and the listening gallery that
embeds frames, spectrograms and sounds in one page."""
import base64
import io
import re
import xml.etree.ElementTree as ET

import matplotlib
import numpy as np
import pandas as pd
import pytest
import soundfile
from PIL import Image

from i2a.data.clips import write_tsv
from i2a.report.figures import loss_figure, overview_figure, read_training_curves, save_svg, scores_figure
from i2a.report.gallery import (collect_gallery, gallery_clips, gallery_html, middle_frame, ogg_bytes, png_bytes,
                                spectrogram_png)
from i2a.report.pages import table_html
from media_files import write_streams

RATE = 22050


def curves(epochs=6, lr=1e-3, seed=0):
    rng = np.random.default_rng(seed)
    val = 2.0 - 0.2 * np.arange(epochs) + 0.05 * np.arange(epochs) ** 2 + 0.01 * rng.random(epochs)
    return pd.DataFrame({"epoch": np.arange(epochs), "train_loss": 2.5 - 0.3 * np.arange(epochs), "val_loss": val,
                         "lr": np.full(epochs, lr)})


def table(seed_sd=False):
    rows = pd.DataFrame({
        "run": ["r18", "clip"], "features": ["ResNet18", "CLIP-ViT-B-32"], "scheduler": ["none", "ReduceLROnPlateau"],
        "batch": [8, 16], "gpus": [1, 2], "layers": [2, 2], "heads": [4, 4], "embed": [64, 64],
        "dropout": [0.1, 0.0], "weight_decay": [0.01, 0.1], "epochs": [3, np.nan], "overfit": [True, None],
        "KL": [3.5, 3.25], "KL_low": [2.5, 2.0], "KL_high": [4.5, 4.0],
        "FID": [55.0, 50.0], "FID_low": [45.0, 40.0], "FID_high": [70.0, 60.0],
        "videos": [16, 16], "samples_per_video": [4, 4], "seeds": [2 if seed_sd else 1] * 2})
    if seed_sd:
        rows["KL_seed_sd"], rows["FID_seed_sd"] = [0.1, 0.2], [1.5, 2.5]
    return rows


def svg_texts(path):
    """The strings matplotlib drew (it writes each text as paths after a comment holding the string)."""
    ET.parse(path)  # well-formed
    return set(re.findall(r"<!-- (.*?) -->", path.read_text()))


# ---------------------------------------------------------------- figures
def test_read_training_curves_sorts_by_epoch_and_names_missing_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    curves().iloc[::-1].to_csv(path, index=False)
    assert list(read_training_curves(path)["epoch"]) == list(range(6))
    curves().drop(columns="lr").to_csv(path, index=False)
    with pytest.raises(ValueError, match="lr"):
        read_training_curves(path)


def test_loss_figure_marks_the_best_validation_epoch_and_is_byte_identical_twice(tmp_path):
    frame = curves()
    best = int(frame["val_loss"].idxmin())
    first = save_svg(loss_figure("r18", frame), tmp_path / "a.svg")
    second = save_svg(loss_figure("r18", frame), tmp_path / "b.svg")
    assert first.read_bytes() == second.read_bytes()
    texts = svg_texts(first)
    assert {"r18", "epoch", "validation loss", "train loss"} <= texts
    # epochs counted from 1, as the table counts them (metrics.csv counts from 0)
    assert f"best: epoch {best + 1}, {frame['val_loss'][best]:.3f}" in texts


def test_overview_figure_draws_every_run(tmp_path):
    runs = {"r18": curves(lr=1e-3), "clip": curves(epochs=9, lr=2e-3, seed=1), "none": curves(lr=1e-3)}
    svg = save_svg(overview_figure(runs, "lr", "learning rate", log_y=True), tmp_path / "lr.svg")
    assert {"r18", "clip", "none", "learning rate"} <= svg_texts(svg)


@pytest.mark.parametrize("seed_sd", [False, True])
def test_scores_figure_shows_both_metrics_per_run(tmp_path, seed_sd):
    svg = save_svg(scores_figure(table(seed_sd)), tmp_path / "scores.svg")
    texts = svg_texts(svg)
    assert {"r18", "clip", "MKL (lower is better)", "FID (lower is better)", "95% interval (videos)"} <= texts
    assert ("± sd over seeds" in texts) == seed_sd


# ---------------------------------------------------------------- the table page
def test_table_html_has_a_row_per_run_with_intervals():
    page = table_html(table(seed_sd=True))
    assert re.findall(r'<tr data-run="([^"]*)">', page) == ["r18", "clip"]
    assert "3.5 [2.5, 4.5] ± 0.1" in page and "50 [40, 60] ± 2.5" in page
    assert "<td>yes</td>" in page and "<td>–</td>" in page  # overfit; a released run has no epochs
    assert "16 × 4 × 2" in page


def test_table_html_escapes_names():
    rows = table()
    rows.loc[0, "run"] = 'a<b>&"c"'
    page = table_html(rows)
    assert 'data-run="a&lt;b&gt;&amp;&quot;c&quot;"' in page and "<b>&" not in page


# ---------------------------------------------------------------- gallery pieces
def test_spectrogram_png_puts_low_frequencies_at_the_bottom_in_the_colour_map():
    mel = np.zeros((80, 10), np.float32)
    mel[0] = 1.0  # the lowest mel bin loud
    mel[40, 3] = 0.5
    image = np.asarray(Image.open(io.BytesIO(spectrogram_png(mel, cmap="magma"))).convert("RGB"))
    assert image.shape == (80, 10, 3)
    magma = matplotlib.colormaps["magma"]
    for row, value in ((79, 1.0), (0, 0.0), (39, 0.5)):
        column = 3 if value == 0.5 else 0
        expected = (np.asarray(magma(value)[:3]) * 255).round()
        assert np.abs(image[row, column] - expected).max() <= 1, (row, image[row, column], expected)


def test_png_and_ogg_round_trip():
    image = (np.arange(12 * 20 * 3) % 256).astype(np.uint8).reshape(12, 20, 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(image)))), image)
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE).astype(np.float32)
    encoded = ogg_bytes(tone, RATE)
    decoded, rate = soundfile.read(io.BytesIO(encoded), dtype="float32")
    assert rate == RATE and abs(len(decoded) - RATE) < 64
    assert len(encoded) < tone.size * 2 / 4  # much smaller than a 16-bit wav


def test_middle_frame_is_the_frame_half_way(tmp_path):
    frames = np.stack([np.full((32, 48, 3), 20 * t, np.uint8) for t in range(10)])  # 1 s at 10 fps, brightening
    video = tmp_path / "v.mp4"
    write_streams(video, frames=frames, fps=10)
    frame = middle_frame(video)
    assert frame.shape == (32, 48, 3)
    assert abs(float(frame.mean()) - 100) < 8  # frame 5 of 0..9


def test_gallery_clips_takes_the_first_videos_and_their_first_sample():
    index = pd.DataFrame({"file": [f"{v:04d}_sample{k:02d}.wav" for v in range(3) for k in (1, 0, 10)],
                          "clip": [f"c{v}" for v in range(3) for _ in range(3)],
                          "sample": [str(k) for _ in range(3) for k in (1, 0, 10)]})
    assert gallery_clips(index, 2) == [("c0", 0, "0000_sample00.wav"), ("c1", 0, "0001_sample00.wav")]
    assert len(gallery_clips(index, 10)) == 3


def write_valid_shard(root, clips, frames=24, seed=0):
    """A preprocessed validation shard: clips.tsv (one unusable clip first), mels, wavs and cut videos."""
    rng = np.random.default_rng(seed)
    rows = [{"clip": "broken/x", "class": "broken", "status": "skipped", "reason": "no audio", "file": "00000"}]
    (root / "wav").mkdir(parents=True)
    (root / "video").mkdir()
    for k, clip in enumerate(clips, start=1):
        name = f"{k:05d}"
        rows.append({"clip": clip, "class": clip.split("/")[0], "status": "ok", "reason": "", "file": name})
        soundfile.write(root / "wav" / f"{name}.wav", 0.1 * rng.standard_normal(RATE // 2).astype(np.float32), RATE)
        write_streams(root / "video" / f"{name}.mp4", frames=np.full((4, 32, 48, 3), 60 * k, np.uint8), fps=8)
    np.save(root / "mels.npy", rng.random((len(clips), 80, frames)).astype(np.float32))
    write_tsv(pd.DataFrame(rows), root / "clips.tsv")


def decode_data_uri(uri):
    mime, payload = re.fullmatch(r"data:([^;]+);base64,(.*)", uri).groups()
    return mime, base64.b64decode(payload)


def test_gallery_embeds_frame_spectrograms_and_both_sounds(tmp_path):
    clips = ["dog/d1", "dog/d2", "drum/<&>"]
    write_valid_shard(tmp_path / "shard000", clips[:2])
    write_valid_shard(tmp_path / "shard001", clips[2:], seed=1)
    generated = np.random.default_rng(2).random((3, 2, 80, 20)).astype(np.float16)  # (videos, samples, mels, T)
    np.save(tmp_path / "mels.npy", generated)
    (tmp_path / "videos.txt").write_text("\n".join(clips) + "\n")
    audio = tmp_path / "audio"
    audio.mkdir()
    index = []
    for v, clip in enumerate(clips):
        for k in range(2):
            soundfile.write(audio / f"{v:04d}_sample{k:02d}.wav", np.zeros(RATE // 4, np.float32), RATE)
            index.append({"file": f"{v:04d}_sample{k:02d}.wav", "clip": clip, "sample": k})
    write_tsv(pd.DataFrame(index), audio / "index.tsv")

    entries = collect_gallery(audio, tmp_path / "mels.npy", tmp_path / "videos.txt",
                              [tmp_path / "shard000", tmp_path / "shard001"], n_videos=5)
    assert [(e.clip, e.label, e.sample) for e in entries] == [("dog/d1", "dog", 0), ("dog/d2", "dog", 0),
                                                               ("drum/<&>", "drum", 0)]
    frame = np.asarray(Image.open(io.BytesIO(entries[1].frame_png)))
    assert frame.shape == (32, 48, 3) and abs(float(frame.mean()) - 120) < 8  # the second clip's video
    levels = np.asarray(Image.open(io.BytesIO(entries[0].real_mel_png)))  # palette indices: the quantised mel
    real_mel = np.load(tmp_path / "shard000" / "mels.npy")[0, :, 2:22]  # centre crop of 24 frames to the model's 20
    assert np.array_equal(levels[::-1], np.minimum((real_mel * 256).astype(int), 255))
    generated_levels = np.asarray(Image.open(io.BytesIO(entries[2].generated_mel_png)))[::-1]
    assert np.array_equal(generated_levels, np.minimum((generated[2, 0].astype(np.float32) * 256).astype(int), 255))

    page = gallery_html("r18", entries, vocoder="Griffin-Lim")
    assert page.count('<section class="video"') == 3 and "drum/&lt;&amp;&gt;" in page
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    players = re.findall(r'<audio controls preload="auto" class="(real|generated)" src="([^"]+)"', page)
    assert len(images) == 9 and sorted(kind for kind, _ in players) == ["generated"] * 3 + ["real"] * 3
    for uri in images:
        mime, payload = decode_data_uri(uri)
        assert mime == "image/png" and Image.open(io.BytesIO(payload)).size[0] > 0
    durations = {}
    for kind, uri in players:
        mime, payload = decode_data_uri(uri)
        assert mime == "audio/ogg"
        info = soundfile.info(io.BytesIO(payload))
        durations.setdefault(kind, set()).add(round(info.duration, 2))
    assert durations == {"real": {0.5}, "generated": {0.25}}

    fewer = collect_gallery(audio, tmp_path / "mels.npy", tmp_path / "videos.txt",
                            [tmp_path / "shard000", tmp_path / "shard001"], n_videos=1)
    assert [e.clip for e in fewer] == ["dog/d1"]


# ---------------------------------------------------------------- the landing page and the method page
def study(clip_vs_best=(0.05, -0.02, 0.12)):
    """A table of three runs (two conditioned, the no-feats baseline), a control and the ceiling, and its paired
    comparisons: every row against the baseline, the conditioned runs against the best (r18). `clip_vs_best`:
    clip's dKL against r18 (value, low, high)."""
    def row(run, kind, features, kl, d=None, fid=30.0, dfid=None):
        d, dfid = d or (None, None, None), dfid or (None, None, None)
        return {"run": run, "kind": kind, "features": features, "KL": kl, "KL_low": 0.8 * kl, "KL_high": 1.3 * kl,
                "dKL": d[0], "dKL_low": d[1], "dKL_high": d[2], "FID": fid, "FID_low": fid / 2, "FID_high": fid * 1.6,
                "dFID": dfid[0], "dFID_low": dfid[1], "dFID_high": dfid[2], "class_acc": 0.9,
                "baseline": None if d[0] is None else "none", "videos": 24, "samples_per_video": 4, "seeds": 2}

    table = pd.DataFrame([
        row("r18", "run", "ResNet18", 0.20, (-5.0, -5.6, -4.4), 27.0, (-3.0, -9.0, 4.0)),
        row("clip", "run", "CLIP", 0.25, (-4.95, -5.5, -4.3), 26.0, (-4.0, -10.0, 2.0)),
        row("none", "run", "none", 5.2),
        row("r18+shuffled", "control: features of another video", "ResNet18", 7.0, (1.8, 0.5, 3.2)),
        row("reconstruction", "ceiling: codebook reconstruction", "codebook", 0.01, (-5.2, -6.0, -4.5)),
    ])
    lines = [{"row": r["run"], "against": "none", "relation": "baseline", **{k: r[k] for k in (
        "dKL", "dKL_low", "dKL_high", "dFID", "dFID_low", "dFID_high")}, "videos": 24}
        for _, r in table.iterrows() if r["run"] != "none"]
    lines.append({"row": "r18", "against": "r18", "relation": "best", "dKL": 0.0, "dKL_low": 0.0, "dKL_high": 0.0,
                  "dFID": 0.0, "dFID_low": 0.0, "dFID_high": 0.0, "videos": 24})
    lines.append({"row": "clip", "against": "r18", "relation": "best", "dKL": clip_vs_best[0],
                  "dKL_low": clip_vs_best[1], "dKL_high": clip_vs_best[2], "dFID": -1.0, "dFID_low": -7.0,
                  "dFID_high": 5.0, "videos": 24})
    return table, pd.DataFrame(lines)


def render_rst(text: str) -> str:
    """The landing page as Snakemake renders it: docutils' html_body, with the link targets Snakemake appends."""
    from docutils.core import publish_parts

    return publish_parts(text + "\n\n.. _method.html: javascript:void(0)\n", writer="html",
                         settings_overrides={"report_level": 2, "halt_level": 2})["html_body"]


def test_the_landing_page_opens_with_the_answer_and_says_not_separable():
    from i2a.report.landing import TITLE, landing_rst

    table, comparisons = study()
    page = render_rst(landing_rst(table, comparisons, "the demo", {"real_acc": 1.0}, {}, None))
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page))
    # the title, then the answer box before anything else: who beats the baseline by how much, with intervals
    answer = page.split('<div class="verdict docutils container">', 1)[1].split("</div>", 1)[0]
    assert page.index(TITLE) < page.index('class="verdict') < page.index("Every run, best first")
    answer_text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", answer))
    assert "2 of 2 runs beat the baseline none in MKL: r18 by 5.000 [4.400, 5.600]; clip by 4.950 [4.300, 5.500]" \
        in answer_text
    assert "The best run is r18 (MKL 0.200 [0.160, 0.260]). clip is not separable from it " \
           "(dKL +0.050 [-0.020, +0.120]: the interval covers 0)." in answer_text
    assert 'href="javascript:void(0)">Method and caveats</a>' in answer  # the method page, one click away
    # every run best first, with both paired differences and what they say
    assert "clip CLIP 0.250 [0.200, 0.325] -4.950 [-5.500, -4.300] +0.050 [-0.020, +0.120]" in text
    assert "better than the baseline; not separable from the best" in text
    assert "better than the baseline; the best" in text and "baseline" in text
    assert "Ceiling" in text and "Control" in text


def test_the_landing_page_says_which_run_is_worse_than_the_best():
    from i2a.report.landing import answer_lines, runs_rows

    table, comparisons = study(clip_vs_best=(0.05, 0.01, 0.09))
    lines = answer_lines(table, comparisons, strong="")
    assert lines[-1] == "The best run is r18 (MKL 0.200 [0.160, 0.260]). clip is worse than it (dKL +0.050 " \
                        "[+0.010, +0.090])."
    assert [r[0] for r in runs_rows(table, comparisons)] == ["r18", "clip", "none"]  # best first
    assert runs_rows(table, comparisons)[1][-1] == "better than the baseline; worse than the best"


def test_the_landing_page_lists_other_paired_controls():
    """A control kind compared with its own run (as `<run>+bf16` with its fp32 run) shows with its verdict."""
    from i2a.report.landing import landing_rst

    table, comparisons = study()
    extra = {"row": "clip+bf16", "against": "clip", "relation": "fp32", "dKL": 0.01, "dKL_low": -0.02,
             "dKL_high": 0.04, "dFID": 0.2, "dFID_low": -1.0, "dFID_high": 1.5, "videos": 24}
    comparisons = pd.concat([comparisons, pd.DataFrame([extra])], ignore_index=True)
    text = re.sub(r"<[^>]+>", "", render_rst(landing_rst(table, comparisons, "the demo", {}, {}, None)))
    assert "clip+bf16 against clip (fp32): dKL +0.010 [-0.020, +0.040], dFID +0.2 [-1.0, +1.5]: not separable" \
        in re.sub(r"\s+", " ", text)


def test_the_method_page_says_how_wide_fid_intervals_are():
    from i2a.report.landing import method_html

    table, comparisons = study()
    page = method_html(table, comparisons, "the built-in synthetic demo", n_boot=200)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    # FID_high / FID_low is 3.2 for every row here, (high - low) / value 110%
    assert "At 24 validation videos FID's intervals are wide: their upper end is a median 3.2 times their lower " \
           "end, a width of 110% of the value" in text
    assert "3 of the 3 paired dFID intervals cover 0" in text  # the conditioned runs', the best's own line not counted
    assert "200 replicates" in text and "log scale" in text and "synthetic demo" in text
    assert "chosen on the same videos" in text
