"""Melception: released layout and reference forward, input standardisation, checkpoints, demo training."""
import json

import numpy as np
import pytest
import torch

from conftest import shared_path
from i2a.models.melception import (Melception, MelceptionConfig, compute_mel_stats, load_melception,
                                   melception_outputs, read_mel_stats, standardise)
from i2a.spec.released import released
from i2a.training.melception import MelceptionTrainConfig, recalibrate_batchnorm, train_melception

MELCEPTION_URL = released("melception").url

DEMO_CLASSES = ["dog", "drum", "fireworks", "baby"]


def _fp32(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def test_width1_state_dict_equals_released_manifest():
    manifest = json.loads(shared_path("interop", "state_dict_manifest.json").read_text())["melception_vggsound"]
    state = Melception().state_dict()
    assert list(state) == list(manifest)  # same names, same order
    assert {k: list(v.shape) for k, v in state.items()} == manifest
    assert manifest["AuxLogits.fc.weight"] == [309, 768] and manifest["Conv2d_1a_3x3.conv.weight"] == [32, 1, 3, 3]


def test_reference_forward_matches():
    ref = torch.load(shared_path("interop", "melception.pt"), weights_only=True)
    model = Melception(MelceptionConfig(num_classes=ref["config"]["num_classes"]))
    model.load_state_dict(_fp32(ref["state_dict"]))
    # one clip keeps the test light; eval-mode BatchNorm makes clips independent of each other
    with torch.no_grad():
        out = model.eval()(ref["inputs"]["spec_standardised"][:1])
    for key in ("2048", "logits", "logits_unbiased"):
        expected = ref["outputs"][key][:1]
        # the random reference weights give values up to ~1e12: tolerance relative to the largest magnitude
        torch.testing.assert_close(out[key], expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_width_scales_channels_and_logits_are_fc_of_features():
    torch.manual_seed(0)
    model = Melception(MelceptionConfig(num_classes=5, width=0.125)).eval()
    assert model.feature_dim == 256  # 2048 / 8
    x = torch.randn(3, 80, 64)
    with torch.no_grad():
        out = model(x)
    assert out["2048"].shape == (3, 256) and out["logits"].shape == (3, 5)
    torch.testing.assert_close(out["logits_unbiased"], out["2048"] @ model.fc.weight.T)
    torch.testing.assert_close(out["logits"], model.fc(out["2048"]))
    with pytest.raises(ValueError, match="80"):
        model(torch.randn(1, 64, 64))


def test_mel_stats_and_standardise():
    path = shared_path("data", "train_means_stds_melspec_10s_22050hz.txt")
    stats = read_mel_stats(path)
    assert stats.shape == (80, 2) and (stats[:, 1] > 0).all()
    first = [float(v) for v in path.read_text().splitlines()[0].split()]
    assert stats[0].tolist() == pytest.approx(first)
    # a clip sitting at the per-bin mean standardises to 0, one std above to 1; numpy and torch agree
    mels = np.stack([np.repeat(stats[:, :1], 7, axis=1), np.repeat(stats[:, :1] + stats[:, 1:], 7, axis=1)])
    out_np = standardise(mels, stats)
    out_t = standardise(torch.from_numpy(mels).float(), stats)
    np.testing.assert_allclose(out_np[0], 0.0, atol=1e-5)
    np.testing.assert_allclose(out_np[1], 1.0, atol=1e-5)
    np.testing.assert_allclose(out_t.numpy(), out_np, atol=1e-5)
    with pytest.raises(ValueError):
        standardise(np.zeros((2, 64, 7)), stats)


def test_compute_mel_stats_averages_per_clip_stds():
    # SpecVQGAN averages per-clip stds: two constant clips have std 0 each, although pooled they would not
    mels = np.stack([np.full((80, 10), 0.2), np.full((80, 10), 0.8)]).astype(np.float32)
    mels[1, :, ::2] = 0.6  # second clip alternates 0.6 / 0.8: mean 0.7, std 0.1
    stats = compute_mel_stats(mels)
    np.testing.assert_allclose(stats[:, 0], (0.2 + 0.7) / 2, atol=1e-6)
    np.testing.assert_allclose(stats[:, 1], (0.0 + 0.1) / 2, atol=1e-6)


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
    missing = tmp_path / "melception.pt"
    with pytest.raises(FileNotFoundError) as err:
        load_melception(missing)
    assert str(missing) in str(err.value) and MELCEPTION_URL in str(err.value)


def test_load_released_format(tmp_path):
    ref = torch.load(shared_path("interop", "melception.pt"), weights_only=True)
    path = tmp_path / "melception-released.pt"
    # the released file's layout (SpecVQGAN's log_best_model): state dict under 'model', plus the optimiser
    # state and validation metrics, some of them numpy scalars
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([param])
    param.sum().backward()
    opt.step()
    torch.save({"loss": 2.5, "metrics": {"accuracy_1": 0.44, "mAP": np.mean([0.4, 0.5]), "dprime": np.float64(2.0)},
                "epoch": 12, "optimizer": opt.state_dict(), "model": ref["state_dict"]}, path)
    stats_path = shared_path("data", "train_means_stds_melspec_10s_22050hz.txt")
    model, stats = load_melception(path, stats_path=stats_path)
    assert not model.training and model.class_names is None
    assert model.config.num_classes == 309 and model.config.width == 1.0
    assert stats.shape == (80, 2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref["state_dict"][k].to(v.dtype)), k
    assert load_melception(path)[1] is None  # the released file carries no stats


def test_recalibrate_batchnorm_sets_exact_stats():
    torch.manual_seed(0)
    model = Melception(MelceptionConfig(num_classes=3, width=0.0625)).eval()
    x = torch.randn(6, 80, 40)
    recalibrate_batchnorm(model, x, batch_size=64)
    assert not model.training
    with torch.no_grad():
        pre = model.Conv2d_1a_3x3.conv(x.unsqueeze(1))
    bn = model.Conv2d_1a_3x3.bn
    torch.testing.assert_close(bn.running_mean, pre.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, pre.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1


def _demo_clips(T: int = 160):
    """4 real VAS classes, 12 crops each: 8 train crops from the first 70% of the class's audio, 4 valid
    crops from the rest (disjoint in time)."""
    train, train_y, valid, valid_y = [], [], [], []
    for cls in DEMO_CLASSES:
        folder = shared_path("data", "vas-samples", "features", cls, "melspec_10s_22050hz")
        mel = np.concatenate([np.load(p) for p in sorted(folder.glob("*_mel.npy"))], axis=1)
        cut = int(mel.shape[1] * 0.7)
        for s in np.linspace(0, cut - T, 8).astype(int):
            train.append(mel[:, s:s + T])
            train_y.append(cls)
        for s in np.linspace(cut, mel.shape[1] - T, 4).astype(int):
            valid.append(mel[:, s:s + T])
            valid_y.append(cls)
    return np.stack(train), train_y, np.stack(valid), valid_y


def test_train_small_melception_on_real_mels(tmp_path):
    train, train_y, valid, valid_y = _demo_clips()
    cfg = MelceptionTrainConfig(width=0.125, epochs=8)
    out = tmp_path / "melception_demo.pt"
    summary = train_melception(train, train_y, valid, valid_y, cfg, out)
    assert summary["valid_acc"] >= 0.75, summary["history"]
    assert summary["history"][-1]["train_loss"] < summary["history"][0]["train_loss"]

    model, stats = load_melception(out)
    assert model.class_names == sorted(DEMO_CLASSES) and model.config.width == 0.125
    np.testing.assert_allclose(stats, compute_mel_stats(train))
    outs = melception_outputs(model, valid, stats, batch_size=5)
    assert outs["2048"].shape == (16, 256) and outs["logits"].shape == (16, 4)
    labels = np.array([model.class_names.index(c) for c in valid_y])
    acc = (outs["logits"].argmax(1) == labels).mean()
    assert acc == pytest.approx(summary["valid_acc"])  # the saved checkpoint is the reported best epoch


def test_training_checkpoint_round_trip_and_label_checks(tmp_path):
    rng = np.random.default_rng(0)
    mels = rng.uniform(0, 1, size=(6, 80, 48)).astype(np.float32)
    cfg = MelceptionTrainConfig(width=0.0625, epochs=1, batch_size=3, class_names=["a", "b"])
    out = tmp_path / "m.pt"
    train_melception(mels[:4], [0, 1, 0, 1], mels[4:], [0, 1], cfg, out)
    model, stats = load_melception(out)
    assert model.class_names == ["a", "b"] and model.config.num_classes == 2
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["train_config"]["width"] == 0.0625 and len(ckpt["history"]) == 1
    with torch.no_grad():
        direct = model(torch.from_numpy(standardise(mels, stats)))
    outs = melception_outputs(model, mels, stats, batch_size=4)
    np.testing.assert_allclose(outs["logits"], direct["logits"].numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not among"):
        train_melception(mels[:4], ["a", "b", "a", "b"], mels[4:], ["a", "c"], cfg, out)
    with pytest.raises(ValueError, match="stats"):
        melception_outputs(model, mels, None)
