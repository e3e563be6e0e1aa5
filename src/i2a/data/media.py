"""Video and audio I/O, and the per-clip preprocessing chain SpecVQGAN inherited from RegNet (design.md §1).

The chain is SpecVQGAN's `feature_extraction/extract_audio_and_video.py`, command for command, with argv lists
instead of shell strings (so any file name works) and an ffmpeg from the package registry:

  1. `-i src -f wav -vn ori.wav`                          the original audio, to measure its duration
  2. `-ss 0 -t DUR -i src -c:v libx264 -c:a aac -b:a 98k`  the video cut to the audio's duration
  3. `-stream_loop N -i aligned -c copy -fflags +genpts`   N = seconds // DUR + 1 extra plays
  4. `-ss 0 -t SECONDS -i looped -c:v libx264 -c:a aac -b:a 98k`
  5. `-i cut -f wav -vn`, then `-ac 1 -ar 22050`           the mono wav the mels are computed from
  6. their `-i cut -r 21.5 -c:v libx264` re-timed copy is not written: `read_video_frames(cut, fps=21.5)` picks
     the same frames by timestamp, as ffmpeg's fps filter does (tests/data/test_media.py checks it against ffmpeg),
     without a third lossy x264 generation and without a third of the chain's time (benchmarks/decode.py).

DUR is the duration ffmpeg prints for ori.wav ("HH:MM:SS.cc", rounded to 10 ms), exactly what their script
parsed. The wav is then padded with zeros or trimmed to seconds * sample_rate samples, as their mel script did
when loading it.

The ffmpeg is the static 4.2.2 build in imageio-ffmpeg 0.4.9, the generation the authors used (conda
`ffmpeg=4.3.1`), with `-aac_coder fast` (the 4.x default, spelled out). The AAC encoder is chaotic (bit
reservoir, rate loop): one last-bit float difference between builds changes every later frame, so mels match
the authors' exactly only with their build. Measured on the 10 golden clips (tests/data/test_mel.py): ffmpeg 4.2.2
mean abs diff 0.0037 (two clips bit-exact, worst 0.0106); ffmpeg 7-9 with the same flags 0.0063 (worst
0.0138); ffmpeg >= 7's default `twoloop` coder is ~1.5 dB louder and 2x further off. Set I2A_FFMPEG to use
another binary.

Bad inputs raise BadClip(reason): empty files, files ffmpeg cannot open (not media, or an mp4 cut before its
index), no audio or no video track, audio that decodes to nothing, no decodable video frames. Very short
clips (e.g. 0.1 s) are looped like any other, as the authors' chain would; a clip whose audio rounds to
0.00 s (under 5 ms) is rejected, because the chain divides by that duration. A truncated mp4 whose index
is in front still opens: its decodable head is used, as ffmpeg in their chain would have done.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import soundfile

from i2a.infra.atomic import atomic_path

log = logging.getLogger(__name__)

AAC_BITRATE = "98k"  # RegNet/SpecVQGAN's -b:a for every AAC re-encode
# The chain re-encodes at most a full-HD picture's pixels (x264's memory grows with them: an 8K clip took 6.1 GB);
# a larger source is scaled down to it, aspect kept, before its first encode. The VAS clips are smaller: their
# chain is unchanged. Features are computed at 224 pixels; the chain's video keeps far more than that.
MAX_CHAIN_PIXELS = 1920 * 1080
AAC_CODER = "fast"  # the ffmpeg 4.x default the authors' mels were made with (see the module docstring)


class BadClip(ValueError):
    """A clip the chain cannot use; `reason` is short and human-readable (it goes into clips.tsv)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def ffmpeg_exe() -> str:
    """The ffmpeg binary: $I2A_FFMPEG if set, else the static ffmpeg 4.2.2 that imageio-ffmpeg 0.4.9 ships.

    The binary is located without importing imageio_ffmpeg (its 0.4 releases import pkg_resources, which
    modern environments no longer have).
    """
    exe = os.environ.get("I2A_FFMPEG")
    if exe:
        if not (shutil.which(exe) or Path(exe).is_file()):
            raise FileNotFoundError(f"I2A_FFMPEG={exe!r} is not an executable; unset it to use imageio-ffmpeg's")
        return exe
    return str(_bundled_ffmpeg())


@functools.lru_cache(maxsize=1)
def _bundled_ffmpeg() -> Path:
    spec = importlib.util.find_spec("imageio_ffmpeg")
    folder = Path(spec.origin).parent / "binaries" if spec and spec.origin else None
    found = sorted(folder.glob("ffmpeg-*")) if folder and folder.is_dir() else []
    if not found:
        raise FileNotFoundError("no ffmpeg binary: install the project's pinned imageio-ffmpeg (uv sync), "
                                "or set I2A_FFMPEG to an ffmpeg executable")
    exe = found[0]
    if not os.access(exe, os.X_OK):
        exe.chmod(exe.stat().st_mode | 0o111)
    return exe


def _arg(path: str | Path) -> str:
    """An ffmpeg file argument that cannot be read as an option or a protocol (leading '-', 'x:' in names)."""
    return "file:" + os.path.abspath(path)


def _ffmpeg(exe: str, args: list[str], step: str) -> str:
    proc = subprocess.run([exe, "-nostdin", "-hide_banner", "-y", *args], capture_output=True,
                          stdin=subprocess.DEVNULL)
    err = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
        raise BadClip(f"ffmpeg failed while {step}: {lines[-1] if lines else f'exit code {proc.returncode}'}")
    return err


def ffmpeg_duration_string(n_samples: int, sample_rate: int) -> str:
    """What ffmpeg prints as a wav's "Duration:": microseconds + 5000, truncated to centiseconds."""
    us = (n_samples * 1_000_000 + sample_rate // 2) // sample_rate + 5000
    cs = us // 10_000
    return f"{cs // 360000:02d}:{cs // 6000 % 60:02d}:{cs // 100 % 60:02d}.{cs % 100:02d}"


def _parse_duration(text: str) -> float:
    h, m, s = (float(x) for x in text.split(":"))
    return 3600 * h + 60 * m + s


def probe_clip(src: str | Path) -> dict:
    """Stream facts of a source clip; raises BadClip for files the chain cannot use."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"clip {src} does not exist")
    if src.stat().st_size == 0:
        raise BadClip("empty file (0 bytes)")
    try:
        with av.open(str(src)) as container:
            videos, audios = container.streams.video, container.streams.audio
            if not videos:
                raise BadClip("no video track")
            if not audios:
                raise BadClip("no audio track")
            v, a = videos[0], audios[0]
            info = {
                "container_duration": (container.duration or 0) / 1e6,
                "orig_fps": float(v.average_rate) if v.average_rate else None,
                "orig_size": (v.codec_context.height, v.codec_context.width),
                "orig_sample_rate": a.codec_context.sample_rate,
                "orig_channels": a.codec_context.channels,
            }
            if not any(packet.size for packet in container.demux(v)):  # stops at the first frame's packet
                raise BadClip("no video frames (the video track is empty)")
    except BadClip:
        raise
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise BadClip(f"not a readable video file ({type(err).__name__}: {_short(err)})") from err
    return info


def _short(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)  # FFmpegError: the message without errno and path
    return text if len(text) <= 120 else text[:117] + "..."


def _count_video_frames(path: Path) -> int:
    """Frames of the first video stream, from the mp4 index (no decoding)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for p in container.demux(stream) if p.size)
    except av.FFmpegError:
        return 0


def _install(tmp_file: Path, dest: Path) -> None:
    """Move a finished file into place atomically (it may sit on another disk: copied beside dest first)."""
    with atomic_path(dest) as part:
        shutil.move(str(tmp_file), str(part))


def chain_scale(height: int, width: int) -> list[str]:
    """The scale filter that brings a source above MAX_CHAIN_PIXELS down to it (even sides, aspect kept); none
    for a source within it."""
    if height * width <= MAX_CHAIN_PIXELS:
        return []
    factor = (MAX_CHAIN_PIXELS / (height * width)) ** 0.5
    return ["-vf", f"scale={max(2, int(width * factor) // 2 * 2)}:{max(2, int(height * factor) // 2 * 2)}"]


def preprocess_clip(src: str | Path, out_video: str | Path | None, out_wav: str | Path, seconds: float = 10.0,
                    sample_rate: int = 22050, threads: int = 1) -> dict:
    """RegNet/SpecVQGAN's chain for one clip: a `seconds`-long mono wav and (unless out_video is None) the
    looped video cut to `seconds`, with its audio. Raises BadClip (with the reason) for clips it cannot use.
    Each ffmpeg decodes and encodes on `threads` threads (not one per core: a shard job runs a clip per thread), and
    a source above MAX_CHAIN_PIXELS is scaled down at its first encode, so memory is bounded whatever the clip."""
    src = Path(src)
    info = {"src": str(src), **probe_clip(src)}
    exe = ffmpeg_exe()
    threads_arg = ["-threads", str(threads)]
    aac = ["-c:a", "aac", "-aac_coder", AAC_CODER, "-strict", "experimental", "-b:a", AAC_BITRATE]
    target = f"{seconds:g}"
    with tempfile.TemporaryDirectory(prefix="i2a-clip-") as tmp:
        tmp = Path(tmp)
        ori, aligned, looped, cut = tmp / "ori.wav", tmp / "aligned.mp4", tmp / "looped.mp4", tmp / "cut.mp4"
        cut_wav, mono = tmp / "cut.wav", tmp / "mono.wav"

        _ffmpeg(exe, ["-i", _arg(src), "-loglevel", "error", "-f", "wav", "-vn", _arg(ori)], "extracting the audio")
        ori_info = soundfile.info(str(ori))
        n_ori, rate_ori = ori_info.frames, ori_info.samplerate
        if n_ori == 0:
            raise BadClip("audio track decodes to no samples")
        duration = ffmpeg_duration_string(n_ori, rate_ori)
        duration_s = _parse_duration(duration)
        if duration_s <= 0:
            raise BadClip(f"audio too short to loop ({n_ori} samples, under 5 ms)")
        n_loops = int(seconds // duration_s + 1)
        info.update(duration=duration_s, duration_str=duration, n_loops=n_loops)

        _ffmpeg(exe, ["-ss", "0", "-t", duration, *threads_arg, "-i", _arg(src), "-loglevel", "error", *threads_arg,
                      *chain_scale(*info["orig_size"]), "-c:v", "libx264", *aac, _arg(aligned)],
                "cutting the video to the audio's duration")
        if _count_video_frames(aligned) == 0:
            raise BadClip("video track has no decodable frames")
        _ffmpeg(exe, ["-stream_loop", str(n_loops), "-i", _arg(aligned), "-loglevel", "error", "-c", "copy",
                      "-fflags", "+genpts", _arg(looped)], "looping the clip")
        _ffmpeg(exe, ["-ss", "0", "-t", target, *threads_arg, "-i", _arg(looped), "-loglevel", "error", *threads_arg,
                      "-c:v", "libx264", *aac, _arg(cut)], f"cutting to {target} s")
        _ffmpeg(exe, ["-i", _arg(cut), "-loglevel", "error", "-f", "wav", "-vn", _arg(cut_wav)],
                "extracting the cut audio")
        # their command also had "-ab 16k", which PCM ignores
        _ffmpeg(exe, ["-i", _arg(cut_wav), "-loglevel", "error", "-ac", "1", "-ar", str(sample_rate), "-f", "wav",
                      _arg(mono)], f"resampling to mono {sample_rate} Hz")

        pcm, rate = soundfile.read(str(mono), dtype="int16", always_2d=False)
        if rate != sample_rate or pcm.ndim != 1:
            raise BadClip(f"resampled audio is {rate} Hz with shape {pcm.shape}, expected mono {sample_rate} Hz")
        length = int(round(seconds * sample_rate))
        info.update(n_samples_resampled=int(len(pcm)), n_samples=length)
        pcm = np.pad(pcm, (0, max(0, length - len(pcm))))[:length]  # their mel loader's zero pad / trim
        fixed = tmp / "fixed.wav"
        soundfile.write(str(fixed), pcm, sample_rate, subtype="PCM_16", format="WAV")

        if out_video is not None:
            n_frames = _count_video_frames(cut)
            if n_frames == 0:
                raise BadClip(f"video cut to {target} s has no frames")
            info.update(n_frames=n_frames)
            _install(cut, Path(out_video))
        _install(fixed, Path(out_wav))
    info.update(sample_rate=sample_rate, seconds=seconds)
    return info


def video_head(src: str | Path, dest: str | Path, seconds: float) -> None:
    """The first `seconds` of a video, losslessly (x264 -qp 0, PCM audio in Matroska), for `preprocess_clip`.

    `i2a generate` runs a user's video through the training chain; cutting it first keeps a long video from being
    re-encoded whole, and a video without sound gets silence as long as its picture, since the chain measures
    a clip on its audio. Raises BadClip for a file that is not a video.
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"video {src} does not exist")
    if src.stat().st_size == 0:
        raise BadClip("empty file (0 bytes)")
    with _open_container(src) as container:
        if not container.streams.video:
            raise BadClip("no video track")
        has_audio = bool(container.streams.audio)
    if has_audio:
        inputs, maps = ["-i", _arg(src)], ["-map", "0:v:0", "-map", "0:a:0"]
    else:
        inputs = ["-i", _arg(src), "-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono"]
        maps = ["-map", "0:v:0", "-map", "1:a:0", "-shortest"]
    args = [*inputs, "-t", f"{seconds:g}", *maps, "-loglevel", "error", "-c:v", "libx264", "-qp", "0", "-preset",
            "ultrafast", "-c:a", "pcm_s16le", "-f", "matroska", _arg(dest)]
    _ffmpeg(ffmpeg_exe(), args, f"taking the first {seconds:g} s")
    if _count_video_frames(Path(dest)) == 0:
        raise BadClip("video track has no decodable frames")


def mux_audio(video: str | Path, wav: str | Path, dest: str | Path) -> Path:
    """`video`'s picture with `wav` as its sound (AAC), as long as the shorter of the two; written atomically."""
    with atomic_path(dest) as tmp:
        _ffmpeg(ffmpeg_exe(), ["-i", _arg(video), "-i", _arg(wav), "-map", "0:v:0", "-map", "1:a:0", "-loglevel",
                               "error", "-c:v", "copy", "-c:a", "aac", "-b:a", AAC_BITRATE, "-shortest", "-f", "mp4",
                               _arg(tmp)], "muxing the generated sound")
    return Path(dest)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(float32 samples, rate), int16 scaled by 1/32768 like librosa.load; stereo is averaged to mono."""
    wav, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    return (wav if wav.ndim == 1 else wav.mean(axis=1)), rate


def _open_container(path: str | Path):
    """PyAV container of a media file; a file PyAV cannot open is a BadClip with FFmpeg's reason."""
    try:
        return av.open(str(path))
    except av.FFmpegError as err:
        raise BadClip(f"cannot open {path}: {_short(err)}") from err


def read_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """(mono float32 samples, rate) of a media file's first audio track, decoded (and resampled) by PyAV.

    Mixed down to 16-bit like `ffmpeg -ac 1 x.wav` (the chain's wav): swresample mixes stereo at 1/2 per channel
    for integer output but 1/sqrt(2) for float output, so a float mixdown would be 3 dB louder than the wav.
    """
    with _open_container(path) as container:
        if not container.streams.audio:
            raise BadClip(f"{path}: no audio track")
        stream = container.streams.audio[0]
        rate = sample_rate or stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        chunks = [r.to_ndarray().reshape(-1) for f in container.decode(stream) for r in resampler.resample(f)]
        chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return pcm.astype(np.float32) / 32768.0, rate


def _round_near(x: Fraction) -> int:
    """AV_ROUND_NEAR_INF: halves away from zero."""
    n = abs(x.numerator) * 2 + x.denominator
    q = n // (2 * x.denominator)
    return q if x >= 0 else -q


def read_video_frames(path: str | Path, fps: float | None = None, max_short_side: int | None = None,
                      frame_transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Frames of the first video stream as (T, H, W, 3) uint8 RGB.

    With `fps`, frames are picked by timestamp the way ffmpeg's fps filter does (round-to-nearest slots,
    the latest frame at or before each slot, the last frame held until its end), without re-encoding.
    With `max_short_side`, larger frames are scaled down while decoding (area average, aspect kept), so a clip's
    memory is bounded by what the model will see, not by the source resolution (an 8K clip would need 21 GB).
    With `frame_transform` (an (H, W, 3) uint8 frame -> an array, e.g. a model's resize and crop), each kept frame
    is transformed as soon as it is decoded (once, also when the fps selection repeats it) and the clip is only
    ever held at the transform's output size; the result stacks the transformed frames.
    """
    def rgb(frame) -> np.ndarray:
        short = min(frame.width, frame.height)
        if max_short_side is not None and short > max_short_side:
            scale = max_short_side / short
            return frame.reformat(width=max(1, round(frame.width * scale)), height=max(1, round(frame.height * scale)),
                                  format="rgb24", interpolation="AREA").to_ndarray()
        return frame.to_ndarray(format="rgb24")

    def to_rgb(frame) -> np.ndarray:
        return rgb(frame) if frame_transform is None else frame_transform(rgb(frame))

    with _open_container(path) as container:
        if not container.streams.video:
            raise BadClip(f"{path}: no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if fps is None:
            frames = [to_rgb(f) for f in container.decode(stream)]
        else:
            frames = _frames_at_fps(container, stream, Fraction(str(fps)), to_rgb)
    if not frames:
        raise BadClip(f"{path}: no decodable video frames")
    return np.stack(frames)


def _frames_at_fps(container, stream, fps: Fraction, to_rgb) -> list[np.ndarray]:
    tb = Fraction(stream.time_base.numerator, stream.time_base.denominator)
    default_dur = 1 / Fraction(stream.average_rate) if stream.average_rate else None
    out: list[np.ndarray] = []
    held, held_end, next_slot = None, None, None  # the frame waiting to fill slots, and the next slot
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        t = frame.pts * tb
        slot = _round_near(t * fps)
        if next_slot is None:
            next_slot = slot
        if held is not None:
            image = None
            while next_slot < slot:
                image = image if image is not None else to_rgb(held)
                out.append(image)
                next_slot += 1
        held = frame
        held_end = t + (frame.duration * tb if frame.duration else (default_dur or 1 / fps))
    if held is not None:
        end_slot = _round_near(held_end * fps)
        image = None
        while next_slot < end_slot:
            image = image if image is not None else to_rgb(held)
            out.append(image)
            next_slot += 1
    return out
