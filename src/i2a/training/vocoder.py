"""Training of the MelGAN vocoder (design.md §6) as a Lightning module: melgan-neurips as SpecVQGAN ran it.

Hinge GAN with a multi-scale waveform discriminator and feature matching, on random fixed-length segments of
the training wavs. Training is counted in steps; an "epoch" here is one save interval (`save_every` steps), after
which the state is checkpointed (a killed job resumes from there exactly: the segments of step k are drawn from
a generator seeded by (seed, k)) and the generator of the interval with the lowest mean mel L1 is kept, as
SpecVQGAN's `best_netG.pt`.
"""
from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from i2a.data.mel import MelSpec, mel_spectrogram
from i2a.models.vocoder import CKPT_FORMAT, Generator, MelGANConfig, WNConv1d
from i2a.training.loop import BEST, TrainingState, fingerprint, fit, metrics_writer, save_best

log = logging.getLogger(__name__)

# the modules whose source the training state is bound to, besides the loop's (i2a.training.loop.fingerprint)
TRAINING_CODE = ("i2a.data.mel", "i2a.models.vocoder", __name__)

METRIC_FIELDS = ["step", "loss_D", "loss_G", "loss_feat", "mel_l1", "seconds"]


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

    def settings(self) -> dict[str, Any]:
        """What changes the result (not the device, the time budget or logging)."""
        d = json.loads(json.dumps(asdict(self), default=list))
        for cosmetic in ("device", "log_every", "max_seconds"):
            d.pop(cosmetic)
        return d


def segment_mel(segments: np.ndarray, spec: MelSpec = MelSpec()) -> np.ndarray:
    """[0, 1] mels (B, n_mels, L // hop) of waveform segments (B, L): the centred STFT gives L // hop + 1 frames;
    the last is dropped so frame k sits at sample k * hop, which is what the generator's output aligns with."""
    segments = np.atleast_2d(segments)
    n_frames = segments.shape[-1] // spec.hop_length
    seg_spec = replace(spec, keep_frames=n_frames)
    return np.stack([mel_spectrogram(s, seg_spec) for s in segments])


class SegmentBatches(torch.utils.data.IterableDataset):
    """The batches of one save interval: (mel, wav) of random segments, the draw for step k seeded by (seed, k),
    so that any interval can be replayed exactly (a resumed job trains on what an uninterrupted one would)."""

    def __init__(self, wavs: Sequence[np.ndarray], cfg: VocoderTrainConfig):
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
        self.cfg, self.interval = cfg, 0

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, L = self.cfg, self.cfg.segment_length
        rng = np.random.default_rng([cfg.seed, step])
        out = np.zeros((cfg.batch_size, L), dtype=np.float32)
        picks = rng.choice(len(self.wavs), cfg.batch_size, replace=cfg.batch_size > len(self.wavs))
        for b, i in enumerate(picks):
            w = self.wavs[i]
            if w.size >= L:
                start = int(rng.integers(0, w.size - L + 1))
                out[b] = w[start:start + L]
            else:
                out[b, :w.size] = w
            if cfg.amplitude_range is not None:
                out[b] *= rng.uniform(*cfg.amplitude_range)
        return torch.from_numpy(segment_mel(out, cfg.mel)), torch.from_numpy(out).unsqueeze(1)

    def __iter__(self):
        first = self.interval * self.cfg.save_every
        for step in range(first, min(first + self.cfg.save_every, self.cfg.max_steps)):
            yield self.batch(step)


def generator_config(cfg: VocoderTrainConfig) -> MelGANConfig:
    return MelGANConfig(n_mels=cfg.mel.n_mels, ngf=cfg.ngf, n_residual_layers=cfg.n_residual_layers)


class MelGANModule(pl.LightningModule):
    def __init__(self, cfg: VocoderTrainConfig, batches: SegmentBatches, state: TrainingState):
        super().__init__()
        self.automatic_optimization = False
        self.cfg, self.batches, self.state = cfg, batches, state
        self.netG = Generator(generator_config(cfg))
        self.netD = Discriminator(cfg.num_D, cfg.ndf, cfg.n_layers_D, cfg.downsamp_factor, cfg.max_channels_D)
        self.feat_wt = (1.0 / cfg.num_D) * (4.0 / (cfg.n_layers_D + 1))
        self.step, self.best, self.history = 0, math.inf, []
        self.write_metrics = metrics_writer(state.folder / "metrics.csv", METRIC_FIELDS)
        self._t0 = time.perf_counter()

    def configure_optimizers(self):
        return [torch.optim.Adam(self.netG.parameters(), lr=self.cfg.lr, betas=self.cfg.betas),
                torch.optim.Adam(self.netD.parameters(), lr=self.cfg.lr, betas=self.cfg.betas)]

    def train_dataloader(self):
        self.batches.interval = self.current_epoch
        return torch.utils.data.DataLoader(self.batches, batch_size=None)

    def training_step(self, batch, batch_idx: int) -> None:
        cfg, (optG, optD) = self.cfg, self.optimizers()
        mel, x_real = batch
        x_fake = self.netG(mel)

        # discriminator: hinge loss on the last layer of every scale
        d_fake = self.netD(x_fake.detach())
        d_real = self.netD(x_real)
        loss_D = sum(F.relu(1 + s[-1]).mean() for s in d_fake) + sum(F.relu(1 - s[-1]).mean() for s in d_real)
        optD.zero_grad(set_to_none=True)
        self.manual_backward(loss_D)
        optD.step()

        # generator: adversarial + feature matching against the (pre-update) real features, as melgan-neurips
        # (D's parameters are frozen for this pass: their gradients would be discarded anyway, and the 1024x1024
        # conv's weight gradient is most of a CPU step)
        self.netD.requires_grad_(False)
        d_fake = self.netD(x_fake)
        loss_G = sum(-s[-1].mean() for s in d_fake)
        loss_feat = sum(self.feat_wt * F.l1_loss(d_fake[i][j], d_real[i][j].detach())
                        for i in range(cfg.num_D) for j in range(len(d_fake[i]) - 1))
        optG.zero_grad(set_to_none=True)
        self.manual_backward(loss_G + cfg.lambda_feat * loss_feat)
        optG.step()
        self.netD.requires_grad_(True)
        self.step += 1

        # the monitored quality: L1 between the input mel and the mel of the generated audio
        mel_l1 = float(np.abs(segment_mel(x_fake.detach().squeeze(1).cpu().numpy(), cfg.mel) - mel.cpu().numpy()).mean())
        row = {"step": self.step, "loss_D": loss_D.item(), "loss_G": loss_G.item(), "loss_feat": loss_feat.item(),
               "mel_l1": mel_l1, "seconds": round(time.perf_counter() - self._t0, 3)}
        self.history.append(row)
        if not all(math.isfinite(row[k]) for k in ("loss_D", "loss_G", "loss_feat")):
            self.write_metrics(self.history)
            raise FloatingPointError(f"MelGAN training diverged at step {self.step}: {row}")
        if self.step % cfg.log_every == 0 or self.step == 1:
            log.info("step %d | D %.4f | G %.4f | feat %.4f | mel L1 %.4f | %.2f s/step", self.step, row["loss_D"],
                     row["loss_G"], row["loss_feat"], mel_l1, row["seconds"] / self.step)

    def on_train_epoch_end(self) -> None:
        """The end of a save interval: keep the generator if its mean mel L1 is the best so far."""
        interval = [r["mel_l1"] for r in self.history if r["step"] > self.current_epoch * self.cfg.save_every]
        score = float(np.mean(interval)) if interval else math.inf
        if self.trainer.is_global_zero:
            self.write_metrics(self.history)
        if score < self.best:
            self.best = score
            save_best(self, self.state, self.artifact(score))
            log.info("step %d: kept the generator (interval mel L1 %.4f)", self.step, score)

    def artifact(self, mel_l1: float) -> dict[str, Any]:
        gcfg = asdict(self.netG.cfg)
        gcfg["ratios"] = list(gcfg["ratios"])
        return {"format": CKPT_FORMAT, "config": gcfg, "train_config": self.cfg.settings(), "step": self.step,
                "mel_l1": mel_l1, "state_dict": {k: v.detach().cpu() for k, v in self.netG.state_dict().items()},
                "discriminator": {k: v.detach().cpu() for k, v in self.netD.state_dict().items()}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["melgan_training"] = {"step": self.step, "best": self.best, "history": self.history}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint["melgan_training"]
        self.step, self.best, self.history = saved["step"], saved["best"], list(saved["history"])


def train_melgan(wavs: Sequence[np.ndarray], cfg: VocoderTrainConfig, out_dir: str | Path,
                 state_dir: str | Path | None = None, inputs: Sequence[str | Path] = (),
                 callbacks: Sequence[Any] = ()) -> Path:
    """Train MelGAN (hinge GAN + feature matching) on random segments of `wavs` (1-D float32 at cfg.mel's rate).

    Writes `out_dir/metrics.csv` (one row per step) and `out_dir/melgan.ckpt` (the generator of the save interval
    with the lowest mean mel L1, as SpecVQGAN's `best_netG.pt`) once training is complete; returns the checkpoint
    path. A killed job resumes from `state_dir` (default out_dir/state), bound to `inputs` and the settings.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gcfg = generator_config(cfg)
    if gcfg.hop_length != cfg.mel.hop_length:
        raise ValueError(f"generator upsamples by {gcfg.hop_length} but the mel hop is {cfg.mel.hop_length}")
    if cfg.segment_length % cfg.mel.hop_length:
        raise ValueError(f"segment_length {cfg.segment_length} must be a multiple of the hop {cfg.mel.hop_length}")
    state = TrainingState(state_dir or out_dir / "state", fingerprint(inputs, cfg.settings(), TRAINING_CODE))
    torch.manual_seed(cfg.seed)
    batches = SegmentBatches(wavs, cfg)
    module = MelGANModule(cfg, batches, state)
    log.info("training MelGAN (ngf %d, %d res. layers) on %d wavs: batch %d x %d samples, up to %d steps%s",
             cfg.ngf, cfg.n_residual_layers, len(batches.wavs), cfg.batch_size, cfg.segment_length, cfg.max_steps,
             "" if cfg.max_seconds is None else f" / {cfg.max_seconds:.0f} s")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        fit(module, state, max_epochs=max(1, math.ceil(cfg.max_steps / cfg.save_every)),
            accelerator="gpu" if cfg.device.startswith("cuda") else "cpu", log_every=10**9,
            reload_dataloaders_every_n_epochs=1, callbacks=callbacks,
            max_time=None if cfg.max_seconds is None else {"seconds": cfg.max_seconds})
    if not (state.folder / BEST).is_file():  # no step ran (max_steps 0): the initial generator
        save_best(module, state, module.artifact(math.inf))
    saved = torch.load(state.folder / BEST, map_location="cpu", weights_only=True)
    state.mark_done({"step": saved["step"], "mel_l1": saved["mel_l1"]})
    if (state.folder / "metrics.csv").is_file():
        state.publish("metrics.csv", out_dir / "metrics.csv")
    path = state.publish(BEST, out_dir / "melgan.ckpt")
    log.info("MelGAN: %d steps in %.1f s; kept step %d (interval mel L1 %.4f) -> %s", module.step,
             time.perf_counter() - t0, saved["step"], saved["mel_l1"], path)
    return path


def train_from_shards(train_shards: Sequence[str | Path], train: dict[str, Any], audio: dict[str, Any],
                      out_dir: str | Path, device=None) -> Path:
    """The workflow's train_melgan job: a MelGAN of the config's `vocoder.train` settings on the training wavs."""
    from i2a.data.clips import Shard, mel_spec_from_config, read_wav
    from i2a.infra.device import pick_device

    mel = mel_spec_from_config(audio)
    paths = [p for d in train_shards for p in Shard(d).wav_paths()]
    wavs = [read_wav(p, mel.sample_rate) for p in paths]
    cfg = VocoderTrainConfig(ngf=train["ngf"], n_residual_layers=train["n_residual_layers"], max_steps=train["steps"],
                             batch_size=train["batch_size"], segment_length=train["segment_length"],
                             seed=train["seed"], mel=mel, device=str(pick_device(device)))
    log.info("training on %d wavs", len(wavs))
    return train_melgan(wavs, cfg, out_dir, inputs=paths)
