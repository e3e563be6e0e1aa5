"""Decode throughput: 21.5 fps frames + 22,050 Hz mono wav of each clip, ours vs the video_features way.

Both paths start from the same inputs: the 10 s cut videos that `i2a.data.media.preprocess_clip` makes from the
shared sample clips (set-up, untimed) -- the clip video_features would be pointed at.

video_features way, per clip: re-encode to a temporary 21.5 fps mp4 with ffmpeg (`-filter:v fps=fps=21.5`,
default libx264, as its `reencode_video_with_diff_fps`), read every frame back with `cv2.VideoCapture` and
convert BGR -> RGB into a (T, H, W, 3) uint8 array; the wav with `ffmpeg -vn -ac 1 -ar 22050 -acodec pcm_s16le`
into a temporary file, read with soundfile as float32.
Ours, per clip: `read_video_frames(clip, fps=21.5)` (PyAV decode, ffmpeg fps-filter timestamp selection, no
re-encode) and `read_audio(clip, 22050)` (PyAV decode + resample to mono).

Clips are done one after the other in one process for both paths, as a shard job does. Libraries keep their
own defaults (ffmpeg, libx264 and PyAV's decoder pick their thread counts); `--threads N` pins OpenCV/OpenMP
for both paths alike. Each clip goes through both paths back to back, in alternating order, so that load from
other processes on a shared machine hits both; of `--repeats` rounds over all clips, each path's fastest is
reported (wall clock, and CPU time of this process plus its ffmpeg children). Both paths use the same ffmpeg
binary, the pipeline's (`i2a.data.media.ffmpeg_exe()`: imageio-ffmpeg's, or $I2A_FFMPEG).

Same frames, same run: the outputs of the first round are compared per clip -- frame counts must be equal
(exit code 1 if not); the mean absolute pixel difference to the video_features frames (nonzero: that path
re-encodes lossily); the max absolute difference to ffmpeg's fps filter decoded losslessly (untimed:
`-vf fps=21.5 -f rawvideo -pix_fmt rgb24`); and the wavs: lengths and max difference (both are ffmpeg's 16-bit
mono mixdown, so they should be identical).

    .venv/bin/python benchmarks/decode.py                 # the 10 sample clips, best of 3 (2-3 min on 2 idle cores)
    .venv/bin/python benchmarks/decode.py --repeats 5 --threads 1 --samples /path/to/videos

The last line is `decode_speedup: <ratio>` (clips/s ours / clips/s video_features way).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile

from i2a.data.media import ffmpeg_exe, preprocess_clip, read_audio, read_video_frames

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vas-samples" / "videos"
FPS = 21.5
SAMPLE_RATE = 22050


@dataclass
class Totals:
    """One round of one path over all clips."""
    wall: float = 0.0
    cpu: float = 0.0
    frames: int = 0


def video_features_way(clip: Path, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frames, wav) the way video_features gets them: re-encode to 21.5 fps, then OpenCV; ffmpeg -> wav file."""
    import cv2

    ffmpeg = ffmpeg_exe()
    new = tmp / f"{clip.stem}_new_fps.mp4"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "panic", "-y", "-i", str(clip),
                    "-filter:v", f"fps=fps={FPS}", str(new)], check=True)
    capture = cv2.VideoCapture(str(new))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    new.unlink()

    wav_path = tmp / f"{clip.stem}.wav"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "panic", "-y", "-i", str(clip), "-vn", "-ac", "1",
                    "-ar", str(SAMPLE_RATE), "-acodec", "pcm_s16le", str(wav_path)], check=True)
    wav, _ = soundfile.read(str(wav_path), dtype="float32")
    wav_path.unlink()
    return np.stack(frames), wav


def our_way(clip: Path, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frames, wav) as the pipeline reads them: PyAV decode with fps-filter selection, PyAV resampling."""
    frames = read_video_frames(clip, fps=FPS)
    wav, _ = read_audio(clip, SAMPLE_RATE)
    return frames, wav


def cpu_seconds() -> float:
    """User + system time of this process and its finished children (ffmpeg): robust on a shared machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(way, clip: Path, tmp: Path, totals: Totals) -> tuple[np.ndarray, np.ndarray]:
    """Run one path on one clip, adding its wall and CPU time and frame count to `totals`."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    frames, wav = way(clip, tmp)
    totals.wall += time.perf_counter() - t0
    totals.cpu += cpu_seconds() - c0
    totals.frames += len(frames)
    return frames, wav


def fps_filter_frames(clip: Path) -> np.ndarray:
    """ffmpeg's own fps filter output, piped as raw RGB (no lossy re-encode): the exact reference."""
    with av.open(str(clip)) as container:
        ctx = container.streams.video[0].codec_context
        width, height = ctx.width, ctx.height
    raw = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(clip),
                          "-vf", f"fps={FPS}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def compare(clip: Path, ours: tuple[np.ndarray, np.ndarray],
            theirs: tuple[np.ndarray, np.ndarray]) -> tuple[bool, str]:
    """(frame counts equal, one line comparing our frames and wav with the video_features way's and ffmpeg's)."""
    (frames, wav), (their_frames, their_wav) = ours, theirs
    exact = fps_filter_frames(clip)
    same_count = len(frames) == len(their_frames) == len(exact)
    line = (f"{clip.stem:12s} {frames.shape[2]:4d}x{frames.shape[1]:<4d} frames ours/vf/filter "
            f"{len(frames)}/{len(their_frames)}/{len(exact)}")
    if same_count:
        vs_vf = np.abs(frames.astype(np.int16) - their_frames)
        vs_exact = np.abs(frames.astype(np.int16) - exact)
        line += (f" | vs vf: mean {vs_vf.mean():4.2f} max {vs_vf.max():3d}"
                 f" | vs filter: max {vs_exact.max():3d}, {np.count_nonzero(vs_exact)} values differ")
    n = min(len(wav), len(their_wav))
    line += (f" | wav ours/vf {len(wav)}/{len(their_wav)} samples, max diff"
             f" {np.abs(wav[:n] - their_wav[:n]).max() if n else 0:.1e}")
    return same_count, line


def set_threads(n: int) -> None:
    """Same OpenCV/OpenMP (and torch, if loaded) thread counts for both paths."""
    import cv2

    os.environ["OMP_NUM_THREADS"] = str(n)
    cv2.setNumThreads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="folder of <class>/<clip>.mp4 raw clips")
    parser.add_argument("--clips", type=int, default=0, help="only the first N clips (0: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per path; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="OpenCV/OpenMP threads for both paths")
    args = parser.parse_args()

    sources = sorted(args.samples.glob("*/*.mp4"))
    if args.clips:
        sources = sources[: args.clips]
    if not sources:
        sys.exit(f"no sample clips (<class>/*.mp4) under {args.samples}; pass --samples DIR")
    if args.threads:
        set_threads(args.threads)

    ways = {"video_features way": video_features_way, "ours": our_way}
    with tempfile.TemporaryDirectory(prefix="i2a-decode-bench-") as tmp:
        tmp = Path(tmp)
        clips = []
        for src in sources:
            clip = tmp / f"{src.stem}.mp4"
            preprocess_clip(src, clip, tmp / f"{src.stem}_pipeline.wav")
            clips.append(clip)
        print(f"{len(clips)} clips (10 s cuts made by preprocess_clip), best of {args.repeats} rounds, "
              f"threads {args.threads or 'library defaults'}; round 1 outputs checked:", flush=True)

        best: dict[str, Totals] = {}
        for round_ in range(args.repeats):
            totals = {name: Totals() for name in ways}
            for i, clip in enumerate(clips):
                order = list(ways) if (i + round_) % 2 == 0 else list(ways)[::-1]  # neither path always first
                out = {name: timed(ways[name], clip, tmp, totals[name]) for name in order}
                if round_ == 0:
                    same_count, line = compare(clip, out["ours"], out["video_features way"])
                    print("  " + line, flush=True)
                    if not same_count:
                        sys.exit(f"FAILED: {clip.stem}: frame counts differ between our decode and the "
                                 "video_features way / ffmpeg's fps filter")
            for name, t in totals.items():
                if name not in best or t.wall < best[name].wall:
                    best[name] = t

    print(f"{'path':20s} {'clips/s':>8s} {'s/clip':>8s} {'cpu s/clip':>10s} {'frames':>7s}")
    for name, t in best.items():
        print(f"{name:20s} {len(clips) / t.wall:8.2f} {t.wall / len(clips):8.3f} {t.cpu / len(clips):10.3f}"
              f" {t.frames:7d}")
    theirs, ours = best["video_features way"], best["ours"]
    print(f"cpu-time ratio {theirs.cpu / ours.cpu:.2f}x")
    print(f"decode_speedup: {theirs.wall / ours.wall:.2f}")


if __name__ == "__main__":
    main()
