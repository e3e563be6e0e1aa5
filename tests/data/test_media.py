"""preprocess_clip on good and bad inputs, and read_video_frames' fps selection against ffmpeg's fps filter."""
import subprocess

import av
import numpy as np
import pytest
import soundfile

from i2a.data.media import BadClip, ffmpeg_duration_string, ffmpeg_exe, preprocess_clip, read_audio, read_video_frames
from i2a.data.synthetic import write_mp4
from media_files import toy_clip, write_streams

SR = 22050


@pytest.fixture(scope="module")
def good_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd names") / "dir with spaces 'q' \"dq\" ü"
    path = folder / "-clip 'it''s' \"dq\" $HOME ; ü ж.mp4"
    frames, audio = toy_clip(1.3)
    write_mp4(path, frames, audio, 25.0, 44100)
    return path


def test_preprocess_good_clip_with_odd_name(good_clip, tmp_path):
    out = tmp_path / "out dir ü 'x'"
    video, wav = out / "v 'ü'.mp4", out / "a \"ü\".wav"
    info = preprocess_clip(good_clip, video, wav, seconds=3.0)
    samples, rate = soundfile.read(str(wav), dtype="int16")
    assert rate == SR and samples.shape == (3 * SR,) and np.abs(samples).max() > 1000
    assert info["duration_str"] == "00:00:01.30" and info["n_loops"] == 3  # 3 // 1.3 + 1, as their script
    assert abs(info["n_frames"] - 3.0 * 25) <= 2  # the cut video keeps the source's 25 fps
    with av.open(str(video)) as c:
        v = c.streams.video[0]
        assert v.frames == info["n_frames"]
        assert abs(c.duration / 1e6 - 3.0) < 0.1
        assert c.streams.audio, "the cut video keeps its audio, as in their chain"
    assert read_video_frames(video).shape == (info["n_frames"], 64, 80, 3)
    assert abs(len(read_video_frames(video, fps=21.5)) - 3.0 * 21.5) <= 2
    # the loop repeats the clip: the wav's first 1.3 s come back after 1.3 s (AAC-lossy, so correlate)
    x = samples.astype(np.float64)
    n = int(1.3 * SR)
    lagged = [np.corrcoef(x[1000:n - 1000], x[n + d + 1000:2 * n + d - 1000])[0, 1] for d in range(-300, 300)]
    assert max(lagged) > 0.9
    assert sorted(p.name for p in out.iterdir()) == sorted([video.name, wav.name]), "temp files left behind"


def test_short_clip_is_looped(tmp_path):
    frames, audio = toy_clip(0.1, seed=1)
    src = tmp_path / "tiny.mp4"
    write_streams(src, frames, audio)
    info = preprocess_clip(src, tmp_path / "v.mp4", tmp_path / "a.wav", seconds=2.0)
    wav, rate = soundfile.read(str(tmp_path / "a.wav"))
    assert rate == SR and wav.shape == (2 * SR,)
    # audio and video are looped: 2-frame plays of the 0.1 s video, as many as the cut to 2 s keeps
    assert info["n_loops"] >= 15 and info["n_frames"] >= 30
    # the sound repeats throughout instead of stopping after 0.1 s
    assert np.abs(wav[-SR // 2:]).max() > 0.05


def _assert_bad(src, tmp_path, reason):
    outs = [tmp_path / "o.mp4", tmp_path / "o.wav"]
    with pytest.raises(BadClip) as caught:
        preprocess_clip(src, *outs, seconds=2.0)
    assert reason in caught.value.reason.lower(), caught.value.reason
    assert str(caught.value) == caught.value.reason and len(caught.value.reason) < 200
    assert not any(p.exists() for p in outs) and list(tmp_path.glob(".*")) == []


def test_bad_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    _assert_bad(tmp_path / "empty.mp4", tmp_path, "empty file")


def test_bad_text_named_mp4(tmp_path):
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
    _assert_bad(tmp_path / "notes.mp4", tmp_path, "not a readable video")


def test_bad_truncated_mp4(good_clip, tmp_path):
    data = good_clip.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: gone
    _assert_bad(tmp_path / "cut.mp4", tmp_path, "not a readable video")


def test_truncated_faststart_mp4_uses_what_decodes(tmp_path):
    """With the index in front, a cut file still opens: the decodable head is looped (as ffmpeg would in
    their chain); when nothing of the audio decodes, it is a BadClip."""
    frames, audio = toy_clip(1.3)
    write_streams(tmp_path / "whole.mp4", frames, audio, options={"movflags": "faststart"})
    data = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    info = preprocess_clip(tmp_path / "half.mp4", tmp_path / "v.mp4", tmp_path / "a.wav", seconds=2.0)
    assert 0.1 < info["duration"] < 1.2 and soundfile.info(str(tmp_path / "a.wav")).frames == 2 * SR
    (tmp_path / "head.mp4").write_bytes(data[: len(data) // 5])
    with pytest.raises(BadClip, match="no samples|no decodable"):
        preprocess_clip(tmp_path / "head.mp4", tmp_path / "v2.mp4", tmp_path / "a2.wav", seconds=2.0)
    assert not (tmp_path / "v2.mp4").exists() and not (tmp_path / "a2.wav").exists()


def test_bad_no_audio_track(tmp_path):
    frames, _ = toy_clip(0.5)
    write_streams(tmp_path / "mute.mp4", frames=frames)
    _assert_bad(tmp_path / "mute.mp4", tmp_path, "no audio track")


def test_bad_no_video_track(tmp_path):
    _, audio = toy_clip(0.5)
    write_streams(tmp_path / "radio.mp4", audio=audio)
    _assert_bad(tmp_path / "radio.mp4", tmp_path, "no video track")


def test_bad_audio_too_short_to_loop(tmp_path):
    frames, _ = toy_clip(0.2)
    write_streams(tmp_path / "blip.mkv", frames=frames, audio=np.full(100, 0.1, np.float32), fmt="matroska",
           audio_codec="pcm_s16le")  # 100 samples = 2.3 ms: rounds to 00:00:00.00
    _assert_bad(tmp_path / "blip.mkv", tmp_path, "too short")


def test_missing_file_is_not_a_bad_clip(tmp_path):
    with pytest.raises(FileNotFoundError):
        preprocess_clip(tmp_path / "nope.mp4", tmp_path / "v.mp4", tmp_path / "a.wav")


def test_duration_string_matches_ffmpeg(tmp_path):
    for n, rate in [(221184, 44100), (132300, 22050), (441000, 44100), (2205, 22050), (99, 44100)]:
        path = tmp_path / f"{n}_{rate}.wav"
        soundfile.write(str(path), np.zeros(n, np.int16), rate)
        err = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
        printed = err.split("Duration: ")[1].split(",")[0]
        assert ffmpeg_duration_string(n, rate) == printed


def test_read_video_frames_fps_matches_ffmpeg_fps_filter(tmp_path):
    # each frame a flat grey of its own level, so every output frame names the input frame it came from
    n, fps_in = 40, 25
    frames = np.repeat((8 + 6 * np.arange(n, dtype=np.uint8))[:, None, None, None], 3, axis=3) * np.ones(
        (1, 32, 48, 3), np.uint8)
    src = tmp_path / "ramp.mp4"
    write_streams(src, frames=frames, fps=fps_in)
    for fps in (21.5, 10, 30):
        ours = read_video_frames(src, fps=fps)[..., 0].reshape(-1, 32 * 48).mean(1)
        raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(src), "-vf", f"fps={fps}", "-f", "rawvideo",
                              "-pix_fmt", "gray", "-"], capture_output=True, check=True).stdout
        theirs = np.frombuffer(raw, np.uint8).reshape(-1, 32 * 48).mean(1)
        assert len(ours) == len(theirs) == round(n / fps_in * fps)
        assert np.abs(np.round((ours - 8) / 6) - np.round((theirs - 8) / 6)).max() == 0
    assert read_video_frames(src).shape == (n, 32, 48, 3)


def test_read_audio_resamples_to_mono(good_clip):
    wav44, rate44 = read_audio(good_clip)
    wav22, rate22 = read_audio(good_clip, SR)
    assert (rate44, rate22) == (44100, SR) and wav44.ndim == wav22.ndim == 1
    assert abs(len(wav22) * 2 - len(wav44)) < 2048 and abs(len(wav44) / 44100 - 1.3) < 0.05
