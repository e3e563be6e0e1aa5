"""The scoring protocol and the vocoding of samples, as library functions on small real-shaped files."""
import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from i2a.data.clips import write_tsv
from i2a.data.mel import MelSpec
from i2a.data.store import save_npy
from i2a.evaluation.metrics import paired_bootstrap, score_with_uncertainty
from i2a.evaluation.scoring import (best_row, class_agreement, compare_rows, compare_with_best, score_reference,
                                    score_samples)
from i2a.evaluation.table import comparison_table
from i2a.models.melception import CKPT_FORMAT, Melception, MelceptionConfig
from i2a.sampling.samples import vocode_samples

CLASSES = ["low", "high"]
T = 48


def _mel(cls: int, rng) -> np.ndarray:
    """A band at a class-specific height over a noise floor: (80, T) in [0, 1]."""
    f = np.arange(80)[:, None]
    band = np.exp(-0.5 * ((f - (15 if cls == 0 else 60)) / 4.0) ** 2)
    return np.clip(0.2 + 0.6 * band + rng.normal(0, 0.03, (80, T)), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A validation shard of 6 clips, a small random Melception saved as a trained one, and its reference."""
    root = tmp_path_factory.mktemp("scoring")
    rng = np.random.default_rng(0)
    labels = [0, 1, 0, 1, 0, 1]
    shard = root / "valid" / "shard000"
    shard.mkdir(parents=True)
    save_npy(shard / "mels.npy", np.stack([_mel(c, rng) for c in labels]))
    write_tsv(pd.DataFrame({"clip": [f"{CLASSES[c]}/{i}" for i, c in enumerate(labels)],
                            "class": [CLASSES[c] for c in labels], "status": "ok", "reason": "",
                            "file": [f"{i:05d}" for i in range(6)]}), shard / "clips.tsv")
    torch.manual_seed(0)
    cfg = MelceptionConfig(num_classes=2, width=0.0625)
    model = Melception(cfg)
    stats = np.stack([np.full(80, 0.3), np.full(80, 0.2)], axis=1)
    ckpt = root / "melception.ckpt"
    torch.save({"format": CKPT_FORMAT, "model": model.state_dict(), "config": asdict(cfg), "stats": torch.from_numpy(stats),
                "class_names": CLASSES}, ckpt)
    reference = root / "reference.npz"
    score_reference([shard], ckpt, None, T, reference, root / "evaluator.json")
    return root, shard, ckpt, reference, labels


def _samples(root, name, mels):
    path = root / f"{name}.npy"
    np.save(path, mels.astype(np.float16))
    return path


def test_reference_lists_the_clips_and_their_outputs(setup):
    root, _, _, reference, labels = setup
    ref = np.load(reference)
    assert list(ref["classes"]) == [CLASSES[c] for c in labels]
    assert ref["2048"].shape == (6, 128) and ref["logits"].shape == (6, 2)
    evaluator = json.loads((root / "evaluator.json").read_text())
    predicted = np.array(CLASSES)[ref["logits"].argmax(1)]
    assert evaluator["real_acc"] == pytest.approx(np.mean(predicted == np.array(ref["classes"])))


def test_class_agreement_counts_samples_recognised_as_their_videos_class():
    logits = np.array([[[5.0, 0.0], [0.0, 5.0]], [[0.0, 5.0], [0.0, 5.0]]])  # (V=2, N=2, C=2)
    assert class_agreement(logits, ["a", "b"], ["a", "b"]) == 0.75
    assert class_agreement(logits, None, ["a", "b"]) is None  # the released evaluator knows other classes


def test_scores_of_samples_with_intervals_and_seed_spread(setup):
    root, shard, ckpt, reference, labels = setup
    names = root / "videos.txt"
    names.write_text("\n".join(f"{CLASSES[c]}/{i}" for i, c in enumerate(labels)) + "\n")
    rng = np.random.default_rng(1)
    real = np.load(shard / "mels.npy")
    # 2 sampling seeds x 3 samples: close copies of each video's real clip, and pure noise
    close = np.stack([[np.clip(real[v] + rng.normal(0, 0.02, real[v].shape), 0, 1) for _ in range(6)]
                      for v in range(6)])
    noise = rng.uniform(0, 1, close.shape)
    scores = {}
    for name, mels in (("close", close), ("noise", noise)):
        out = root / f"{name}.json"
        result = score_samples(_samples(root, name, mels), names, reference, ckpt, None, seeds=2, n_boot=50, seed=0,
                               out=out, outputs_out=root / f"{name}.npz")
        assert json.loads(out.read_text()) == json.loads(json.dumps(result))
        assert (result["n_videos"], result["samples_per_video"], result["n_seeds"]) == (6, 3, 2)
        for metric in ("fid", "mkl"):
            m = result[metric]
            assert len(m["per_seed"]) == 2 and m["value"] == pytest.approx(np.mean(m["per_seed"]))
            assert m["low"] <= m["value"] <= m["high"] and m["seed_sd"] >= 0
        assert {"isc", "kid"} <= set(result)
        scores[name] = result
    assert scores["close"]["mkl"]["value"] < scores["noise"]["mkl"]["value"]
    assert scores["close"]["fid"]["value"] < scores["noise"]["fid"]["value"]
    assert np.load(root / "close.npz")["2048"].shape == (6, 2, 3, 128)  # (V, R, K, D) for paired comparisons
    # paired: close copies against noise, on the same videos; the difference is the two scores' difference
    comparison = compare_rows(root / "close.npz", root / "noise.npz", reference, "close", "noise", "baseline",
                              n_boot=50, seed=0, out=root / "comparison.json")
    assert json.loads((root / "comparison.json").read_text()) == json.loads(json.dumps(comparison))
    assert (comparison["row"], comparison["against"], comparison["relation"], comparison["videos"]) == \
        ("close", "noise", "baseline", 6)
    assert comparison["dKL"]["value"] == pytest.approx(scores["close"]["mkl"]["value"] - scores["noise"]["mkl"]["value"])
    assert comparison["dFID"]["value"] == pytest.approx(scores["close"]["fid"]["value"] - scores["noise"]["fid"]["value"])
    assert comparison["dKL"]["low"] <= comparison["dKL"]["value"] <= comparison["dKL"]["high"]


def _run_outputs(root, name, real, rng, offset=0.0, noise=0.5, V=40, R=2, K=3):
    """A run's Melception outputs (V, R, K, ...) near each video's real ones: '2048' features and class logits,
    shifted by `offset` (a worse run) and blurred by sample noise; written as score_samples writes them, with its
    scores.json (MKL and FID as score_samples computes them)."""
    feats = real["2048"][:, None, None] + offset + rng.normal(size=(V, R, K, real["2048"].shape[1])) * noise
    logits = real["logits"][:, None, None] + offset * rng.normal(size=real["logits"].shape[1]) \
        + rng.normal(size=(V, R, K, real["logits"].shape[1])) * noise
    np.savez(root / f"{name}.npz", **{"2048": feats, "logits": logits})
    scores = {metric: score_with_uncertainty(values, real[key], metric, n_boot=20)
              for metric, key, values in (("mkl", "logits", logits), ("fid", "2048", feats))}
    (root / f"{name}.json").write_text(json.dumps(scores))
    return root / f"{name}.npz", root / f"{name}.json"


def test_runs_are_compared_with_the_best_on_the_same_videos(tmp_path):
    """Three conditioned runs on 40 videos: two alike (the best cannot be told from its twin) and one clearly
    worse. Each is compared paired with the best by MKL: the same numbers as paired_bootstrap on the two runs, the
    twin's dKL interval covering 0, the worse run's above 0, the best's own line exactly 0."""
    rng = np.random.default_rng(3)
    V, classes = 40, 6
    real = {"clips": np.array([f"c{i % classes}/{i}" for i in range(V)]), "2048": rng.normal(size=(V, 16)) * 2,
            "logits": rng.normal(size=(V, classes)) * 3}
    np.savez(tmp_path / "reference.npz", **real)
    files = {"twin-a": _run_outputs(tmp_path, "twin-a", real, rng), "twin-b": _run_outputs(tmp_path, "twin-b", real, rng),
             "worse": _run_outputs(tmp_path, "worse", real, rng, offset=1.5)}
    outputs, scores = ({run: f[i] for run, f in files.items()} for i in (0, 1))
    best = best_row(scores)
    assert best in ("twin-a", "twin-b")
    mkl = {run: json.loads(path.read_text())["mkl"]["value"] for run, path in scores.items()}
    assert mkl[best] == min(mkl.values())
    twin = ({"twin-a", "twin-b"} - {best}).pop()
    lines = []
    for run in files:
        result = compare_with_best(run, outputs, scores, tmp_path / "reference.npz", n_boot=200, seed=0,
                                   out=tmp_path / f"{run}.vs_best.json")
        assert (result["row"], result["against"], result["relation"], result["videos"]) == (run, best, "best", V)
        lines.append(tmp_path / f"{run}.vs_best.json")
        if run == best:
            assert result["dKL"] == result["dFID"] == {"value": 0.0, "low": 0.0, "high": 0.0}
            continue
        a, b, ref = np.load(outputs[run]), np.load(outputs[best]), np.load(tmp_path / "reference.npz")
        for name, key, metric in (("dKL", "logits", "mkl"), ("dFID", "2048", "fid")):
            expected = paired_bootstrap(a[key], b[key], ref[key], metric, n_boot=200, seed=0)
            assert tuple(result[name].values()) == pytest.approx(expected, rel=1e-12)
    twin_line, worse_line = (json.loads((tmp_path / f"{run}.vs_best.json").read_text()) for run in (twin, "worse"))
    assert twin_line["dKL"]["low"] < 0 < twin_line["dKL"]["high"]  # not separable
    assert worse_line["dKL"]["low"] > 0 and worse_line["dFID"]["low"] > 0  # worse than the best, in both
    table = comparison_table(lines)
    assert list(table["row"]) == list(files) and set(table["against"]) == {best}
    assert table.set_index("row").loc["worse", "dKL_low"] == worse_line["dKL"]["low"]


def test_the_best_row_is_the_lowest_mkl_first_of_equals(tmp_path):
    scores = {}
    for run, value in (("a", 0.5), ("b", 0.2), ("c", 0.2)):
        scores[run] = tmp_path / f"{run}.json"
        scores[run].write_text(json.dumps({"mkl": {"value": value}}))
    assert best_row(scores) == "b"
    scores["c"].write_text(json.dumps({"mkl": {"value": float("nan")}}))
    with pytest.raises(ValueError, match="no MKL for c"):
        best_row(scores)


def test_scoring_refuses_samples_of_other_videos(setup):
    root, _, ckpt, reference, _ = setup
    names = root / "other.txt"
    names.write_text("\n".join(f"x/{i}" for i in range(6)) + "\n")
    mels = _samples(root, "any", np.zeros((6, 2, 80, T)))
    with pytest.raises(ValueError, match="different validation videos"):
        score_samples(mels, names, reference, ckpt, None, seeds=1, n_boot=10, seed=0, out=root / "x.json")


def test_vocode_samples_writes_the_first_videos_with_an_index(tmp_path):
    spec = MelSpec(keep_frames=32, crop_frames=32)
    mels = np.random.default_rng(0).uniform(0.2, 0.6, (3, 2, 80, 32)).astype(np.float16)
    np.save(tmp_path / "mels.npy", mels)
    (tmp_path / "videos.txt").write_text("a/0\nb/1\nc/2\n")
    out = tmp_path / "audio"
    assert vocode_samples(tmp_path / "mels.npy", tmp_path / "videos.txt", out, "griffin_lim", spec,
                          listen_videos=2) == 4
    index = pd.read_csv(out / "index.tsv", sep="\t")
    assert list(index["clip"]) == ["a/0", "a/0", "b/1", "b/1"] and list(index["sample"]) == [0, 1, 0, 1]
    info = soundfile.info(str(out / index["file"].iloc[3]))
    assert (info.samplerate, info.channels, info.frames) == (22050, 1, 256 * 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "mels.npy", "videos.txt"]  # no temp folder left
