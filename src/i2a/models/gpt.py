"""Stage 2: SpecVQGAN's conditional minGPT (`GPTFeats`) and a fast, reproducible token sampler.

The layer layout and state-dict names are exactly SpecVQGAN's (`specvqgan/modules/transformer/mingpt.py`),
so its released VAS transformers load as they are. Two things differ in *how*, not *what*, is computed:
attention goes through `F.scaled_dot_product_attention` (a fused kernel on GPU; the causal `attn.mask`
buffer is kept only so checkpoints keep their keys), and sampling can reuse a key/value cache instead of
re-running the whole sequence for each of the 265 tokens as SpecVQGAN does.

Sequence layout (SpecVQGAN's): `[c_1 .. c_S, z_1 .. z_T]` where `c` are the Conv1d-embedded frame features
and `z` the codebook tokens in column-major order; position `S - 1 + t` predicts token `z_{t+1}`, so
`logits[:, S-1:]` of a forward over the first 264 tokens scores all 265.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from i2a.runspec import GPTConfig

log = logging.getLogger(__name__)


def sample_frame_indices(crop_len: int, n_frames: int) -> np.ndarray:
    """Pick `n_frames` of `crop_len` feature frames the way SpecVQGAN's `ResampleFrames` does.

    Evenly spaced, then shifted by `crop_len // (S + 1)` so that S=1 takes the middle frame:
    (212, 1) -> [106]; (212, 5) -> [35, 77, 119, 162, 204]; (212, 212) -> all.
    """
    if not 1 <= n_frames <= crop_len:
        raise ValueError(f"feat_sample_size must be in [1, {crop_len}] (the feature crop length), got {n_frames}")
    idx = np.linspace(0, crop_len, n_frames, endpoint=False, dtype=np.int32)
    return (idx + crop_len // (n_frames + 1)).astype(np.int64)


def random_features(n: int, feat_dim: int, n_frames: int, seed: int) -> torch.Tensor:
    """The "no feats" condition: U[0, 1) noise of the features' shape, as SpecVQGAN's
    `replace_feats_with_random` draws it (`np.random.rand`); here seeded so a run can be repeated."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((n, feat_dim, n_frames), dtype=np.float32))


class KVCache:
    """Preallocated keys/values for every layer: sampling then costs one position per step."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.embed % cfg.heads:
            raise ValueError(f"embed ({cfg.embed}) must be divisible by heads ({cfg.heads})")
        self.key = nn.Linear(cfg.embed, cfg.embed)
        self.query = nn.Linear(cfg.embed, cfg.embed)
        self.value = nn.Linear(cfg.embed, cfg.embed)
        self.attn_pdrop = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(cfg.embed, cfg.embed)
        # Unused by the fused kernel (is_causal does the same), kept so state dicts match SpecVQGAN's.
        mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size))
        self.register_buffer("mask", mask.view(1, 1, cfg.block_size, cfg.block_size))
        self.n_head = cfg.heads

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                start: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q = self.query(x).view(B, T, self.n_head, hs).transpose(1, 2)
        k = self.key(x).view(B, T, self.n_head, hs).transpose(1, 2)
        v = self.value(x).view(B, T, self.n_head, hs).transpose(1, 2)
        dropout = self.attn_pdrop if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            end = start + T
            cache.k[layer, :, :, start:end] = k
            cache.v[layer, :, :, start:end] = v
            k, v = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]
            if T == 1:  # one new position sees everything before it
                y = F.scaled_dot_product_attention(q, k, v)
            elif start == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                allowed = self.mask[0, 0, start:end, :end].bool()
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.embed)
        self.ln2 = nn.LayerNorm(cfg.embed)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.embed, 4 * cfg.embed),
            nn.GELU(),
            nn.Linear(4 * cfg.embed, cfg.embed),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                start: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer, start)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """SpecVQGAN's `GPTFeats`: frame features (B, D, S) -> Conv1d -> prepended to the token embeddings."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.embed)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.block_size, cfg.embed))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.ln_f = nn.LayerNorm(cfg.embed)
        self.head = nn.Linear(cfg.embed, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        # Created after the N(0, 0.02) init, as in SpecVQGAN: the embedder keeps PyTorch's default Conv1d init.
        self.embedder = nn.Conv1d(cfg.feat_dim, cfg.embed, kernel_size=1)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if any(p.is_meta for p in module.parameters(recurse=False)):
            return  # shape-only model (device 'meta'): nothing to initialise
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def embed_feats(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, D, S) -> (B, S, n_embd)."""
        if feats.dim() != 3 or feats.shape[1] != self.config.feat_dim:
            raise ValueError(f"feats must be (B, {self.config.feat_dim}, S), got {tuple(feats.shape)}")
        return self.embedder(feats).transpose(1, 2)

    def _trunk(self, x: torch.Tensor, cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        end = start + x.shape[1]
        if end > self.block_size:
            raise ValueError(f"sequence of {end} positions exceeds block_size {self.block_size}")
        x = self.drop(x + self.pos_emb[:, start:end])
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, start)
        return x

    def forward(self, idx: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """idx (B, T) tokens, feats (B, D, S) -> logits (B, S + T, vocab)."""
        x = torch.cat([self.embed_feats(feats), self.tok_emb(idx)], dim=1)
        return self.head(self.ln_f(self._trunk(x)))

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        c = self.config
        p = self.pos_emb
        dtype = torch.get_autocast_dtype(p.device.type) if torch.is_autocast_enabled(p.device.type) else p.dtype
        return KVCache(c.layers, batch, c.heads, max_len, c.embed // c.heads, p.device, dtype)

    def forward_cached(self, x: torch.Tensor, cache: KVCache, start: int) -> torch.Tensor:
        """Embedded positions `start .. start+T` -> logits of the last one (B, vocab)."""
        h = self._trunk(x, cache, start)
        return self.head(self.ln_f(h[:, -1]))


# ------------------------------------------------------------------------------------------------ sampling

def _next_tokens(logits: torch.Tensor, top_k: int | None, temperature: float, u: torch.Tensor) -> torch.Tensor:
    """Top-k / temperature categorical draw by inverse CDF with the row's own uniform `u` (B,).

    Same distribution as SpecVQGAN's `top_k_logits` + `torch.multinomial` (ties at the k-th value are kept,
    as there), but the randomness belongs to the row, not to the batch.
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)
    target = (u * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=logits.shape[-1] - 1)


@torch.no_grad()
def sample_tokens(model: GPT, feats: torch.Tensor, n_tokens: int, top_k: int | None = 64,
                  temperature: float = 1.0, seeds: Sequence[int] | None = None,
                  cache: bool = True) -> torch.Tensor:
    """Autoregressively draw `n_tokens` codebook tokens per row of `feats` (B, D, S) -> LongTensor (B, n_tokens).

    Rows are independent (videos x samples flattened): row b draws from its own `torch.Generator` seeded
    with `seeds[b]`, so its tokens do not depend on which batch it was sampled in. `cache=False` re-runs
    the whole sequence each step, exactly like SpecVQGAN; `cache=True` gives the same tokens much faster.
    """
    B, _, S = feats.shape
    if seeds is None:
        raise ValueError("sample_tokens needs one seed per row (seeds=[...]) so that samples can be reproduced")
    if len(seeds) != B:
        raise ValueError(f"got {len(seeds)} seeds for {B} rows: give one seed per row")
    if S + n_tokens - 1 > model.block_size:
        raise ValueError(f"S={S} features + {n_tokens} tokens need block_size >= {S + n_tokens - 1}, "
                         f"the model has {model.block_size}")
    device = model.pos_emb.device
    feats = feats.to(device=device, dtype=model.pos_emb.dtype)
    # Uniforms drawn on the CPU: the same seed gives the same draws on any device.
    u = torch.stack([torch.rand(n_tokens, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    u = u.to(device)
    out = torch.empty(B, n_tokens, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        if cache:
            kv = model.new_cache(B, S + n_tokens - 1)
            logits = model.forward_cached(model.embed_feats(feats), kv, start=0)
            for t in range(n_tokens):
                out[:, t] = _next_tokens(logits, top_k, temperature, u[:, t])
                if t + 1 < n_tokens:
                    logits = model.forward_cached(model.tok_emb(out[:, t:t + 1]), kv, start=S + t)
        else:
            for t in range(n_tokens):
                logits = model(out[:, :t], feats)[:, -1]
                out[:, t] = _next_tokens(logits, top_k, temperature, u[:, t])
    finally:
        model.train(was_training)
    return out


# ------------------------------------------------------------------------------------------------ loading

CKPT_FORMAT = "i2a-gpt-v1"  # what i2a.training.gpt writes: weights + the run's RunSpec + its codebook


def _shape_config(sd: dict[str, torch.Tensor], heads: int) -> GPTConfig:
    """The transformer's sizes from its weight shapes; the head count is not in them."""
    vocab, embed = sd["tok_emb.weight"].shape
    return GPTConfig(vocab_size=vocab, block_size=sd["pos_emb"].shape[1],
                     layers=1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks.")), heads=heads,
                     embed=embed, feat_dim=sd["embedder.weight"].shape[1])


def _check_shapes(path: Path, sd: dict[str, torch.Tensor], cfg: GPTConfig) -> None:
    found = _shape_config(sd, cfg.heads)
    differences = [f"{f}: the checkpoint has {getattr(found, f)}, the run says {getattr(cfg, f)}"
                   for f in ("vocab_size", "block_size", "layers", "embed", "feat_dim")
                   if getattr(found, f) != getattr(cfg, f)]
    if differences:
        raise ValueError(f"{path} does not fit the run's transformer: " + "; ".join(differences))


def load_transformer(path: str | Path, cfg: GPTConfig | None = None, map_location: str | torch.device = "cpu") -> GPT:
    """A GPT in eval mode (fp32) from a checkpoint written by `i2a.training.gpt` (which describes itself: its
    RunSpec and codebook land in `model.run_spec` and `model.codebook`), from a SpecVQGAN Lightning checkpoint
    (`transformer.*` keys; `first_stage_model.*` etc. ignored) or from a bare GPT state dict.

    `cfg` is what the caller expects: a self-describing checkpoint must agree with it; a SpecVQGAN one takes its
    head count from it (the weights do not say) after its shapes were checked against it (16 heads, SpecVQGAN's,
    are assumed without a cfg, with a warning).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"transformer checkpoint {path} not found: train one (the workflow's train_gpt rule) or fetch a released "
            "SpecVQGAN VAS transformer (a run with source: released; the fetch_checkpoint rule)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name and a way out
        raise RuntimeError(
            f"could not load {path} with torch.load(weights_only=True): {e}. If it is an old Lightning "
            "checkpoint that pickles Python objects, re-save just its 'state_dict' with torch.save") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    sd = ckpt.get("state_dict", ckpt)
    if any(k.startswith("transformer.") for k in sd):
        sd = {k[len("transformer."):]: v for k, v in sd.items() if k.startswith("transformer.")}
    if "tok_emb.weight" not in sd:
        raise ValueError(f"{path} holds no GPT weights (no 'transformer.tok_emb.weight' or 'tok_emb.weight')")
    run_spec = None
    if ckpt.get("format") == CKPT_FORMAT:
        from i2a.runspec import RunSpec

        run_spec = RunSpec.from_dict(ckpt["run_spec"])
        if cfg is not None and cfg != run_spec.model:
            raise ValueError(f"{path} was trained as {run_spec.model}, not {cfg}")
        cfg = run_spec.model
    elif cfg is None:
        cfg = _shape_config(sd, heads=GPTConfig().heads)
        log.warning("%s does not describe itself: inferred %s (SpecVQGAN's %d heads assumed)", path, cfg, cfg.heads)
    _check_shapes(path, sd, cfg)
    model = GPT(cfg)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    model.run_spec, model.codebook = run_spec, ckpt.get("codebook")
    return model.to(map_location).eval()
