"""MelGAN vocoder (design.md §6): released layout and outputs, batching, training loop, Griffin-Lim, wav writing."""
import json
from dataclasses import replace

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import shared_path

from i2a.data.mel import MelSpec, mel_spectrogram
from i2a.models.vocoder import Generator, MelGANConfig, griffin_lim, load_melgan, mel01_to_mel, vocode, write_wav
from i2a.training.vocoder import VocoderTrainConfig, segment_mel, train_melgan

SR = 22050


def tone(freq: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(wav: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(wav * np.hanning(wav.size)))
    return float(np.fft.rfftfreq(wav.size, 1 / SR)[spec.argmax()])


def test_generator_state_dict_matches_release_manifest():
    manifest = json.loads(shared_path("interop", "state_dict_manifest.json").read_text())["melgan_generator_vggsound"]
    sd = Generator(MelGANConfig()).state_dict()
    assert list(sd) == list(manifest)
    assert {k: list(v.shape) for k, v in sd.items()} == manifest


def test_generator_reproduces_reference_forward(tmp_path):
    ref = torch.load(shared_path("interop", "melgan_generator.pt"), weights_only=True)
    # the released netG.pt is a bare state dict: load_melgan must infer ngf 32 / 3 residual layers from it
    path = tmp_path / "netG.pt"
    torch.save({k: v.float() for k, v in ref["state_dict"].items()}, path)
    gen = load_melgan(path)
    assert gen.cfg == MelGANConfig(ngf=32, n_residual_layers=3) and not gen.training
    wav = vocode(gen, ref["inputs"]["mel"])
    expected = ref["outputs"]["wav"][:, 0].numpy()
    assert wav.shape == (1, 8192) and wav.dtype == np.float32
    # the reference output is small (|wav| < 0.01): compare relative to its scale, not just 1e-4 absolute
    scale = np.abs(expected).max()
    assert np.abs(wav - expected).max() < 1e-4 * max(scale, 1e-3)
    assert np.corrcoef(wav.ravel(), expected.ravel())[0, 1] > 0.9999


def test_load_melgan_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt.*melgan_ckpt/netG\.pt"):
        load_melgan(tmp_path / "nope.pt")


def test_load_melgan_rejects_foreign_state_dict(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a MelGAN generator"):
        load_melgan(tmp_path / "x.pt")


def test_vocode_batches_independently():
    torch.manual_seed(0)
    gen = Generator(MelGANConfig(ngf=4, n_residual_layers=1))
    mels = np.random.default_rng(0).random((3, 80, 10), dtype=np.float32)
    out = vocode(gen, mels, batch_size=2)  # chunks of 2 and 1
    assert out.shape == (3, 2560) and out.dtype == np.float32
    assert np.abs(out).max() > 0 and np.all(np.abs(out) <= 1)
    single = np.concatenate([vocode(gen, m) for m in mels])  # 2-D input = one mel
    np.testing.assert_allclose(out, single, atol=1e-6)
    with pytest.raises(ValueError, match="80 mel bins"):
        vocode(gen, mels[:, :40])


def test_segment_mel_frames_align_with_the_full_clip_mel():
    wav = np.random.default_rng(1).standard_normal(SR).astype(np.float32) * 0.1
    start = 256 * 20
    seg = segment_mel(wav[None, start : start + 8192])
    assert seg.shape == (1, 80, 32)
    full = mel_spectrogram(wav, MelSpec(keep_frames=60))
    # frame k of the segment is frame start/256 + k of the clip, away from the segment's padded edges
    np.testing.assert_allclose(seg[0][:, 2:30], full[:, 22:50], atol=1e-5)


def test_train_melgan_runs_learns_and_checkpoints(tmp_path):
    wavs = [tone(f, 0.5, 0.6) for f in (220, 440, 880, 1320)]
    cfg = VocoderTrainConfig(ngf=4, n_residual_layers=1, max_channels_D=64, batch_size=4, segment_length=2048,
                             max_steps=30, lr=1e-3, save_every=10, log_every=10)
    ckpt = train_melgan(wavs, cfg, tmp_path / "run")
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(m.step) == list(range(1, 31))
    assert np.isfinite(m[["loss_D", "loss_G", "loss_feat", "mel_l1"]].to_numpy()).all()
    # the discriminator learns to separate real from generated audio: its hinge loss falls from ~6 (3 scales x 2)
    assert m.loss_D.iloc[:5].mean() > 5.0 and m.loss_D.iloc[-5:].mean() < 0.8 * m.loss_D.iloc[:5].mean()

    trained = load_melgan(ckpt)
    assert trained.cfg == MelGANConfig(ngf=4, n_residual_layers=1)
    init = load_melgan(train_melgan(wavs, replace(cfg, max_steps=0), tmp_path / "init"))
    mel = segment_mel(wavs[1][None, :2048])
    before, after = vocode(init, mel), vocode(trained, mel)
    assert after.shape == (1, 2048) and np.abs(after - before).max() > 1e-3  # the generator was updated
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] in (10, 20, 30)
    assert saved["mel_l1"] == pytest.approx(m.mel_l1[m.step.between(saved["step"] - 9, saved["step"])].mean())


def test_mel01_inverse_undoes_the_spec_scaling():
    spec = MelSpec(keep_frames=40)
    wav = tone(500, 0.5) + np.random.default_rng(2).standard_normal(int(0.5 * SR)).astype(np.float32) * 0.01
    mel01 = mel_spectrogram(wav, spec)
    stft = np.abs(librosa.stft(wav, n_fft=1024, hop_length=256, center=True, pad_mode="reflect"))[:, :40]
    mel = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=80, fmin=125, fmax=7600) @ stft
    inside = (mel01 > 0) & (mel01 < 1)  # the clip is not invertible
    assert inside.mean() > 0.5
    np.testing.assert_allclose(mel01_to_mel(mel01)[inside], mel[inside], rtol=1e-3)


@pytest.mark.parametrize("freq", [440.0, 1000.0])
def test_griffin_lim_round_trips_a_pure_tone(freq):
    mel = segment_mel(tone(freq, 1.0)[None, : 256 * 64])
    wav = griffin_lim(mel, n_iter=32)
    assert wav.shape == (1, 256 * 64) and wav.dtype == np.float32
    assert abs(dominant_freq(wav[0]) - freq) < 25.0  # mel bins are ~35 Hz apart up to 1 kHz


def test_write_wav_is_16bit_pcm_and_clips(tmp_path):
    wav = np.concatenate([tone(440, 0.1), np.array([1.5, -2.0], dtype=np.float32)])
    path = write_wav(tmp_path / "sub" / "a.wav", wav)
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (SR, 1, "PCM_16", wav.size)
    back, _ = sf.read(path, dtype="int16")
    assert back[-2] == 32767 and back[-1] == -32767
    np.testing.assert_allclose(back[:-2] / 32767, wav[:-2], atol=1 / 32767)
    assert [p.name for p in path.parent.iterdir()] == ["a.wav"]  # no temp file left behind
    with pytest.raises(ValueError, match="mono"):
        write_wav(tmp_path / "b.wav", np.zeros((2, 10)))
