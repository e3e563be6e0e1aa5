"""Stage 1: the spectrogram codebook (SPEC section 4), a taming-transformers VQGAN on 1-channel mel spectrograms.

Layer names follow SpecVQGAN's `VQModel` exactly, so the released VAS codebook (epoch_259.ckpt) loads unchanged.
Training follows `VQLPAPSWithDiscriminator` with the perceptual term off: L1 + codebook loss + a hinge PatchGAN
discriminator switched on at `disc_start`.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import pickle
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from i2a.mel import center_crop, from_model_range, to_model_range

log = logging.getLogger(__name__)

RELEASED_VAS_CODEBOOK = (
    "https://a3s.fi/swift/v1/AUTH_a235c0f452d648828f745589cde1219a/specvqgan_public/"
    "models/2021-06-06T19-42-53_vas_codebook.tar.gz"
)


# ----------------------------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class VQGANConfig:
    """Codebook architecture; the defaults are SpecVQGAN's configs/vas_codebook.yaml."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # len - 1 stride-2 downsamples: 80 x 848 -> 5 x 53
    num_res_blocks: int = 2  # per encoder level; the decoder has one more
    attn_resolutions: tuple[int, ...] = (53,)  # compared with the running *width* (resolution // 2**level)
    resolution: int = 848  # input width (time frames); the height is the 80 mel bins
    in_channels: int = 1
    out_ch: int = 1
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 128
    dropout: float = 0.0
    norm_groups: int = 32  # ours: GroupNorm(32) in the released models; smaller lets tiny demo widths work

    def __post_init__(self) -> None:
        # accept lists (YAML, checkpoints) but store tuples so the config stays hashable and comparable
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.num_res_blocks < 1:
            raise ValueError("num_res_blocks must be >= 1 (the encoder's ResnetBlocks change the channel width)")
        widths = {self.ch * m for m in (1, *self.ch_mult)}
        bad = sorted(w for w in widths if w % self.norm_groups)
        if bad:
            raise ValueError(f"norm_groups={self.norm_groups} must divide every channel width; it does not divide {bad}")
        if self.resolution % self.downsample_factor:
            raise ValueError(f"resolution {self.resolution} is not a multiple of {self.downsample_factor} "
                             f"(the encoder halves the width {len(self.ch_mult) - 1} times)")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_width(self) -> int:
        """Token-grid columns (53 for the released model)."""
        return self.resolution // self.downsample_factor

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VQGANConfig":
        """Ignores keys that are not fields (e.g. SpecVQGAN's `double_z`, notes in reference files)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------------------------------------------
# building blocks (taming-transformers' diffusionmodules/model.py, without the unused timestep embedding)


def swish(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x)  # x * sigmoid(x), fused


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        # 1x1 "network-in-network" shortcut when the width changes (taming's default, conv_shortcut=False)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1, 1, 0) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with 1x1 convs as projections."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = group_norm(ch, groups)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q(y), self.k(y), self.v(y)))
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v, as taming's bmm version
        y = y.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with taming's asymmetric zero pad (right/bottom only): 80 -> 40, 848 -> 424."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _resolution_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """One resolution of taming's Encoder/Decoder: its ResBlocks, each followed by attention where it has any."""
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        g, ch = cfg.norm_groups, cfg.ch
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        in_mult = (1, *cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.ch_mult):
            block_in, block_out = ch * in_mult[level], ch * mult
            level_mod = nn.Module()
            level_mod.block = nn.ModuleList()
            level_mod.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level_mod.block.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    level_mod.attn.append(AttnBlock(block_in, g))
            if level != len(cfg.ch_mult) - 1:
                level_mod.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level_mod)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        self.mid.attn_1 = AttnBlock(block_in, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        self.norm_out = group_norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, 1, 1)  # double_z=False in SpecVQGAN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _resolution_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        g, ch = cfg.norm_groups, cfg.ch
        block_in = ch * cfg.ch_mult[-1]
        res = cfg.latent_width
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        self.mid.attn_1 = AttnBlock(block_in, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        # built from the lowest resolution up, stored lowest-index = highest-resolution (taming's key layout)
        levels: list[nn.Module] = []
        for level in reversed(range(len(cfg.ch_mult))):
            block_out = ch * cfg.ch_mult[level]
            level_mod = nn.Module()
            level_mod.block = nn.ModuleList()
            level_mod.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level_mod.block.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    level_mod.attn.append(AttnBlock(block_in, g))
            if level != 0:
                level_mod.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, level_mod)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            h = _resolution_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook with a straight-through gradient (van den Oord et al.; beta 0.25 as SpecVQGAN)."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, C, H, W) -> zq (B, C, H, W), codebook loss (scalar), indices (B, H, W)."""
        b, c, h, w = z.shape
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, c)
        e = self.embedding.weight
        # squared distances, expanded the same way as the reference so near-ties break identically
        dist = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        indices = dist.argmin(dim=1)
        zq = self.embedding(indices).view(z.shape)
        loss = torch.mean((zq.detach() - z) ** 2) + self.beta * torch.mean((zq - z.detach()) ** 2)
        zq = z + (zq - z).detach()
        return zq.permute(0, 3, 1, 2).contiguous(), loss, indices.view(b, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, H, W) -> zq (B, C, H, W)."""
        return self.embedding(indices.long()).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    """SpecVQGAN's VQModel without its loss: the state dict matches the released checkpoint's non-`loss.*` keys."""

    def __init__(self, cfg: VQGANConfig = VQGANConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def pre_quant(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous latents (B, embed_dim, H/16, W/16) before quantisation."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 1, 80, W) in [-1, 1] -> (zq, codebook_loss, indices (B, 5, W/16))."""
        return self.quantize(self.pre_quant(x))

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(zq))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, H, W) -> spectrogram (B, 1, 16H, 16W) in model range (about [-1, 1])."""
        return self.decode(self.quantize.lookup(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zq, codebook_loss, indices = self.encode(x)
        return self.decode(zq), codebook_loss, indices

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight taming's adaptive GAN weight takes gradients against."""
        return self.decoder.conv_out.weight


# ----------------------------------------------------------------------------------------------------------------
# token order shared with the transformer


def _column_major_order(h: int, w: int) -> np.ndarray:
    return np.arange(h * w).reshape(h, w).T.ravel()


def tokens_from_grid(indices):
    """(B, H, W) code grid -> (B, H*W) tokens, time column by column with the H frequency rows inside each.

    SpecVQGAN's `order = arange(265).reshape(5, 53).T.ravel()`; works on torch tensors and numpy arrays.
    """
    if indices.ndim != 3:
        raise ValueError(f"expected a (B, H, W) grid of code indices, got shape {tuple(indices.shape)}")
    b, h, w = indices.shape
    order = _column_major_order(h, w)
    if isinstance(indices, torch.Tensor):
        order = torch.as_tensor(order, device=indices.device)
    return indices.reshape(b, h * w)[:, order]


def grid_from_tokens(tokens, H: int = 5, W: int | None = None):
    """Inverse of `tokens_from_grid`: (B, H*W) column-major tokens -> (B, H, W)."""
    if tokens.ndim != 2:
        raise ValueError(f"expected (B, H*W) tokens, got shape {tuple(tokens.shape)}")
    b, n = tokens.shape
    W = n // H if W is None else W
    if H * W != n:
        raise ValueError(f"{n} tokens do not fill a {H} x {W} grid")
    # token j of the sequence came from grid cell order[j]; order is a transpose, so its inverse is the other one
    inverse = np.arange(n).reshape(W, H).T.ravel()
    if isinstance(tokens, torch.Tensor):
        inverse = torch.as_tensor(inverse, device=tokens.device)
    return tokens[:, inverse].reshape(b, H, W)


# ----------------------------------------------------------------------------------------------------------------
# loading


def load_codebook(path: str | Path, cfg: VQGANConfig | None = None, map_location: str | torch.device = "cpu") -> VQModel:
    """A VQModel from the released SpecVQGAN Lightning checkpoint, a checkpoint `train_codebook` wrote, or a plain
    state dict. The config comes from `cfg`, else from the file (our checkpoints), else the VAS defaults."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"codebook checkpoint {path} not found. Train one with the workflow's train_codebook rule, or download "
            f"the released VAS codebook ({RELEASED_VAS_CODEBOOK}, MD5 0024ad3705c5e58a11779d3d9e97cc8a) and point "
            f"to logs/2021-06-06T19-42-53_vas_codebook/checkpoints/epoch_259.ckpt inside it.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds Python objects that torch.load(weights_only=True) refuses to unpickle ({err}). If you "
            f"trust the file, save its weights alone once: torch.save(torch.load(p, weights_only=False)['state_dict'], "
            f"'codebook_state_dict.pt') and load that.") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint dict or a state dict, got {type(ckpt).__name__}")
    state = ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), dict) else ckpt
    if cfg is None:
        cfg = VQGANConfig.from_dict(ckpt["config"]) if isinstance(ckpt.get("config"), dict) else VQGANConfig()
    # the released checkpoint also holds the training loss (discriminator, perceptual net): not part of the model
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    model = VQModel(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong_shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        problems = []
        if missing:
            problems.append(f"missing keys: {show(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {show(unexpected)}")
        if wrong_shape:
            problems.append("shape mismatch: " + show(
                [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong_shape]))
        raise ValueError(f"{path} does not fit VQModel({cfg}): " + "; ".join(problems))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# encoding / decoding whole sets for the workflow


def _model_input(mels, rows: Sequence[int], width: int) -> torch.Tensor:
    """Rows of a (N, 80, T) [0, 1] array-like -> (B, 1, 80, width) in [-1, 1]. Indexes row by row (memmaps)."""
    batch = [center_crop(np.asarray(mels[i], dtype=np.float32), width) for i in rows]
    return torch.from_numpy(to_model_range(np.stack(batch)))[:, None]


def _check_mels(mels, cfg: VQGANConfig, name: str = "mels") -> None:
    if len(mels) == 0:
        raise ValueError(f"{name} is empty")
    first = np.asarray(mels[0])
    if first.ndim != 2:
        raise ValueError(f"{name}: expected rows of shape (n_mels, T), got {first.shape}")
    if first.shape[0] % cfg.downsample_factor:
        raise ValueError(f"{name}: {first.shape[0]} mel bins are not a multiple of {cfg.downsample_factor}")
    if first.shape[1] < cfg.resolution:
        raise ValueError(f"{name}: {first.shape[1]} frames, fewer than the model's resolution {cfg.resolution}")


@torch.no_grad()
def encode_mels(model: VQModel, mels, batch_size: int = 32) -> np.ndarray:
    """(N, 80, T) mels in [0, 1] -> (N, H*W) int16 codebook tokens in the transformer's column-major order."""
    from tqdm.auto import tqdm

    _check_mels(mels, model.cfg)
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(mels), batch_size), desc="encode mels", mininterval=30):
        x = _model_input(mels, range(start, min(start + batch_size, len(mels))), model.cfg.resolution)
        _, _, indices = model.encode(x.to(device))
        out.append(tokens_from_grid(indices).cpu().numpy().astype(np.int16))
    return np.concatenate(out)


@torch.no_grad()
def decode_tokens(model: VQModel, tokens, batch_size: int = 32, clip: bool = False,
                  progress: bool = True) -> np.ndarray:
    """(N, H*W) column-major tokens -> (N, 80, T) float32 spectrograms, (x + 1) / 2 of the decoder output.

    SpecVQGAN's generate_samples.py does not clamp before saving or scoring, so neither do we by default: values
    stray slightly outside [0, 1]. `clip=True` clamps to [0, 1]. `progress=False` when a caller shows its own.
    """
    from tqdm.auto import tqdm

    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"expected (N, H*W) tokens, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= model.cfg.n_embed):
        raise ValueError(f"tokens outside [0, {model.cfg.n_embed}) for a codebook of {model.cfg.n_embed} entries")
    W = model.cfg.latent_width
    if tokens.shape[1] % W:
        raise ValueError(f"{tokens.shape[1]} tokens per row do not form a grid with {W} columns")
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(tokens), batch_size), desc="decode tokens", mininterval=30, disable=not progress):
        t = torch.from_numpy(tokens[start : start + batch_size].astype(np.int64)).to(device)
        spec = from_model_range(model.decode_indices(grid_from_tokens(t, H=tokens.shape[1] // W, W=W)))[:, 0]
        out.append((spec.clamp(0, 1) if clip else spec).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, 0), np.float32)


# ----------------------------------------------------------------------------------------------------------------
# training


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
    """Training of the codebook; defaults are SpecVQGAN's vas_codebook.yaml (perceptual term off, SPEC 4)."""

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
    # Not in SpecVQGAN: after each epoch, codes no training batch used are moved onto random latent vectors of
    # the epoch's last batch. A tiny codebook trained for minutes (the demo) otherwise collapses onto a few codes.
    restart_dead_codes: bool = False
    seed: int = 0
    num_workers: int = 0
    accelerator: str = "auto"
    log_every_steps: int = 500

    @property
    def learning_rate(self) -> float:
        return self.base_lr * self.batch_size * self.n_gpus * self.accumulate_grad_batches


class _MelDataset(torch.utils.data.Dataset):
    def __init__(self, mels, width: int):
        self.mels, self.width = mels, width

    def __len__(self) -> int:
        return len(self.mels)

    def __getitem__(self, i: int) -> torch.Tensor:
        return _model_input(self.mels, [i], self.width)[0]


def _save_atomic(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _make_lightning_module(model: VQModel, tcfg: CodebookTrainConfig, out_dir: Path):
    import lightning as L

    class CodebookModule(L.LightningModule):
        """Two optimisers stepped by hand each batch (autoencoder, then discriminator), as SpecVQGAN did."""

        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.model = model
            self.discriminator = NLayerDiscriminator(model.cfg.out_ch, tcfg.disc_ndf, tcfg.disc_num_layers)
            self.step = 0  # batches seen; Lightning's global_step counts both optimisers' steps
            self.best = math.inf
            self.rows: list[dict[str, Any]] = []
            self._train_sums: dict[str, float] = {}
            self._train_counts = torch.zeros(model.cfg.n_embed, dtype=torch.long)
            self._last_batch: torch.Tensor | None = None
            self._val: dict[str, Any] = {}
            self._t0 = time.time()

        def configure_optimizers(self):
            lr = tcfg.learning_rate
            return [torch.optim.Adam(self.model.parameters(), lr=lr, betas=tcfg.betas),
                    torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=tcfg.betas)]

        def training_step(self, x: torch.Tensor, batch_idx: int) -> None:
            opt_ae, opt_d = self.optimizers()
            disc_on = self.step >= tcfg.disc_start and tcfg.disc_factor > 0
            # autoencoder
            xrec, qloss, indices = self.model(x)
            self._train_counts += torch.bincount(indices.flatten().cpu(), minlength=model.cfg.n_embed)
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
                d_loss = tcfg.disc_factor * hinge_d_loss(self.discriminator(x.detach()),
                                                         self.discriminator(xrec.detach()))
                opt_d.zero_grad(set_to_none=True)
                self.manual_backward(d_loss)
                opt_d.step()
            self.step += 1
            for k, v in (("rec_loss", rec_loss), ("codebook_loss", qloss), ("g_loss", g_loss),
                         ("d_weight", d_weight), ("disc_loss", d_loss)):
                self._train_sums[k] = self._train_sums.get(k, 0.0) + float(v.detach())
            self._train_sums["n"] = self._train_sums.get("n", 0) + 1
            if tcfg.log_every_steps and self.step % tcfg.log_every_steps == 0:
                n = self._train_sums["n"]
                log.info("epoch %d step %d: rec %.4f codebook %.4f disc %.4f", self.current_epoch, self.step,
                         self._train_sums["rec_loss"] / n, self._train_sums["codebook_loss"] / n,
                         self._train_sums["disc_loss"] / n)

        def on_validation_epoch_start(self) -> None:
            self._val = {"rec": 0.0, "codebook": 0.0, "n": 0,
                         "counts": torch.zeros(model.cfg.n_embed, dtype=torch.long, device=self.device)}

        def validation_step(self, x: torch.Tensor, batch_idx: int) -> None:
            xrec, qloss, indices = self.model(x)
            b = x.shape[0]
            self._val["rec"] += float((x - xrec).abs().mean()) * b
            self._val["codebook"] += float(qloss) * b
            self._val["n"] += b
            self._val["counts"] += torch.bincount(indices.flatten(), minlength=model.cfg.n_embed)

        def on_train_epoch_end(self) -> None:
            # runs after this epoch's validation loop
            n, v = max(self._train_sums.pop("n", 0), 1), self._val
            p = (v["counts"].double() / v["counts"].sum()).cpu()
            row = {"epoch": self.current_epoch, "step": self.step,
                   **{f"train_{k}": s / n for k, s in self._train_sums.items()},
                   "val_rec_loss": v["rec"] / v["n"], "val_codebook_loss": v["codebook"] / v["n"],
                   "val_codes_used": int((v["counts"] > 0).sum()),
                   "val_perplexity": float(torch.exp(-(p * torch.log(p + 1e-10)).sum())),
                   "seconds": time.time() - self._t0}
            self._train_sums = {}
            self.rows.append(row)
            improved = row["val_rec_loss"] < self.best
            if improved:
                self.best = row["val_rec_loss"]
                _save_atomic({"state_dict": {k: t.detach().cpu() for k, t in self.model.state_dict().items()},
                              "config": model.cfg.to_dict(), "train_config": _plain(asdict(tcfg)),
                              "epoch": row["epoch"], "step": self.step, "val_rec_loss": row["val_rec_loss"]},
                             out_dir / "codebook.ckpt")
            _write_csv(self.rows, out_dir / "metrics.csv")
            if tcfg.restart_dead_codes:
                self._restart_dead_codes()
            self._train_counts.zero_()
            log.info("epoch %d/%d (step %d, %.0f s): train rec %.4f codebook %.4f | val rec %.4f%s | "
                     "codes used %d/%d, perplexity %.1f", row["epoch"] + 1, tcfg.max_epochs, self.step,
                     row["seconds"], row["train_rec_loss"], row["train_codebook_loss"], row["val_rec_loss"],
                     " (best, saved)" if improved else "", row["val_codes_used"], model.cfg.n_embed,
                     row["val_perplexity"])

        @torch.no_grad()
        def _restart_dead_codes(self) -> None:
            dead = torch.nonzero(self._train_counts == 0).flatten()
            if not len(dead) or self._last_batch is None:
                return
            z = self.model.pre_quant(self._last_batch)
            vectors = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            generator = torch.Generator().manual_seed(tcfg.seed * 100_003 + self.current_epoch)
            pick = torch.randint(len(vectors), (len(dead),), generator=generator).to(vectors.device)
            self.model.quantize.embedding.weight[dead.to(vectors.device)] = vectors[pick]
            log.info("epoch %d: %d unused codes moved onto latent vectors of the last batch", self.current_epoch + 1,
                     len(dead))

    return CodebookModule()


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def train_codebook(train_mels, valid_mels, model_cfg: VQGANConfig, train_cfg: CodebookTrainConfig,
                   out_dir: str | Path) -> Path:
    """Train a codebook on (N, 80, T) [0, 1] mels (numpy or ShardedArray); returns out_dir/codebook.ckpt.

    The checkpoint is the epoch with the lowest validation L1 and carries its config, so `load_codebook(path)`
    rebuilds it. metrics.csv has one row per epoch.
    """
    import lightning as L

    _check_mels(train_mels, model_cfg, "train_mels")
    _check_mels(valid_mels, model_cfg, "valid_mels")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(train_cfg.seed, workers=True, verbose=False)
    module = _make_lightning_module(VQModel(model_cfg), train_cfg, out_dir)
    loader = lambda mels, shuffle: torch.utils.data.DataLoader(  # noqa: E731
        _MelDataset(mels, model_cfg.resolution), batch_size=train_cfg.batch_size, shuffle=shuffle,
        num_workers=train_cfg.num_workers, drop_last=False)
    log.info("training codebook: %d train / %d valid mels, lr %.2e, %d epochs, discriminator from step %d",
             len(train_mels), len(valid_mels), train_cfg.learning_rate, train_cfg.max_epochs, train_cfg.disc_start)
    trainer = L.Trainer(accelerator=train_cfg.accelerator, devices=1, max_epochs=train_cfg.max_epochs,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=out_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, loader(train_mels, True), loader(valid_mels, False))
    path = out_dir / "codebook.ckpt"
    if not path.is_file():
        raise RuntimeError(f"training finished without writing {path}")
    return path
