"""The demo's toy dataset: real mp4s, classes separable by sound and by sight, onsets tied to flashes."""
import av
import numpy as np
import pytest

from i2a.data.media import read_audio, read_video_frames
from i2a.data.mel import MelSpec, mel_spectrogram
from i2a.data.synthetic import make_synthetic_dataset

SECONDS, FPS = 2.0, 25.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    return out, make_synthetic_dataset(out, n_classes=4, clips_per_class=6, seconds=SECONDS, fps=FPS, seed=3)


def _leave_one_out_nearest_centroid(x: np.ndarray, y: np.ndarray) -> float:
    hits = 0
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        classes = np.unique(y)
        centroids = np.stack([x[keep & (y == c)].mean(0) for c in classes])
        hits += classes[np.argmin(((centroids - x[i]) ** 2).sum(1))] == y[i]
    return hits / len(x)


def test_layout_streams_and_duration(clips):
    out, paths = clips
    assert len(paths) == 24 and len({p.parent.name for p in paths}) == 4
    for p in paths:
        assert p.parent.parent == out and p.name.startswith(p.parent.name + "_") and p.suffix == ".mp4"
        with av.open(str(p)) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            assert (v.codec_context.name, a.codec_context.name) == ("h264", "aac")
            assert abs(c.duration / 1e6 - SECONDS) < 0.1
            assert v.frames == int(SECONDS * FPS) and float(v.average_rate) == FPS
    assert not list(out.rglob(".*")), "temp files left behind"


def test_classes_separable_in_mel_and_colour_and_onsets_follow_flashes(clips):
    _, paths = clips
    spec = MelSpec(keep_frames=160)
    mel_means, colours, labels, corrs = [], [], [], []
    for p in paths:
        wav, _ = read_audio(p, spec.sample_rate)
        mel = mel_spectrogram(wav, spec)
        frames = read_video_frames(p)
        mel_means.append(mel.mean(1))
        colours.append(frames.reshape(-1, 3).mean(0))
        labels.append(p.parent.name)
        # sound follows sight: loudness around each frame's time tracks the frame's brightness
        at = (np.arange(len(frames)) / FPS * spec.sample_rate).astype(int)
        half = spec.sample_rate // 100
        loudness = np.array([np.sqrt(np.mean(wav[max(0, i - half):i + half] ** 2)) for i in at])
        brightness = frames.reshape(len(frames), -1).mean(1)
        corrs.append(np.corrcoef(brightness, loudness)[0, 1])
    assert min(corrs) > 0.7 and np.mean(corrs) > 0.9, corrs
    labels = np.array(labels)
    assert _leave_one_out_nearest_centroid(np.array(mel_means), labels) == 1.0
    assert _leave_one_out_nearest_centroid(np.array(colours), labels) == 1.0
    # the class pitch shows: class mean mels peak in different mel bins
    peaks = {c: np.argmax(np.mean([m for m, l in zip(mel_means, labels) if l == c], 0)) for c in set(labels)}
    assert len(set(peaks.values())) == 4, peaks


def test_same_seed_same_clip_other_seed_differs(clips, tmp_path):
    _, paths = clips
    again = make_synthetic_dataset(tmp_path / "a", n_classes=4, clips_per_class=2, seconds=SECONDS, fps=FPS, seed=3)
    other = make_synthetic_dataset(tmp_path / "b", n_classes=4, clips_per_class=2, seconds=SECONDS, fps=FPS, seed=4)
    first = [p for p in paths if p.parent.name == again[0].parent.name][:2]
    for p, q in zip(first, again):
        assert np.array_equal(read_video_frames(p), read_video_frames(q))
        assert np.array_equal(read_audio(p)[0], read_audio(q)[0])
    assert not np.array_equal(read_video_frames(first[0]), read_video_frames(other[0]))
    # clips of one class differ from each other (jitter)
    assert not np.array_equal(read_video_frames(first[0]), read_video_frames(first[1]))


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_classes"):
        make_synthetic_dataset(tmp_path, n_classes=9)
    with pytest.raises(ValueError, match="even"):
        make_synthetic_dataset(tmp_path, size=(95, 128))


def test_class_pitches_spread_over_the_mel_range():
    from i2a.data.synthetic import PITCH_RANGE_HZ, class_set

    pitches = [c.pitch_hz for c in class_set(4)]
    assert pitches[0] == pytest.approx(PITCH_RANGE_HZ[0]) and pitches[-1] == pytest.approx(PITCH_RANGE_HZ[1])
    assert all(b / a > 2.5 for a, b in zip(pitches, pitches[1:]))
