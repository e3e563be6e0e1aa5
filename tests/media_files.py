"""Builders of small media files for tests: good clips, and files with only the streams asked for."""
import av
import numpy as np

from i2a.data.synthetic import TOY_CLASSES, render_clip


def toy_clip(seconds, fps=25.0, rate=44100, seed=0):
    """The demo's frames with a tonal sound (harmonics under a slow swell): AAC re-encodes tones faithfully, so
    tests can follow the audio through the chain by correlation."""
    frames, _ = render_clip(TOY_CLASSES[1], np.random.default_rng(seed), seconds, fps, rate, (64, 80))
    t = np.arange(int(round(seconds * rate))) / rate
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * 1.7 * t + seed)
    audio = 0.3 * swell * (np.sin(2 * np.pi * 330 * t) + 0.5 * np.sin(2 * np.pi * 660 * t + 1.0))
    return frames, audio.astype(np.float32)


def write_streams(path, frames=None, audio=None, fps=25, rate=44100, fmt="mp4", audio_codec="aac", options=None):
    """A file with only the streams given (video-only, audio-only, odd codecs)."""
    with av.open(str(path), mode="w", format=fmt, options=options or {}) as out:
        v = a = None
        if frames is not None:
            v = out.add_stream("libx264", rate=fps)
            v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if audio is not None:
            a = out.add_stream(audio_codec, rate=rate, layout="mono")
        if v is not None:
            for img in frames:
                out.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            out.mux(v.encode())
        if a is not None:
            fmt_a = "fltp" if audio_codec == "aac" else "s16"
            data = audio[None] if fmt_a == "fltp" else (audio[None] * 32767).astype(np.int16)
            for s in range(0, audio.size, 1024):
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, s:s + 1024]), format=fmt_a, layout="mono")
                f.sample_rate, f.pts = rate, s
                out.mux(a.encode(f))
            out.mux(a.encode())
