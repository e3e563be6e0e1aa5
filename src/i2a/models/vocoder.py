"""Mel -> waveform (design.md §6): SpecVQGAN's MelGAN vocoder and a Griffin-Lim fallback.

The generator is layer for layer the melgan-neurips generator that SpecVQGAN trained on VGGSound, so the released
`netG.pt` / `best_netG.pt` state dict loads unchanged. Its input is the [0, 1] mel of design.md §2 as is:
SpecVQGAN's `VocoderMelGan.vocode` is called with `(spec + 1) / 2` and the vocoder was trained on mels made by the
same transform (`vocoder/mel2wav/extract_mel_spectrogram.py: TRANSFORMS`).

The vocoder never enters FID/MKL (computed on spectrograms); it makes the audio people listen to. Its training is
`i2a.training.vocoder`.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
import torch.nn as nn

from i2a.data.mel import MelSpec
from i2a.infra.atomic import atomic_path
from i2a.infra.checkpoint import load_checkpoint
from i2a.spec.released import how_to_fetch

log = logging.getLogger(__name__)

RELEASED_HINT = (f"fetch the released VGGSound MelGAN generator ({how_to_fetch('melgan')}), or train one with the "
                 "workflow's train_melgan rule (vocoder.source: train)")
CKPT_FORMAT = "i2a-melgan-v1"


# -----------------------------------------------------------------------------------------------------------------
# model

def _wn(module: nn.Module) -> nn.Module:
    """Weight norm with the legacy `weight_g` / `weight_v` parameter names of the released checkpoints.

    torch's parametrize-based weight_norm stores the same tensors under other names; the legacy function is
    deprecated but computes exactly the same thing, so we keep it and silence its warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(module)


def WNConv1d(*args, **kwargs) -> nn.Module:
    return _wn(nn.Conv1d(*args, **kwargs))


def WNConvTranspose1d(*args, **kwargs) -> nn.Module:
    return _wn(nn.ConvTranspose1d(*args, **kwargs))


@dataclass(frozen=True)
class MelGANConfig:
    """Generator size; the defaults are the released VGGSound vocoder."""

    n_mels: int = 80
    ngf: int = 32
    n_residual_layers: int = 3
    ratios: tuple[int, ...] = (8, 8, 2, 2)  # upsampling per stage; the product is the mel hop

    @property
    def hop_length(self) -> int:
        return int(np.prod(self.ratios))


class ResnetBlock(nn.Module):
    """Dilated residual block; melgan-neurips keeps a learned 1x1 shortcut instead of the identity."""

    def __init__(self, dim: int, dilation: int = 1):
        super().__init__()
        self.block = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.ReflectionPad1d(dilation),
            WNConv1d(dim, dim, kernel_size=3, dilation=dilation),
            nn.LeakyReLU(0.2),
            WNConv1d(dim, dim, kernel_size=1),
        )
        self.shortcut = WNConv1d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class Generator(nn.Module):
    """[0, 1] mel (B, n_mels, T) -> waveform (B, 1, hop * T) in [-1, 1].

    One flat nn.Sequential named `model`, so that the state-dict keys (`model.<i>.…`) match the release.
    """

    def __init__(self, cfg: MelGANConfig = MelGANConfig()):
        super().__init__()
        self.cfg = cfg
        mult = 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [
            nn.ReflectionPad1d(3),
            WNConv1d(cfg.n_mels, mult * cfg.ngf, kernel_size=7, padding=0),
        ]
        for r in cfg.ratios:
            layers += [
                nn.LeakyReLU(0.2),
                WNConvTranspose1d(mult * cfg.ngf, mult * cfg.ngf // 2, kernel_size=2 * r, stride=r,
                                  padding=r // 2 + r % 2, output_padding=r % 2),
            ]
            layers += [ResnetBlock(mult * cfg.ngf // 2, dilation=3**j) for j in range(cfg.n_residual_layers)]
            mult //= 2
        layers += [
            nn.LeakyReLU(0.2),
            nn.ReflectionPad1d(3),
            WNConv1d(cfg.ngf, 1, kernel_size=7, padding=0),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)
        # melgan-neurips also calls weights_init (N(0, 0.02) on `.weight`), but with weight norm that writes into
        # the derived weight, which the next forward recomputes from g and v: it is a no-op, so we leave it out.

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.model(mel)


# -----------------------------------------------------------------------------------------------------------------
# loading and inference

def _config_from_state_dict(sd: dict[str, torch.Tensor]) -> MelGANConfig:
    """Infer the generator size from a bare state dict (the released `netG.pt` carries no config)."""
    if "model.1.weight_v" not in sd:
        raise ValueError("not a MelGAN generator state dict: no 'model.1.weight_v' key "
                         f"(first keys: {list(sd)[:5]})")
    first = sd["model.1.weight_v"]  # (16 * ngf, n_mels, 7) for 4 stages
    res_idx = sorted({int(k.split(".")[1]) for k in sd if ".block." in k})
    # The residual blocks of the first stage are the consecutive indices right after the first upsampler (model.3).
    n_res = 0
    while 4 + n_res in res_idx:
        n_res += 1
    return MelGANConfig(n_mels=first.shape[1], ngf=first.shape[0] // 16, n_residual_layers=n_res)


def load_melgan(path: str | os.PathLike, device: str | torch.device = "cpu") -> Generator:
    """Generator in eval mode from the released `netG.pt` (a bare state dict) or one of our `melgan.ckpt`."""
    obj = load_checkpoint(path, "MelGAN checkpoint", RELEASED_HINT)
    if obj.get("format") == CKPT_FORMAT:
        c = obj["config"]
        cfg = MelGANConfig(n_mels=c["n_mels"], ngf=c["ngf"], n_residual_layers=c["n_residual_layers"],
                           ratios=tuple(c["ratios"]))
        sd = obj["state_dict"]
    else:
        sd = obj
        cfg = _config_from_state_dict(sd)
    gen = Generator(cfg)
    gen.load_state_dict({k: v.float() for k, v in sd.items()})
    return gen.to(device).eval()


def _as_batch(mels01) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(mels01) if not torch.is_tensor(mels01) else mels01, dtype=torch.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected mels of shape [N, n_mels, T] (or [n_mels, T]), got {tuple(x.shape)}")
    return x


@torch.inference_mode()
def vocode(generator: Generator, mels01, batch_size: int = 16) -> np.ndarray:
    """[0, 1] mels [N, n_mels, T] -> float32 waveforms [N, hop * T], in chunks of batch_size."""
    x = _as_batch(mels01)
    if x.shape[1] != generator.cfg.n_mels:
        raise ValueError(f"generator expects {generator.cfg.n_mels} mel bins, got {x.shape[1]}")
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    outs = [generator(chunk.to(device)).squeeze(1).float().cpu() for chunk in x.split(batch_size)]
    generator.train(was_training)
    return torch.cat(outs).numpy().astype(np.float32, copy=False)


# -----------------------------------------------------------------------------------------------------------------
# Griffin-Lim fallback

def mel01_to_mel(mels01: np.ndarray) -> np.ndarray:
    """Undo design.md §2's scaling: [0, 1] -> linear mel magnitude (the clip and the 1e-5 floor are lost)."""
    db = np.asarray(mels01, dtype=np.float64) * 100.0 - 100.0 + 20.0
    return 10.0 ** (db / 20.0)


def griffin_lim(mels01, spec: MelSpec = MelSpec(), n_iter: int = 32, seed: int | None = 0) -> np.ndarray:
    """[0, 1] mels [N, n_mels, T] -> float32 waveforms [N, hop * T], as SpecVQGAN's `inv_transforms`:
    NNLS mel -> |STFT| (power 1), then librosa's Griffin-Lim (random phase init, seeded here for repeatability)."""
    x = _as_batch(mels01).numpy()
    if x.shape[1] != spec.n_mels:
        raise ValueError(f"spec has {spec.n_mels} mel bins, mels have {x.shape[1]}")
    mag = librosa.feature.inverse.mel_to_stft(mel01_to_mel(x).astype(np.float32), sr=spec.sample_rate,
                                              n_fft=spec.n_fft, power=1.0, fmin=spec.fmin, fmax=spec.fmax)
    wav = librosa.griffinlim(mag, n_iter=n_iter, hop_length=spec.hop_length, win_length=spec.n_fft,
                             window="hann", center=True, random_state=seed)
    # the centred iSTFT of T frames gives hop * (T - 1) samples; pad the tail to MelGAN's hop * T
    wav = np.pad(wav, [(0, 0), (0, spec.hop_length * x.shape[-1] - wav.shape[-1])])
    return wav.astype(np.float32)


VOCODERS = ("melgan", "griffin_lim")


def load_vocoder(kind: str, spec: MelSpec, melgan_ckpt: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu"):
    """The config's `vocoder.kind` as one function, [0, 1] mels [N, n_mels, T] -> waveforms [N, hop * T] at
    spec.sample_rate, so that callers do not each repeat the choice (MelGAN from its checkpoint, or Griffin-Lim)."""
    if kind == "griffin_lim":
        return lambda mels01: griffin_lim(mels01, spec)
    if kind != "melgan":
        raise ValueError(f"unknown vocoder {kind!r}: choose one of {', '.join(VOCODERS)}")
    if melgan_ckpt is None:
        raise ValueError(f"the MelGAN vocoder needs its checkpoint: {RELEASED_HINT}")
    generator = load_melgan(melgan_ckpt, device=device)
    return lambda mels01: vocode(generator, mels01)


# -----------------------------------------------------------------------------------------------------------------
# writing audio

def write_wav(path: str | os.PathLike, wav, sr: int = 22050) -> Path:
    """16-bit PCM wav, written atomically so a killed job never leaves a truncated file."""
    data = np.asarray(wav, dtype=np.float32).squeeze()
    if data.ndim != 1:
        raise ValueError(f"write_wav expects a mono waveform, got shape {np.shape(wav)}")
    pcm = np.round(np.clip(np.nan_to_num(data), -1.0, 1.0) * 32767.0).astype(np.int16)
    with atomic_path(path) as tmp:
        sf.write(tmp, pcm, sr, subtype="PCM_16", format="WAV")
    return Path(path)
