"""The spectrogram codebook: released-checkpoint layout, reference forward pass, token order, training."""
import csv
import json

import numpy as np
import pytest
import torch
from conftest import shared_path

from i2a.models.codebook import (VQGANConfig, VQModel, decode_tokens, encode_mels, grid_from_tokens, load_codebook,
                                 tokens_from_grid)
from i2a.training.codebook import CodebookTrainConfig, adaptive_gan_weight, train_codebook


@pytest.fixture(scope="module")
def reference():
    ref = torch.load(shared_path("interop", "vqgan_small.pt"), weights_only=True)
    cfg = VQGANConfig.from_dict(ref["config"])
    return ref, cfg, {k: v.float() for k, v in ref["state_dict"].items()}


def test_default_model_has_the_released_vas_codebook_keys_and_shapes():
    manifest = json.loads(shared_path("interop", "state_dict_manifest.json").read_text())["vqgan_vas_codebook"]
    model = VQModel(VQGANConfig())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ours) ^ set(manifest)) == []
    assert ours == manifest


def test_forward_matches_specvqgan_reference(reference):
    ref, cfg, state = reference
    model = VQModel(cfg).eval()
    model.load_state_dict(state)
    x = ref["inputs"]["spec"]
    with torch.no_grad():
        pre_quant = model.pre_quant(x)
        zq, codebook_loss, indices = model.encode(x)
        rec = model.decode(zq)
        rec_from_indices = model.decode_indices(indices)
        rec_forward, _, indices_forward = model(x)
    assert indices.shape == (2, 5, 53)
    assert torch.equal(indices, ref["outputs"]["indices"])
    assert torch.equal(indices_forward, indices)
    assert (pre_quant - ref["outputs"]["pre_quant"]).abs().max() < 1e-4
    assert (rec - ref["outputs"]["reconstruction"]).abs().max() < 1e-4
    assert (rec_from_indices - ref["outputs"]["reconstruction"]).abs().max() < 1e-4
    assert torch.allclose(rec_forward, rec)
    # codebook loss is (1 + beta) * mse(zq, z) in the forward value
    assert codebook_loss.item() == pytest.approx(1.25 * torch.mean((zq - pre_quant) ** 2).item(), rel=1e-4)


def test_load_codebook_lightning_checkpoint_plain_state_dict_and_errors(reference, tmp_path):
    _, cfg, state = reference
    lightning_ckpt = {"state_dict": {**state, "loss.discriminator.main.0.weight": torch.zeros(4, 1, 4, 4),
                                     "loss.perceptual_loss.scaling_layer.shift": torch.zeros(1, 3, 1, 1)},
                      "epoch": 259, "global_step": 123}
    torch.save(lightning_ckpt, tmp_path / "epoch_259.ckpt")
    model = load_codebook(tmp_path / "epoch_259.ckpt", cfg)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not model.training

    torch.save(state, tmp_path / "plain.pt")
    assert torch.equal(load_codebook(tmp_path / "plain.pt", cfg).quantize.embedding.weight,
                       state["quantize.embedding.weight"])

    broken = dict(state)
    del broken["decoder.conv_out.bias"]
    broken["encoder.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": broken}, tmp_path / "broken.ckpt")
    with pytest.raises(ValueError, match=r"missing keys: decoder\.conv_out\.bias.*unexpected keys: encoder\.extra"):
        load_codebook(tmp_path / "broken.ckpt", cfg)
    with pytest.raises(ValueError, match="shape mismatch: quantize.embedding.weight"):
        load_codebook(tmp_path / "plain.pt", VQGANConfig.from_dict({**cfg.to_dict(), "n_embed": 8}))

    missing = tmp_path / "nowhere" / "epoch_259.ckpt"
    with pytest.raises(FileNotFoundError, match="nowhere/epoch_259.ckpt.*train_codebook"):
        load_codebook(missing)


def test_token_order_is_specvqgan_column_major():
    grid = np.arange(2 * 5 * 53).reshape(2, 5, 53)
    order = np.arange(265).reshape(5, 53).T.ravel()  # SpecVQGAN's permutation
    tokens = tokens_from_grid(grid)
    assert tokens.shape == (2, 265)
    assert np.array_equal(tokens[1], grid[1].ravel()[order])
    assert list(tokens[0, :6]) == [0, 53, 106, 159, 212, 1]  # the 5 rows of column 0, then column 1
    assert np.array_equal(grid_from_tokens(tokens, H=5), grid)
    t = torch.from_numpy(grid)
    assert torch.equal(tokens_from_grid(t), torch.from_numpy(tokens))
    assert torch.equal(grid_from_tokens(tokens_from_grid(t), 5, 53), t)
    with pytest.raises(ValueError):
        grid_from_tokens(tokens[:, :-1], H=5, W=53)


def test_adaptive_weight_is_tamings_gradient_ratio():
    w = torch.nn.Parameter(torch.ones(3, 4))
    rec_loss, g_loss = (3.0 * w).sum(), (0.5 * w).sum()  # gradient norms 3 * sqrt(12) and 0.5 * sqrt(12)
    expected = 3 * 12**0.5 / (0.5 * 12**0.5 + 1e-4) * 0.8
    assert adaptive_gan_weight(rec_loss, g_loss, w, 0.8).item() == pytest.approx(expected, rel=1e-5)
    assert adaptive_gan_weight(rec_loss, g_loss, w, 0.8, 0.0, 2.0).item() == pytest.approx(1.6)
    assert adaptive_gan_weight(rec_loss, g_loss, w, 0.8, 1.0, 1.0).item() == pytest.approx(0.8)  # vas_codebook.yaml


def _banded_mels(n: int, frames: int, seed: int) -> np.ndarray:
    """Class c (= i % 8): a horizontal band at a class-specific height, at a random level, over a sloped floor,
    plus a little noise. (n, 80, frames) in [0, 1]."""
    rng = np.random.default_rng(seed)
    f = np.arange(80)[:, None]
    out = np.empty((n, 80, frames), np.float32)
    for i in range(n):
        band = np.exp(-0.5 * ((f - (8 + 9 * (i % 8))) / 5.0) ** 2)
        out[i] = 0.2 + 0.1 * (1 - f / 80) + rng.uniform(0.5, 0.7) * band + rng.normal(0, 0.02, (80, frames))
    return np.clip(out, 0, 1)


TINY = VQGANConfig(ch=16, num_res_blocks=1, attn_resolutions=(2,), resolution=32, z_channels=32, embed_dim=32,
                   n_embed=32, norm_groups=8)


def test_train_codebook_learns_and_round_trips(tmp_path):
    train = _banded_mels(16, 36, seed=0)  # wider than the 32-frame crop: train_codebook centre-crops
    valid = _banded_mels(8, 32, seed=1)
    tcfg = CodebookTrainConfig(batch_size=2, base_lr=5e-4, max_epochs=30, disc_start=10**9, seed=0)
    path = train_codebook(train, valid, TINY, tcfg, tmp_path / "run")
    assert path == tmp_path / "run" / "codebook.ckpt"

    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(30))
    assert int(rows[-1]["step"]) == 30 * 8
    val = [float(r["val_rec_loss"]) for r in rows]
    assert min(val) < 0.8 * val[0]
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["val_rec_loss"] == pytest.approx(min(val)) and ckpt["epoch"] == int(np.argmin(val))

    model = load_codebook(path)  # config comes from the checkpoint
    assert model.cfg == TINY
    tokens = encode_mels(model, valid, batch_size=3)
    assert tokens.shape == (8, 5 * 2) and tokens.dtype == np.int16
    assert 0 <= tokens.min() and tokens.max() < TINY.n_embed
    # the codebook crops the centre: padding the time axis on both sides does not change the tokens
    padded = np.pad(valid, ((0, 0), (0, 0), (3, 3)), constant_values=0.0)
    assert np.array_equal(encode_mels(model, padded, batch_size=8), tokens)

    rec = decode_tokens(model, tokens, batch_size=5)
    assert rec.shape == valid.shape and rec.dtype == np.float32
    with torch.no_grad():
        direct, _, _ = model(torch.from_numpy(valid * 2 - 1)[:, None])
    np.testing.assert_allclose(rec, (direct[:, 0].numpy() + 1) / 2, atol=1e-5)

    # clearly better than predicting the mean training spectrogram for every clip
    rec_l1 = np.abs(rec - valid).mean()
    mean_l1 = np.abs(train[..., 2:34].mean(0) - valid).mean()
    print(f"reconstruction L1 {rec_l1:.4f}, mean-spectrogram L1 {mean_l1:.4f}")
    assert rec_l1 < 0.6 * mean_l1, (rec_l1, mean_l1)
    assert np.abs(decode_tokens(model, tokens, clip=True) - valid).mean() <= rec_l1 + 1e-7


def test_discriminator_phase_trains_the_discriminator(tmp_path):
    mels = _banded_mels(4, 32, seed=2)
    tcfg = CodebookTrainConfig(batch_size=2, base_lr=1e-4, max_epochs=1, disc_start=1, disc_ndf=8, seed=0)
    train_codebook(mels, mels[:2], TINY, tcfg, tmp_path)
    row = next(csv.DictReader(open(tmp_path / "metrics.csv")))
    # step 0 runs without the discriminator, step 1 with it: the epoch means are half the step values
    assert float(row["train_d_weight"]) == pytest.approx(0.8 / 2)
    assert float(row["train_disc_loss"]) > 0


def test_bad_inputs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="fewer than the model's resolution 32"):
        train_codebook(np.zeros((2, 80, 20), np.float32), np.zeros((1, 80, 40), np.float32), TINY,
                       CodebookTrainConfig(max_epochs=1), tmp_path)
    with pytest.raises(ValueError, match="norm_groups=32 must divide"):
        VQGANConfig(ch=16)
    with pytest.raises(ValueError, match="num_res_blocks"):
        VQGANConfig(num_res_blocks=0)
    model = VQModel(TINY)
    with pytest.raises(ValueError, match="tokens outside"):
        decode_tokens(model, np.full((1, 10), 32))


def test_dead_codes_are_restarted_onto_latents(tmp_path, monkeypatch):
    """With restart_dead_codes, codes no batch used move onto encoder outputs; without it they stay unused."""
    mels = _banded_mels(8, 32, seed=3)
    far = VQModel.__init__

    def far_codes(self, cfg=TINY):  # every code but 0 starts far from any latent: dead from the first batch
        far(self, cfg)
        with torch.no_grad():
            self.quantize.embedding.weight[1:] = 1e3
    monkeypatch.setattr(VQModel, "__init__", far_codes)
    used = {}
    for restart in (False, True):
        tcfg = CodebookTrainConfig(batch_size=2, base_lr=5e-4, max_epochs=3, disc_start=10**9, seed=0,
                                   restart_dead_codes=restart)
        train_codebook(mels, mels, TINY, tcfg, tmp_path / str(restart))
        rows = list(csv.DictReader(open(tmp_path / str(restart) / "metrics.csv")))
        used[restart] = [int(r["val_codes_used"]) for r in rows]
    assert used[False] == [1, 1, 1]
    assert used[True][0] == 1 and max(used[True][1:]) > 1
