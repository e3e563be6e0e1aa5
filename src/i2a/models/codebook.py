"""Stage 1: the spectrogram codebook (design.md §4), a taming-transformers VQGAN on 1-channel mel spectrograms.

Layer names follow SpecVQGAN's `VQModel` exactly, so the released VAS codebook (epoch_259.ckpt) loads unchanged.
Its training is `i2a.training.codebook`.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from i2a.data.mel import center_crop, from_model_range, to_model_range
from i2a.infra.checkpoint import load_checkpoint
from i2a.spec.released import how_to_fetch

log = logging.getLogger(__name__)



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
    ckpt = load_checkpoint(path, "codebook checkpoint", "train one with the workflow's train_codebook rule, or "
                           f"fetch the released VAS codebook: {how_to_fetch('vas_codebook')}", map_location=map_location)
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


def model_input(mels, rows: Sequence[int], width: int) -> torch.Tensor:
    """Rows of a (N, 80, T) [0, 1] array-like -> (B, 1, 80, width) in [-1, 1]. Indexes row by row (memmaps)."""
    batch = [center_crop(np.asarray(mels[i], dtype=np.float32), width) for i in rows]
    return torch.from_numpy(to_model_range(np.stack(batch)))[:, None]


def check_mels(mels, cfg: VQGANConfig, name: str = "mels") -> None:
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

    check_mels(mels, model.cfg)
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(mels), batch_size), desc="encode mels", mininterval=30):
        x = model_input(mels, range(start, min(start + batch_size, len(mels))), model.cfg.resolution)
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


def codebook_fingerprint(path: str | Path, cfg: VQGANConfig | None = None) -> dict[str, Any]:
    """What identifies the codebook a transformer was trained on: its file's content digest and token grid.
    `cfg`: the file's config when the caller has loaded it already (saves loading it again)."""
    from i2a.infra.checksum import content_digest

    cfg = cfg or load_codebook(path).cfg
    return {"digest": content_digest(path), "n_embed": cfg.n_embed, "columns": cfg.latent_width}


def check_codebook(trained_on: dict[str, Any] | None, path: str | Path, cfg: VQGANConfig | None = None,
                   transformer: str = "the transformer") -> None:
    """Refuse to decode a transformer's tokens with another codebook than the one it was trained on: token i
    would stand for another sound. `trained_on` is the checkpoint's fingerprint; None (SpecVQGAN's released
    files, which carry none) checks nothing."""
    if trained_on is None:
        return
    found = codebook_fingerprint(path, cfg)
    if {k: trained_on.get(k) for k in found} != found:
        def describe(fp: dict[str, Any]) -> str:
            return f"{fp.get('n_embed')} codes x {fp.get('columns')} columns, content {str(fp.get('digest'))[:12]}"
        raise ValueError(f"{transformer} was trained on another codebook ({describe(trained_on)}) than {path} "
                         f"({describe(found)}): give the codebook it was trained on, or retrain the transformer on this "
                         "one (the workflow's train_gpt reruns when the codebook changes)")


def encode_shard(codebook_ckpt: str | Path, shard_dir: str | Path, crop_frames: int, out: str | Path,
                 device=None) -> np.ndarray:
    """Token grids of one preprocessed shard's mels, in the transformer's column-major order, saved as .npy."""
    from i2a.data.clips import Shard
    from i2a.data.store import save_npy
    from i2a.infra.device import pick_device

    codebook = load_codebook(codebook_ckpt, map_location=pick_device(device))
    tokens = encode_mels(codebook.to(pick_device(device)), center_crop(Shard(shard_dir).mels(), crop_frames))
    save_npy(out, tokens)
    log.info("%d clips -> tokens %s", len(tokens), tokens.shape)
    return tokens
