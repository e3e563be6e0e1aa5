"""Mel -> waveform (SPEC section 6): SpecVQGAN's MelGAN vocoder, its training, and a Griffin-Lim fallback.

The generator is layer for layer the melgan-neurips generator that SpecVQGAN trained on VGGSound, so the released
`netG.pt` / `best_netG.pt` state dict loads unchanged. Its input is the [0, 1] mel of SPEC section 2 as is:
SpecVQGAN's `VocoderMelGan.vocode` is called with `(spec + 1) / 2` and the vocoder was trained on mels made by the
same transform (`vocoder/mel2wav/extract_mel_spectrogram.py: TRANSFORMS`).

The vocoder never enters FID/MKL (computed on spectrograms); it makes the audio people listen to.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import librosa
import numpy as np
import soundfile as sf
import torch
import torch.nn as nn
import torch.nn.functional as F

from i2a.mel import MelSpec, mel_spectrogram

log = logging.getLogger(__name__)

RELEASED_URL = ("https://a3s.fi/swift/v1/AUTH_a235c0f452d648828f745589cde1219a/specvqgan_public/melgan_ckpt/netG.pt")
RELEASED_HINT = (f"download the released VGGSound MelGAN generator ({RELEASED_URL}, or `vocoder/logs/vggsound/"
                 "best_netG.pt` from github.com/v-iashin/SpecVQGAN), or train one with `train_melgan`")
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


class NLayerDiscriminator(nn.Module):
    """One scale of MelGAN's waveform discriminator: returns every layer's output (for feature matching)."""

    def __init__(self, ndf: int = 16, n_layers: int = 4, downsampling_factor: int = 4, max_channels: int = 1024):
        super().__init__()
        model = nn.ModuleDict()
        model["layer_0"] = nn.Sequential(nn.ReflectionPad1d(7), WNConv1d(1, ndf, kernel_size=15),
                                         nn.LeakyReLU(0.2, True))
        nf, stride = ndf, downsampling_factor
        nf_prev = nf
        for n in range(1, n_layers + 1):
            nf_prev, nf = nf, min(nf * stride, max_channels)
            model[f"layer_{n}"] = nn.Sequential(
                WNConv1d(nf_prev, nf, kernel_size=stride * 10 + 1, stride=stride, padding=stride * 5,
                         groups=max(nf_prev // 4, 1)),
                nn.LeakyReLU(0.2, True),
            )
        # As in melgan-neurips: this conv reads `nf_prev` channels, which equals `nf` only once the widths saturate
        # at max_channels (1024 there: true for the published ndf 16, n_layers 4); other sizes fail, so check early.
        if nf_prev != nf:
            raise ValueError(f"discriminator widths must saturate at max_channels={max_channels} (ndf={ndf}, "
                             f"n_layers={n_layers}, downsampling_factor={downsampling_factor} gives {nf_prev} -> "
                             f"{nf}); use ndf * factor**(n_layers-1) >= max_channels")
        nf_out = min(nf * 2, max_channels)
        model[f"layer_{n_layers + 1}"] = nn.Sequential(WNConv1d(nf_prev, nf_out, kernel_size=5, stride=1, padding=2),
                                                       nn.LeakyReLU(0.2, True))
        model[f"layer_{n_layers + 2}"] = WNConv1d(nf_out, 1, kernel_size=3, stride=1, padding=1)
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for layer in self.model.values():
            x = layer(x)
            outs.append(x)
        return outs


class Discriminator(nn.Module):
    """Multi-scale discriminator: the same architecture on the waveform, then on AvgPool-downsampled copies."""

    def __init__(self, num_D: int = 3, ndf: int = 16, n_layers: int = 4, downsampling_factor: int = 4,
                 max_channels: int = 1024):
        super().__init__()
        self.model = nn.ModuleDict({f"disc_{i}": NLayerDiscriminator(ndf, n_layers, downsampling_factor, max_channels)
                                    for i in range(num_D)})
        self.downsample = nn.AvgPool1d(4, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for disc in self.model.values():
            results.append(disc(x))
            x = self.downsample(x)
        return results


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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MelGAN checkpoint {path} not found: {RELEASED_HINT}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj.get("format") == CKPT_FORMAT:
        c = obj["config"]
        cfg = MelGANConfig(n_mels=c["n_mels"], ngf=c["ngf"], n_residual_layers=c["n_residual_layers"],
                           ratios=tuple(c["ratios"]))
        sd = obj["state_dict"]
    elif isinstance(obj, dict):
        sd = obj
        cfg = _config_from_state_dict(sd)
    else:
        raise ValueError(f"{path}: expected a state dict or an i2a MelGAN checkpoint, got {type(obj).__name__}")
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
    """Undo SPEC section 2's scaling: [0, 1] -> linear mel magnitude (the clip and the 1e-5 floor are lost)."""
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


# -----------------------------------------------------------------------------------------------------------------
# writing audio

def write_wav(path: str | os.PathLike, wav, sr: int = 22050) -> Path:
    """16-bit PCM wav, written to a temp file and renamed so a killed job never leaves a truncated file."""
    path = Path(path)
    data = np.asarray(wav, dtype=np.float32).squeeze()
    if data.ndim != 1:
        raise ValueError(f"write_wav expects a mono waveform, got shape {np.shape(wav)}")
    pcm = np.round(np.clip(np.nan_to_num(data), -1.0, 1.0) * 32767.0).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        sf.write(tmp, pcm, sr, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -----------------------------------------------------------------------------------------------------------------
# training

@dataclass
class VocoderTrainConfig:
    """melgan-neurips as SpecVQGAN ran it on VGGSound (`vocoder/logs/vggsound/args.yml`); shrink for demos."""

    ngf: int = 32
    n_residual_layers: int = 3
    num_D: int = 3
    ndf: int = 16
    n_layers_D: int = 4
    downsamp_factor: int = 4
    max_channels_D: int = 1024  # melgan-neurips' width cap; lower it only for tiny CPU runs (the 1024x1024 conv
    #                             is most of a CPU step)
    lambda_feat: float = 10.0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    batch_size: int = 64
    segment_length: int = 8192  # samples; a multiple of the hop (8192 -> 32 mel frames)
    max_steps: int = 100_000
    max_seconds: float | None = None  # wall-clock budget; stops at whichever limit comes first
    peak_normalize: bool = True  # each wav scaled to peak 0.95 (mel2wav/dataset.py)
    amplitude_range: tuple[float, float] | None = (0.3, 1.0)  # random gain per example (augmentation)
    save_every: int = 1000  # steps; melgan.ckpt keeps the interval with the lowest mean mel L1 (best_netG.pt)
    log_every: int = 100
    seed: int = 0
    device: str = "cpu"
    mel: MelSpec = field(default_factory=MelSpec)


def segment_mel(segments: np.ndarray, spec: MelSpec = MelSpec()) -> np.ndarray:
    """[0, 1] mels (B, n_mels, L // hop) of waveform segments (B, L): the centred STFT gives L // hop + 1 frames;
    the last is dropped so frame k sits at sample k * hop, which is what the generator's output aligns with."""
    segments = np.atleast_2d(segments)
    n_frames = segments.shape[-1] // spec.hop_length
    seg_spec = replace(spec, keep_frames=n_frames)
    return np.stack([mel_spectrogram(s, seg_spec) for s in segments])


class _SegmentSampler:
    """Random fixed-length segments (zero-padded when a wav is shorter), epoch by epoch in shuffled order."""

    def __init__(self, wavs: Sequence[np.ndarray], cfg: VocoderTrainConfig, rng: np.random.Generator):
        self.wavs = []
        for i, w in enumerate(wavs):
            w = np.asarray(w, dtype=np.float32)
            if w.ndim != 1 or w.size == 0:
                raise ValueError(f"wav {i}: expected a non-empty 1-D waveform, got shape {w.shape}")
            if cfg.peak_normalize:
                w = 0.95 * w / max(float(np.abs(w).max()), 1e-8)
            self.wavs.append(w)
        if not self.wavs:
            raise ValueError("train_melgan needs at least one waveform")
        self.cfg, self.rng = cfg, rng
        self.order: list[int] = []

    def _next_index(self) -> int:
        if not self.order:
            self.order = list(self.rng.permutation(len(self.wavs)))
        return int(self.order.pop())

    def batch(self) -> np.ndarray:
        L = self.cfg.segment_length
        out = np.zeros((self.cfg.batch_size, L), dtype=np.float32)
        for b in range(self.cfg.batch_size):
            w = self.wavs[self._next_index()]
            if w.size >= L:
                start = int(self.rng.integers(0, w.size - L + 1))
                out[b] = w[start : start + L]
            else:
                out[b, : w.size] = w
            if self.cfg.amplitude_range is not None:
                out[b] *= self.rng.uniform(*self.cfg.amplitude_range)
        return out


def generator_config(cfg: VocoderTrainConfig) -> MelGANConfig:
    return MelGANConfig(n_mels=cfg.mel.n_mels, ngf=cfg.ngf, n_residual_layers=cfg.n_residual_layers)


def _save_checkpoint(path: Path, gen: Generator, disc: Discriminator, cfg: VocoderTrainConfig, step: int,
                     mel_l1: float) -> None:
    gcfg = asdict(gen.cfg)
    gcfg["ratios"] = list(gcfg["ratios"])
    tcfg = asdict(cfg)
    tcfg["betas"] = list(tcfg["betas"])
    tcfg["amplitude_range"] = None if cfg.amplitude_range is None else list(cfg.amplitude_range)
    ckpt = {"format": CKPT_FORMAT, "config": gcfg, "train_config": tcfg, "step": step, "mel_l1": mel_l1,
            "state_dict": gen.state_dict(), "discriminator": disc.state_dict()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def train_melgan(wavs: Sequence[np.ndarray], cfg: VocoderTrainConfig, out_dir: str | os.PathLike) -> Path:
    """Train MelGAN (hinge GAN + feature matching) on random segments of `wavs` (1-D float32 at cfg.mel's rate).

    Writes `out_dir/metrics.csv` (one row per step) and `out_dir/melgan.ckpt` (the generator of the save interval
    with the lowest mean mel L1, as SpecVQGAN's `best_netG.pt`); returns the checkpoint path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gcfg = generator_config(cfg)
    if gcfg.hop_length != cfg.mel.hop_length:
        raise ValueError(f"generator upsamples by {gcfg.hop_length} but the mel hop is {cfg.mel.hop_length}")
    if cfg.segment_length % cfg.mel.hop_length:
        raise ValueError(f"segment_length {cfg.segment_length} must be a multiple of the hop {cfg.mel.hop_length}")

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sampler = _SegmentSampler(wavs, cfg, rng)
    device = torch.device(cfg.device)
    netG = Generator(gcfg).to(device).train()
    netD = Discriminator(cfg.num_D, cfg.ndf, cfg.n_layers_D, cfg.downsamp_factor, cfg.max_channels_D)
    netD = netD.to(device).train()
    optG = torch.optim.Adam(netG.parameters(), lr=cfg.lr, betas=cfg.betas)
    optD = torch.optim.Adam(netD.parameters(), lr=cfg.lr, betas=cfg.betas)
    feat_wt = (1.0 / cfg.num_D) * (4.0 / (cfg.n_layers_D + 1))

    ckpt_path = out_dir / "melgan.ckpt"
    metrics_path = out_dir / "metrics.csv"
    fields = ["step", "loss_D", "loss_G", "loss_feat", "mel_l1", "seconds"]
    best = math.inf
    interval: list[float] = []
    log.info("training MelGAN (ngf %d, %d res. layers) on %d wavs: batch %d x %d samples, up to %d steps%s",
             cfg.ngf, cfg.n_residual_layers, len(sampler.wavs), cfg.batch_size, cfg.segment_length, cfg.max_steps,
             "" if cfg.max_seconds is None else f" / {cfg.max_seconds:.0f} s")
    t0 = time.perf_counter()
    step = 0
    with open(metrics_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        while step < cfg.max_steps and (cfg.max_seconds is None or time.perf_counter() - t0 < cfg.max_seconds):
            wav = sampler.batch()
            mel = torch.from_numpy(segment_mel(wav, cfg.mel)).to(device)
            x_real = torch.from_numpy(wav).unsqueeze(1).to(device)
            x_fake = netG(mel)

            # discriminator: hinge loss on the last layer of every scale
            d_fake = netD(x_fake.detach())
            d_real = netD(x_real)
            loss_D = sum(F.relu(1 + s[-1]).mean() for s in d_fake) + sum(F.relu(1 - s[-1]).mean() for s in d_real)
            optD.zero_grad(set_to_none=True)
            loss_D.backward()
            optD.step()

            # generator: adversarial + feature matching against the (pre-update) real features, as melgan-neurips
            # (D's parameters are frozen for this pass: their gradients would be discarded anyway, and the 1024x1024
            # conv's weight gradient is most of a CPU step)
            netD.requires_grad_(False)
            d_fake = netD(x_fake)
            loss_G = sum(-s[-1].mean() for s in d_fake)
            loss_feat = sum(feat_wt * F.l1_loss(d_fake[i][j], d_real[i][j].detach())
                            for i in range(cfg.num_D) for j in range(len(d_fake[i]) - 1))
            optG.zero_grad(set_to_none=True)
            (loss_G + cfg.lambda_feat * loss_feat).backward()
            optG.step()
            netD.requires_grad_(True)
            step += 1

            # the monitored quality: L1 between the input mel and the mel of the generated audio
            mel_l1 = float(np.abs(segment_mel(x_fake.detach().squeeze(1).cpu().numpy(), cfg.mel)
                                  - mel.cpu().numpy()).mean())
            row = {"step": step, "loss_D": loss_D.item(), "loss_G": loss_G.item(), "loss_feat": loss_feat.item(),
                   "mel_l1": mel_l1, "seconds": round(time.perf_counter() - t0, 3)}
            writer.writerow(row)
            interval.append(mel_l1)
            if not all(math.isfinite(row[k]) for k in ("loss_D", "loss_G", "loss_feat")):
                fh.flush()
                raise FloatingPointError(f"MelGAN training diverged at step {step}: {row}")
            if step % cfg.log_every == 0 or step == 1:
                fh.flush()
                log.info("step %d | D %.4f | G %.4f | feat %.4f | mel L1 %.4f | %.2f s/step", step, row["loss_D"],
                         row["loss_G"], row["loss_feat"], mel_l1, row["seconds"] / step)
            if step % cfg.save_every == 0:
                best = _maybe_save(ckpt_path, netG, netD, cfg, step, interval, best)
                interval = []
        if interval or not ckpt_path.exists():
            best = _maybe_save(ckpt_path, netG, netD, cfg, step, interval, best)
    elapsed = time.perf_counter() - t0
    log.info("MelGAN: %d steps in %.1f s (%.3f s/step); best interval mel L1 %.4f -> %s", step, elapsed,
             elapsed / max(step, 1), best, ckpt_path)
    return ckpt_path


def _maybe_save(path: Path, gen: Generator, disc: Discriminator, cfg: VocoderTrainConfig, step: int,
                interval: list[float], best: float) -> float:
    score = float(np.mean(interval)) if interval else math.inf
    if score < best or not path.exists():
        _save_checkpoint(path, gen, disc, cfg, step, score)
        log.info("step %d: saved %s (interval mel L1 %.4f)", step, path, score)
        return min(score, best)
    return best
