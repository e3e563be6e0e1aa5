"""Pieces of the study's `snakemake --report`: training-curve and score figures (SVG), the results table and a
listening gallery as self-contained HTML pages (images and audio embedded as data: URIs), so that the report
stays one file that opens anywhere without a server."""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import av
import matplotlib
import numpy as np
import pandas as pd
import soundfile
from matplotlib.figure import Figure
from PIL import Image

from i2a.dataset import Shard, read_clip_table
from i2a.mel import center_crop

FRAME_WIDTH = 256  # pixels of the gallery's video frames: enough to recognise the scene, small in the report
LINE_STYLES = ["-", "--", ":", "-."]
SVG_STYLE = {"svg.hashsalt": "i2a-report", "svg.fonttype": "path"}  # same figure, same bytes: reruns are exact


# ---------------------------------------------------------------- figures
def read_training_curves(path: str | Path) -> pd.DataFrame:
    """A run's per-epoch metrics.csv (epoch, train_loss, val_loss, lr), sorted by epoch."""
    curves = pd.read_csv(path)
    missing = {"epoch", "train_loss", "val_loss", "lr"} - set(curves.columns)
    if missing:
        raise ValueError(f"{path}: no column(s) {sorted(missing)}")
    if curves.empty:
        raise ValueError(f"{path} has no epochs")
    return curves.sort_values("epoch").reset_index(drop=True)


def save_svg(fig: Figure, path: str | Path) -> Path:
    """Write a figure as SVG without a timestamp, so an unchanged figure is byte-identical."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(SVG_STYLE):
        fig.savefig(path, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return path


def loss_figure(run: str, curves: pd.DataFrame) -> Figure:
    """Training and validation loss of one run per epoch, the best validation epoch marked."""
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(curves["epoch"], curves["train_loss"], label="train loss", color="tab:blue", alpha=0.7)
    ax.plot(curves["epoch"], curves["val_loss"], label="validation loss", color="tab:orange", marker=".")
    best = curves.loc[curves["val_loss"].idxmin()]
    ax.axvline(best["epoch"], color="grey", linestyle="--", linewidth=1)
    ax.plot([best["epoch"]], [best["val_loss"]], "o", color="tab:red",
            label=f"best: epoch {int(best['epoch'])}, {best['val_loss']:.3f}")
    ax.set(title=run, xlabel="epoch", ylabel="cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def overview_figure(curves: dict[str, pd.DataFrame], column: str, ylabel: str, log_y: bool = False) -> Figure:
    """One column of every run's metrics against epoch, one line per run, to compare runs."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10"]
    for k, (run, frame) in enumerate(curves.items()):
        # colour and dash pattern both vary, so that runs with the same curve (a constant LR) stay visible
        ax.plot(frame["epoch"], frame[column], label=run, color=colors(k % 10), linestyle=LINE_STYLES[k % 4])
    if log_y:
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    fig.legend(fontsize="small", ncol=1 + len(curves) // 12, loc="outside right upper")
    return fig


def scores_figure(table: pd.DataFrame) -> Figure:
    """MKL and FID of every run with their 95% bootstrap intervals (and the spread over sampling seeds)."""
    runs = list(table["run"])
    y = np.arange(len(runs))[::-1]
    fig = Figure(figsize=(9, 1.5 + 0.35 * len(runs)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric, title in zip(axes, ("KL", "FID"), ("MKL (lower is better)", "FID (lower is better)")):
        value = table[metric].to_numpy(float)
        error = np.stack([value - table[f"{metric}_low"].to_numpy(float),
                          table[f"{metric}_high"].to_numpy(float) - value])
        ax.errorbar(value, y, xerr=error, fmt="o", color="tab:blue", capsize=3, label="95% interval (videos)")
        seed_sd = f"{metric}_seed_sd"
        if seed_sd in table and table[seed_sd].notna().any():
            ax.errorbar(value, y, xerr=table[seed_sd].fillna(0).to_numpy(float), fmt="none", color="tab:orange",
                        linewidth=3, label="± sd over seeds")
        ax.set(title=title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, runs)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize="small", ncol=2, loc="outside lower center")
    return fig


# ---------------------------------------------------------------- the results table
TABLE_COLUMNS = [("run", "run"), ("features", "features"), ("scheduler", "LR scheduler"), ("batch", "batch"),
                 ("gpus", "GPUs"), ("layers", "layers"), ("heads", "heads"), ("embed", "embed"),
                 ("dropout", "dropout"), ("decay", "decay"), ("epochs", "epochs"), ("overfit", "overfit?")]

PAGE_STYLE = """
body { font-family: sans-serif; margin: 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #eee; }
td.name { text-align: left; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
.video { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; border-top: 1px solid #ccc;
         padding: 0.8em 0; }
.video h3 { flex-basis: 100%; margin: 0; }
.video figure { margin: 0; }
.video figcaption { font-size: 0.85em; color: #444; max-width: 360px; }
.spectrogram { width: 360px; height: 120px; image-rendering: pixelated; display: block; }
audio { width: 360px; display: block; }
"""


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return html.escape(str(value))


def _with_interval(row: pd.Series, metric: str) -> str:
    text = f"{row[metric]:.3g} [{row[f'{metric}_low']:.3g}, {row[f'{metric}_high']:.3g}]"
    seed_sd = row.get(f"{metric}_seed_sd")
    if seed_sd is not None and not pd.isna(seed_sd):
        text += f" ± {seed_sd:.2g}"
    return text


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{PAGE_STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n")


def table_html(table: pd.DataFrame) -> str:
    """table.csv as a page: one row per run, hyperparameters, MKL and FID with their 95% intervals."""
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in TABLE_COLUMNS)
    head += "<th>MKL [95%]</th><th>FID [95%]</th><th>videos × samples × seeds</th>"
    rows = []
    for _, row in table.iterrows():
        cells = [f'<td class="name">{_cell(row[c])}</td>' if c in ("run", "features", "scheduler")
                 else f"<td>{_cell(row.get(c))}</td>" for c, _ in TABLE_COLUMNS]
        cells += [f"<td>{_with_interval(row, 'KL')}</td>", f"<td>{_with_interval(row, 'FID')}</td>",
                  f"<td>{row['videos']} × {row['samples_per_video']} × {row['seeds']}</td>"]
        rows.append(f'<tr data-run="{html.escape(str(row["run"]))}">{"".join(cells)}</tr>')
    note = ("<p class=\"note\">Melception MKL and FID of the generated validation spectrograms; brackets: 95% "
            "bootstrap interval over validation videos; ± the standard deviation over sampling seeds where there "
            "are several. \"epochs\": epoch of the best validation loss; \"overfit?\": validation loss rose after "
            "it.</p>")
    body = f'<table id="results">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows) + "\n</tbody>\n</table>"
    return _page("Results", note + "\n" + body)


# ---------------------------------------------------------------- the listening gallery
def data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3|4) uint8 image as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def spectrogram_png(mel01: np.ndarray, cmap: str = "magma") -> bytes:
    """A (n_mels, T) mel in [0, 1] as a colour-mapped PNG, low frequencies at the bottom.

    A palette image (the colour map's 256 entries, looked up as matplotlib does) is half the size of RGB.
    """
    colormap = matplotlib.colormaps[cmap].resampled(256)
    levels = np.minimum((np.clip(np.asarray(mel01, dtype=np.float32), 0.0, 1.0) * 256).astype(np.int32), 255)
    image = Image.fromarray(levels[::-1].astype(np.uint8), mode="P")
    image.putpalette((colormap(np.arange(256))[:, :3] * 255).round().astype(np.uint8).ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def thumbnail(frame: np.ndarray, width: int = FRAME_WIDTH) -> np.ndarray:
    image = Image.fromarray(frame)
    if image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.LANCZOS)
    return np.asarray(image)


def middle_frame(video: str | Path) -> np.ndarray:
    """The (H, W, 3) RGB frame at the middle of a video, decoding only up to it."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        if stream.duration is not None:
            middle = float(stream.duration * stream.time_base) / 2
        else:
            middle = (container.duration or 0) / av.time_base / 2
        frame = None
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= middle:
                break
    if frame is None:
        raise ValueError(f"{video}: no decodable video frame")
    return frame.to_ndarray(format="rgb24")


def ogg_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """Mono samples as Ogg Vorbis: a tenth of a wav's size, which keeps a report of many clips loadable."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), sample_rate,
                    format="OGG", subtype="VORBIS")
    return buffer.getvalue()


def audio_file_as_ogg(path: str | Path) -> bytes:
    wav, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    return ogg_bytes(wav if wav.ndim == 1 else wav.mean(axis=1), rate)


@dataclass
class GalleryEntry:
    """One validation video of a run's gallery: what it shows, what the model made, and the real sound."""

    clip: str
    label: str
    sample: int
    frame_png: bytes
    real_mel_png: bytes
    generated_mel_png: bytes
    real_audio: bytes
    generated_audio: bytes


@dataclass
class RealClip:
    """Where a validation clip's preprocessed files are: its shard and its row in the shard's mels."""

    shard: Shard
    row: int

    @property
    def video(self) -> Path:
        return self.shard.video_paths()[self.row]

    @property
    def wav(self) -> Path:
        return self.shard.wav_paths()[self.row]

    @property
    def label(self) -> str:
        return self.shard.classes[self.row]

    def mel(self) -> np.ndarray:
        return np.asarray(self.shard.mels()[self.row], dtype=np.float32)


def real_clips(shard_dirs) -> dict[str, RealClip]:
    """Every usable clip of the validation shards by name."""
    clips = {}
    for directory in shard_dirs:
        shard = Shard(Path(directory))
        for row, clip in enumerate(shard.clips):
            clips[clip] = RealClip(shard, row)
    return clips


def gallery_clips(audio_index: pd.DataFrame, n_videos: int) -> list[tuple[str, int, str]]:
    """(clip, sample, wav file) for the first vocoded sample of the first n vocoded videos, in sampling order."""
    index = audio_index.assign(sample=audio_index["sample"].astype(int))
    first = index.sort_values("sample", kind="stable").drop_duplicates("clip").set_index("clip")
    clips = list(dict.fromkeys(index["clip"]))[:n_videos]
    return [(clip, int(first.at[clip, "sample"]), first.at[clip, "file"]) for clip in clips]


def collect_gallery(audio_dir: str | Path, mels_path: str | Path, videos_path: str | Path, valid_shards,
                    n_videos: int) -> list[GalleryEntry]:
    """The gallery of one run: for each of its first vocoded validation videos, the middle frame, the real and
    the generated spectrogram (the real one centre-cropped to the model's frames) and both sounds."""
    audio_dir = Path(audio_dir)
    index = read_clip_table(audio_dir / "index.tsv")
    names = Path(videos_path).read_text().splitlines()
    generated = np.load(mels_path, mmap_mode="r")  # (videos, samples, n_mels, frames)
    reals = real_clips(valid_shards)
    entries = []
    for clip, sample, wav_file in gallery_clips(index, n_videos):
        real = reals[clip]
        generated_mel = np.asarray(generated[names.index(clip), sample], dtype=np.float32)
        real_mel = center_crop(real.mel(), generated_mel.shape[-1])
        entries.append(GalleryEntry(
            clip=clip, label=real.label, sample=sample,
            frame_png=png_bytes(thumbnail(middle_frame(real.video))),
            real_mel_png=spectrogram_png(real_mel),
            generated_mel_png=spectrogram_png(generated_mel),
            real_audio=audio_file_as_ogg(real.wav),
            generated_audio=audio_file_as_ogg(audio_dir / wav_file),
        ))
    return entries


def _figure(content: str, caption: str) -> str:
    return f"<figure>{content}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _entry_html(entry: GalleryEntry) -> str:
    frame = _figure(f'<img class="frame" alt="video frame" src="{data_uri(entry.frame_png, "image/png")}">',
                    "middle frame of the video")
    real = _figure(
        f'<img class="spectrogram" alt="real spectrogram" src="{data_uri(entry.real_mel_png, "image/png")}">'
        f'<audio controls preload="auto" class="real" src="{data_uri(entry.real_audio, "audio/ogg")}"></audio>',
        "real (spectrogram: the model's centre crop)")
    generated = _figure(
        f'<img class="spectrogram" alt="generated spectrogram" '
        f'src="{data_uri(entry.generated_mel_png, "image/png")}">'
        f'<audio controls preload="auto" class="generated" src="{data_uri(entry.generated_audio, "audio/ogg")}">'
        "</audio>",
        f"generated (sample {entry.sample})")
    title = f"<h3>{html.escape(entry.clip)} <small>({html.escape(entry.label)})</small></h3>"
    return f'<section class="video" data-clip="{html.escape(entry.clip)}">{title}{frame}{real}{generated}</section>'


def gallery_html(run: str, entries: list[GalleryEntry], vocoder: str) -> str:
    """A run's listening gallery as one page that embeds every image and sound."""
    note = (f'<p class="note">Run <b>{html.escape(run)}</b>: {len(entries)} validation videos. Generated sounds are '
            f"the {html.escape(vocoder)} vocoder's rendering of the sampled spectrogram; both sounds are embedded as "
            "Ogg Vorbis. Spectrograms: 80 mel bins, low frequencies at the bottom.</p>")
    return _page(f"Listening gallery: {run}", note + "\n" + "\n".join(_entry_html(e) for e in entries))
