"""A run's listening gallery: for some validation videos, the video's middle frame, the real and the generated
spectrogram, and both sounds, on one self-contained page."""
from __future__ import annotations

import html
import io
from dataclasses import dataclass
from pathlib import Path

import av
import matplotlib
import numpy as np
import pandas as pd
import soundfile
from PIL import Image

from i2a.data.clips import Shard, read_clip_table
from i2a.data.mel import center_crop
from i2a.report.pages import _page, data_uri

FRAME_WIDTH = 256  # pixels of the gallery's video frames: enough to recognise the scene, small in the report


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
    """One validation video of a run's gallery: what it shows, what the model made, and the real sound. Inputs
    without videos and sounds (the authors' precomputed mels and features: `vas.source: authors`) have no frame
    and no real sound (None)."""

    clip: str
    label: str
    sample: int
    frame_png: bytes | None
    real_mel_png: bytes
    generated_mel_png: bytes
    real_audio: bytes | None
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
            frame_png=png_bytes(thumbnail(middle_frame(real.video))) if real.video.is_file() else None,
            real_mel_png=spectrogram_png(real_mel),
            generated_mel_png=spectrogram_png(generated_mel),
            real_audio=audio_file_as_ogg(real.wav) if real.wav.is_file() else None,
            generated_audio=audio_file_as_ogg(audio_dir / wav_file),
        ))
    return entries


def _figure(content: str, caption: str) -> str:
    return f"<figure>{content}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _entry_html(entry: GalleryEntry) -> str:
    frame = "" if entry.frame_png is None else _figure(
        f'<img class="frame" alt="video frame" src="{data_uri(entry.frame_png, "image/png")}">',
        "middle frame of the video")
    real_audio = "" if entry.real_audio is None else (
        f'<audio controls preload="auto" class="real" src="{data_uri(entry.real_audio, "audio/ogg")}"></audio>')
    real = _figure(
        f'<img class="spectrogram" alt="real spectrogram" src="{data_uri(entry.real_mel_png, "image/png")}">'
        + real_audio,
        "real (spectrogram: the model's centre crop)" + ("" if entry.real_audio is not None else
                                                          "; no video or sound in these inputs"))
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
