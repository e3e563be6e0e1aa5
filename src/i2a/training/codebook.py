"""Training of the spectrogram codebook (design.md §4) as a Lightning module.

SpecVQGAN's `VQLPAPSWithDiscriminator` with the perceptual term off: L1 + codebook loss + a hinge PatchGAN
discriminator switched on at `disc_start`, two Adam optimisers stepped by hand each batch. Not SpecVQGAN's, and
off by default, the standard remedies against codebook collapse for new codebooks: k-means initialisation of
the codes from encoder outputs, and restarts of dead codes (unused codes moved onto recent encoder outputs)
after every epoch or every N steps. Every epoch logs the codes used and the perplexity on the validation set;
the kept checkpoint (lowest validation L1) comes with a summary of the same.
"""
from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from i2a.infra.atomic import write_text
from i2a.models.codebook import VQGANConfig, VQModel, check_mels, model_input
from i2a.training.loop import BEST, EpochSampler, TrainingState, fingerprint, fit, metrics_writer, save_best

log = logging.getLogger(__name__)

# the modules whose source the training state is bound to, besides the loop's (i2a.training.loop.fingerprint)
TRAINING_CODE = ("i2a.models.codebook", __name__)


class NLayerDiscriminator(nn.Module):
    """Pix2Pix PatchGAN as taming uses it (BatchNorm, LeakyReLU 0.2, 4x4 kernels, N(0, 0.02) conv init)."""

    def __init__(self, in_channels: int = 1, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, disc_weight: float,
                        min_weight: float = 0.0, max_weight: float = 1e4) -> torch.Tensor:
    """taming's balance of GAN and reconstruction gradients at the decoder's last layer:
    clamp(|grad rec| / (|grad g| + 1e-4), min, max) * disc_weight (VQLPAPSWithDiscriminator.calculate_adaptive_weight).
    """
    if min_weight == max_weight:  # the clamp makes the gradient ratio irrelevant: skip two backward passes
        return torch.tensor(min_weight * disc_weight, device=rec_loss.device)
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    ratio = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return ratio.clamp(min_weight, max_weight).detach() * disc_weight


@dataclass
class CodebookTrainConfig:
    """Training of the codebook; defaults are SpecVQGAN's vas_codebook.yaml (perceptual term off, design.md §4)."""

    batch_size: int = 3
    base_lr: float = 1e-6  # lr = base_lr * batch_size * n_gpus * accumulate (SpecVQGAN's train.py)
    n_gpus: int = 1  # only scales the lr the way SpecVQGAN did; training itself runs on one device
    accumulate_grad_batches: int = 1  # likewise only for the lr formula
    betas: tuple[float, float] = (0.5, 0.9)
    max_epochs: int = 100
    disc_start: int = 2001  # the discriminator loss counts from this batch (0-based step, taming's adopt_weight)
    disc_weight: float = 0.8
    disc_factor: float = 1.0
    disc_ndf: int = 64
    disc_num_layers: int = 3
    # taming's adaptive weight is clamp(|grad rec| / (|grad g| + 1e-4), min, max) * disc_weight; vas_codebook.yaml
    # sets min = max = 1.0, so the released model used a constant disc_weight (taming's own defaults: 0, 1e4)
    min_adapt_weight: float = 1.0
    max_adapt_weight: float = 1.0
    codebook_weight: float = 1.0
    # Not SpecVQGAN's (off by default): remedies against codebook collapse for new codebooks.
    kmeans_init: bool = False  # codes start as k-means centroids of encoder outputs of the first batches
    restart_dead_codes: bool = False  # after each epoch, codes no batch of it used move onto encoder outputs
    restart_every_steps: int = 0  # > 0: also every that many steps, codes unused in those steps
    seed: int = 0
    num_workers: int = 0
    accelerator: str = "auto"
    log_every_steps: int = 500

    @property
    def learning_rate(self) -> float:
        return self.base_lr * self.batch_size * self.n_gpus * self.accumulate_grad_batches

    def settings(self) -> dict[str, Any]:
        """What changes the result (not workers, device or logging)."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        for cosmetic in ("num_workers", "accelerator", "log_every_steps"):
            d.pop(cosmetic)
        return d


class MelDataset(torch.utils.data.Dataset):
    """Model inputs (1, 80, width) in [-1, 1] of a (N, 80, T) [0, 1] array-like; indices may be (index, epoch)."""

    def __init__(self, mels, width: int):
        self.mels, self.width = mels, width

    def __len__(self) -> int:
        return len(self.mels)

    def __getitem__(self, i) -> torch.Tensor:
        i = i[0] if isinstance(i, tuple) else i
        return model_input(self.mels, [i], self.width)[0]


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code usage: the number of equally used codes that would give the same entropy."""
    p = counts.double() / max(int(counts.sum()), 1)
    return float(torch.exp(-(p * torch.log(p + 1e-10)).sum()))


@torch.no_grad()
def kmeans(vectors: torch.Tensor, k: int, iterations: int = 10, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means of (N, D) vectors, initialised with k distinct random vectors (k-means++ is not needed
    for a warm start); an emptied cluster takes a random vector."""
    generator = torch.Generator().manual_seed(seed)
    if len(vectors) < k:
        vectors = vectors[torch.randint(len(vectors), (k,), generator=generator)]
    centres = vectors[torch.randperm(len(vectors), generator=generator)[:k]].clone()
    for _ in range(iterations):
        assign = torch.cdist(vectors, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, vectors)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        centres = torch.where(empty[:, None], vectors[torch.randint(len(vectors), (k,), generator=generator)],
                              sums / counts.clamp(min=1)[:, None])
    return centres


class CodebookModule(pl.LightningModule):
    """Two optimisers stepped by hand each batch (autoencoder, then discriminator), as SpecVQGAN did."""

    def __init__(self, model: VQModel, tcfg: CodebookTrainConfig, train_ds, valid_ds, state: TrainingState):
        super().__init__()
        self.automatic_optimization = False
        self.model, self.tcfg, self.state = model, tcfg, state
        self.train_ds, self.valid_ds = train_ds, valid_ds
        self.discriminator = NLayerDiscriminator(model.cfg.out_ch, tcfg.disc_ndf, tcfg.disc_num_layers)
        n_embed = model.cfg.n_embed
        self.step = 0  # batches seen; Lightning's global_step counts both optimisers' steps
        self.best = math.inf
        self.history: list[dict[str, Any]] = []
        self.write_metrics = metrics_writer(state.folder / "metrics.csv")
        self._train_sums: dict[str, float] = {}
        self.register_buffer("epoch_counts", torch.zeros(n_embed, dtype=torch.long))  # codes used this epoch
        self.register_buffer("window_counts", torch.zeros(n_embed, dtype=torch.long))  # ... since the last restart
        self._last_batch: torch.Tensor | None = None
        self._val: dict[str, Any] = {}
        self._t0 = time.time()

    # -------------------------------------------------------------------------------- data
    def _loader(self, ds, shuffle: bool):
        sampler = EpochSampler(len(ds), shuffle, self.tcfg.seed)
        sampler.set_epoch(self.current_epoch)
        return torch.utils.data.DataLoader(ds, batch_size=self.tcfg.batch_size, sampler=sampler,
                                           num_workers=self.tcfg.num_workers)

    def train_dataloader(self):
        return self._loader(self.train_ds, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.valid_ds, shuffle=False)

    def configure_optimizers(self):
        lr = self.tcfg.learning_rate
        return [torch.optim.Adam(self.model.parameters(), lr=lr, betas=self.tcfg.betas),
                torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=self.tcfg.betas)]

    # -------------------------------------------------------------------------------- anti-collapse
    @torch.no_grad()
    def on_train_start(self) -> None:
        if self.tcfg.kmeans_init and self.step == 0:  # a fresh start, not a resumed one
            n_embed = self.model.cfg.n_embed
            latents, batches = [], iter(self.train_dataloader())
            while sum(len(z) for z in latents) < 20 * n_embed:
                batch = next(batches, None)
                if batch is None:
                    break
                z = self.model.pre_quant(batch.to(self.device))
                latents.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float().cpu())
            vectors = torch.cat(latents)
            centres = kmeans(vectors, n_embed, seed=self.tcfg.seed)
            self.model.quantize.embedding.weight.copy_(centres.to(self.device))
            log.info("codes initialised by k-means of %d encoder outputs", len(vectors))

    @torch.no_grad()
    def restart_dead_codes(self, counts: torch.Tensor, when: str) -> None:
        """Move the codes `counts` says were unused onto encoder outputs of the last batch (seeded draw)."""
        dead = torch.nonzero(counts == 0).flatten()
        if not len(dead) or self._last_batch is None:
            return
        z = self.model.pre_quant(self._last_batch)
        vectors = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        generator = torch.Generator().manual_seed(self.tcfg.seed * 100_003 + self.step)
        pick = torch.randint(len(vectors), (len(dead),), generator=generator).to(vectors.device)
        self.model.quantize.embedding.weight[dead.to(vectors.device)] = vectors[pick]
        log.info("%s: %d unused codes moved onto encoder outputs of the last batch", when, len(dead))

    # -------------------------------------------------------------------------------- steps
    def training_step(self, x: torch.Tensor, batch_idx: int) -> None:
        tcfg = self.tcfg
        opt_ae, opt_d = self.optimizers()
        disc_on = self.step >= tcfg.disc_start and tcfg.disc_factor > 0
        # autoencoder
        xrec, qloss, indices = self.model(x)
        used = torch.bincount(indices.flatten(), minlength=self.model.cfg.n_embed)
        self.epoch_counts += used
        self.window_counts += used
        self._last_batch = x.detach()
        rec_loss = (x - xrec).abs().mean()
        loss = rec_loss + tcfg.codebook_weight * qloss
        g_loss = d_weight = d_loss = torch.zeros((), device=x.device)
        if disc_on:
            self.discriminator.requires_grad_(False)
            g_loss = -self.discriminator(xrec).mean()
            d_weight = adaptive_gan_weight(rec_loss, g_loss, self.model.last_layer, tcfg.disc_weight,
                                           tcfg.min_adapt_weight, tcfg.max_adapt_weight)
            loss = loss + d_weight * tcfg.disc_factor * g_loss
        opt_ae.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_ae.step()
        # discriminator, on the same reconstruction (SpecVQGAN re-ran the updated autoencoder for it)
        if disc_on:
            self.discriminator.requires_grad_(True)
            d_loss = tcfg.disc_factor * hinge_d_loss(self.discriminator(x.detach()), self.discriminator(xrec.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()
        self.step += 1
        for k, v in (("rec_loss", rec_loss), ("codebook_loss", qloss), ("g_loss", g_loss),
                     ("d_weight", d_weight), ("disc_loss", d_loss)):
            self._train_sums[k] = self._train_sums.get(k, 0.0) + float(v.detach())
        self._train_sums["n"] = self._train_sums.get("n", 0) + 1
        if tcfg.restart_every_steps and self.step % tcfg.restart_every_steps == 0:
            self.restart_dead_codes(self.window_counts, f"step {self.step}")
            self.window_counts.zero_()
        if tcfg.log_every_steps and self.step % tcfg.log_every_steps == 0:
            n = self._train_sums["n"]
            log.info("epoch %d step %d: rec %.4f codebook %.4f disc %.4f", self.current_epoch + 1, self.step,
                     self._train_sums["rec_loss"] / n, self._train_sums["codebook_loss"] / n,
                     self._train_sums["disc_loss"] / n)

    def on_validation_epoch_start(self) -> None:
        self._val = {"rec": 0.0, "codebook": 0.0, "n": 0,
                     "counts": torch.zeros(self.model.cfg.n_embed, dtype=torch.long, device=self.device)}

    def validation_step(self, x: torch.Tensor, batch_idx: int) -> None:
        xrec, qloss, indices = self.model(x)
        b = x.shape[0]
        self._val["rec"] += float((x - xrec).abs().mean()) * b
        self._val["codebook"] += float(qloss) * b
        self._val["n"] += b
        self._val["counts"] += torch.bincount(indices.flatten(), minlength=self.model.cfg.n_embed)

    def on_train_epoch_end(self) -> None:
        # runs after this epoch's validation loop
        n, v = max(self._train_sums.pop("n", 0), 1), self._val
        row = {"epoch": self.current_epoch, "step": self.step,
               **{f"train_{k}": s / n for k, s in self._train_sums.items()},
               "train_codes_used": int((self.epoch_counts > 0).sum()),
               "val_rec_loss": v["rec"] / v["n"], "val_codebook_loss": v["codebook"] / v["n"],
               "val_codes_used": int((v["counts"] > 0).sum()), "val_perplexity": perplexity(v["counts"].cpu()),
               "seconds": time.time() - self._t0}
        self._train_sums = {}
        self.history.append(row)
        improved = row["val_rec_loss"] < self.best
        if improved:
            self.best = row["val_rec_loss"]
            save_best(self, self.state, {
                "state_dict": {k: t.detach().cpu() for k, t in self.model.state_dict().items()},
                "config": self.model.cfg.to_dict(), "train_config": self.tcfg.settings(),
                **{k: row[k] for k in ("epoch", "step", "val_rec_loss", "val_codes_used", "val_perplexity")}})
        if self.trainer.is_global_zero:
            self.write_metrics(self.history)
        if self.tcfg.restart_dead_codes:
            self.restart_dead_codes(self.epoch_counts, f"epoch {row['epoch'] + 1}")
        self.epoch_counts.zero_()
        log.info("epoch %d/%d (step %d, %.0f s): train rec %.4f codebook %.4f | val rec %.4f%s | codes used "
                 "%d/%d, perplexity %.1f", row["epoch"] + 1, self.tcfg.max_epochs, self.step, row["seconds"],
                 row["train_rec_loss"], row["train_codebook_loss"], row["val_rec_loss"],
                 " (best, saved)" if improved else "", row["val_codes_used"], self.model.cfg.n_embed,
                 row["val_perplexity"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["codebook_training"] = {"step": self.step, "best": self.best, "history": self.history}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint["codebook_training"]
        self.step, self.best, self.history = saved["step"], saved["best"], list(saved["history"])


def codebook_summary(checkpoint: dict[str, Any], n_embed: int) -> dict[str, Any]:
    """What the report shows of a trained codebook: the kept epoch and how well it uses its codes."""
    return {"epoch": checkpoint["epoch"] + 1, "step": checkpoint["step"], "codes": n_embed,
            "codes_used": checkpoint["val_codes_used"], "perplexity": checkpoint["val_perplexity"],
            "val_rec_loss": checkpoint["val_rec_loss"]}


def train_codebook(train_mels, valid_mels, model_cfg: VQGANConfig, train_cfg: CodebookTrainConfig,
                   out_dir: str | Path, state_dir: str | Path | None = None,
                   inputs: Sequence[str | Path] = (), callbacks: Sequence[Any] = ()) -> Path:
    """Train a codebook on (N, 80, T) [0, 1] mels (numpy or ShardedArray); returns out_dir/codebook.ckpt.

    The checkpoint is the epoch with the lowest validation L1 and carries its config, so `load_codebook(path)`
    rebuilds it; `summary.json` beside it says how many codes it uses. metrics.csv has one row per epoch. The job
    resumes from `state_dir` (default out_dir/state), bound to `inputs` (the mel files) and the settings; the
    outputs appear only when training is complete.
    """
    check_mels(train_mels, model_cfg, "train_mels")
    check_mels(valid_mels, model_cfg, "valid_mels")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = TrainingState(state_dir or out_dir / "state",
                          fingerprint(inputs, {"model": model_cfg.to_dict(), "train": train_cfg.settings()},
                                      TRAINING_CODE))
    pl.seed_everything(train_cfg.seed, workers=True, verbose=False)
    module = CodebookModule(VQModel(model_cfg), train_cfg, MelDataset(train_mels, model_cfg.resolution),
                            MelDataset(valid_mels, model_cfg.resolution), state)
    log.info("training codebook: %d train / %d valid mels, lr %.2e, %d epochs, discriminator from step %d",
             len(train_mels), len(valid_mels), train_cfg.learning_rate, train_cfg.max_epochs, train_cfg.disc_start)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        fit(module, state, max_epochs=train_cfg.max_epochs, accelerator=train_cfg.accelerator, log_every=10**9,
            callbacks=callbacks)
    best = state.folder / BEST
    if not best.is_file():
        raise RuntimeError(f"training finished without writing {best}")
    summary = codebook_summary(torch.load(best, map_location="cpu", weights_only=True), model_cfg.n_embed)
    state.mark_done(summary)
    path = state.publish(BEST, out_dir / "codebook.ckpt")
    state.publish("metrics.csv", out_dir / "metrics.csv")
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    log.info("kept epoch %d: %d of %d codes used, perplexity %.1f, validation L1 %.4f", summary["epoch"],
             summary["codes_used"], summary["codes"], summary["perplexity"], summary["val_rec_loss"])
    return path


def train_from_shards(train_shards: Sequence[str | Path], valid_shards: Sequence[str | Path], model: dict[str, Any],
                      train: dict[str, Any], crop_frames: int, out_dir: str | Path) -> Path:
    """The workflow's train_codebook job: the codebook of the config's `codebook` section on the shards' mels."""
    from i2a.data.store import ShardedArray

    train_files = [Path(d) / "mels.npy" for d in train_shards]
    valid_files = [Path(d) / "mels.npy" for d in valid_shards]
    train_mels, valid_mels = ShardedArray(train_files), ShardedArray(valid_files)
    log.info("training on %d mels, validating on %d", len(train_mels), len(valid_mels))
    return train_codebook(train_mels, valid_mels, VQGANConfig(**model, resolution=crop_frames),
                          CodebookTrainConfig(**train), out_dir, inputs=[*train_files, *valid_files])
