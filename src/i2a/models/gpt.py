"""Stage 2: SpecVQGAN's conditional minGPT (`GPTFeats`) and a fast, reproducible token sampler.

The layer layout and state-dict names are exactly SpecVQGAN's (`specvqgan/modules/transformer/mingpt.py`),
so its released VAS transformers load as they are. Two things differ in *how*, not *what*, is computed:
attention goes through `F.scaled_dot_product_attention` (a fused kernel on GPU; the causal `attn.mask`
buffer is kept only so checkpoints keep their keys), and sampling (`TokenSampler`) reuses a preallocated
key/value cache instead of re-running the whole sequence for each of the 265 tokens as SpecVQGAN does, with a
decode step whose shapes do not change, so that on a GPU it runs as one replayed CUDA graph.

Sequence layout (SpecVQGAN's): `[c_1 .. c_S, z_1 .. z_T]` where `c` are the Conv1d-embedded frame features
and `z` the codebook tokens in column-major order; position `S - 1 + t` predicts token `z_{t+1}`, so
`logits[:, S-1:]` of a forward over the first 264 tokens scores all 265.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple, Sequence

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q = self.query(x).view(B, T, self.n_head, hs).transpose(1, 2)
        k = self.key(x).view(B, T, self.n_head, hs).transpose(1, 2)
        v = self.value(x).view(B, T, self.n_head, hs).transpose(1, 2)
        dropout = self.attn_pdrop if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
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

    def forward(self, idx: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """idx (B, T) tokens, feats (B, D, S) -> logits (B, S + T, vocab)."""
        x = torch.cat([self.embed_feats(feats), self.tok_emb(idx)], dim=1)
        T = x.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence of {T} positions exceeds block_size {self.block_size}")
        x = self.drop(x + self.pos_emb[:, :T])
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


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


class _Linear:
    """x W^T + b for sampling. On the CPU (fp32, PyTorch built with oneDNN) W is reordered once into oneDNN's
    blocked layout: a decode step is a few rows times every weight of the model, bound by reading the weights,
    and MKL's few-row products read them at about half the memory speed (4 rows x 1024 -> 4096, weights not in
    cache, two AVX-512 threads: 0.9 ms instead of 2.0 ms as W @ x^T, 2.6 ms as F.linear). The reordered copy
    costs the weights' size once more in memory while sampling."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, rows: int):
        self.w, self.b = w, b
        self.packed = None
        if w.device.type == "cpu" and w.dtype == torch.float32 and torch.backends.mkldnn.is_available():
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
            except RuntimeError as e:  # a CPU oneDNN does not support: the same product, slower
                log.debug("oneDNN cannot reorder a %s weight (%s): sampling with F.linear", tuple(w.shape), e)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.w, self.b)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.b, "none", [], "")


class _Layer(NamedTuple):
    """One block's weights for sampling: (weight, bias, eps) for a LayerNorm."""
    ln1: tuple
    qkv: _Linear  # query, key and value stacked: one matmul instead of three
    proj: _Linear
    ln2: tuple
    fc: _Linear
    out: _Linear


def _run_as_cuda_graph(step, n: int, warmup: int = 3) -> None:
    """Call `step` n times: the first `warmup` times eagerly on a side stream (as the torch.cuda.graphs docs
    prescribe: lazy init, cuBLAS workspaces), then capture one call as a CUDA graph and replay it for the rest.
    Capturing does not run the step, so the state advances exactly n times. If capture fails the rest run
    eagerly, with a warning."""
    warmup = min(warmup, n)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    if n == warmup:
        return
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except RuntimeError as e:
        log.warning("could not capture the decode step as a CUDA graph (%s): sampling eagerly", e)
        graph = None
    for _ in range(n - warmup):
        if graph is None:
            step()
        else:
            graph.replay()


class TokenSampler:
    """The transformer laid out for drawing tokens one position at a time, with shapes that do not change.

    Keys/values of every layer live in one zero-initialised cache of the whole sequence, (layers, B, heads,
    max_len, head_dim) twice: 94 MB per row for the 24-layer VAS model in fp32, half that in bf16. `prefill`
    runs the S condition positions at once (their shapes depend on S); `step` draws the next token of every row
    with tensor ops only: the position is a tensor that indexes `pos_emb` and the cache (`index_copy_`), and
    with `fixed_shapes` the new query attends over the whole cache with a mask of the filled slots. A step then
    runs the same ops on the same shapes every time, so it can be captured once as a CUDA graph and replayed.
    On the CPU attending over the filled prefix only is cheaper (no launch overhead to save there, and the
    masked full cache reads ~40% more keys/values), so `fixed_shapes` defaults to `device.type == "cuda"`.

    `dtype` casts a copy of the weights and the cache (bf16 on a GPU); the draw is fp32 whatever the dtype.
    """

    def __init__(self, model: GPT, S: int, u: torch.Tensor, top_k: int | None = 64, temperature: float = 1.0,
                 dtype: torch.dtype = torch.float32, fixed_shapes: bool | None = None):
        cfg, device = model.config, model.pos_emb.device
        B, n_tokens = u.shape
        self.S, self.top_k, self.temperature, self.dtype = S, top_k, temperature, dtype
        self.n_head = cfg.heads
        self.fixed_shapes = device.type == "cuda" if fixed_shapes is None else fixed_shapes

        def w(t: torch.Tensor) -> torch.Tensor:  # fp32: the model's own tensors (_Linear may reorder a copy)
            return t.detach().to(dtype)

        def lin(m: nn.Linear) -> _Linear:
            return _Linear(w(m.weight), None if m.bias is None else w(m.bias), rows=B)

        def norm(m: nn.LayerNorm) -> tuple:
            return w(m.weight), w(m.bias), m.eps

        self.tok_emb, self.pos_emb = w(model.tok_emb.weight), w(model.pos_emb[0])
        # a 1x1 Conv1d is a Linear
        self.embedder = _Linear(w(model.embedder.weight.squeeze(2)), w(model.embedder.bias), rows=B * S)
        self.layers = [_Layer(
            ln1=norm(b.ln1),
            qkv=_Linear(w(torch.cat([b.attn.query.weight, b.attn.key.weight, b.attn.value.weight])),
                        w(torch.cat([b.attn.query.bias, b.attn.key.bias, b.attn.value.bias])), rows=B),
            proj=lin(b.attn.proj), ln2=norm(b.ln2), fc=lin(b.mlp[0]), out=lin(b.mlp[2]),
        ) for b in model.blocks]
        self.ln_f, self.head = norm(model.ln_f), lin(model.head)
        # rounded up to 16 slots (never filled, always masked): the fused GPU kernels want aligned masks
        max_len = -(-(S + n_tokens - 1) // 16) * 16
        shape = (cfg.layers, B, cfg.heads, max_len, cfg.embed // cfg.heads)
        # zeros, not empty: a masked slot has weight exactly 0, and 0 * garbage could be NaN
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slots = torch.arange(max_len, device=device)
        self.u = u.to(device=device, dtype=torch.float32)
        self.tokens = torch.zeros(B, n_tokens, dtype=torch.long, device=device)
        self.t = torch.zeros(1, dtype=torch.long, device=device)  # the next token to draw, as a tensor
        self.n_drawn = 0  # the same as a Python int, for the CPU's growing prefix

    def _forward(self, x: torch.Tensor, pos: torch.Tensor, keys: int | None) -> torch.Tensor:
        """x (B, T, C) embedded inputs at positions `pos` (T,) -> logits (B, vocab) of the last one.

        Writes every layer's keys/values at `pos`, then attends over the first `keys` slots (causally for the
        prefill, T = keys) or, with keys=None, over the whole cache masked to the slots <= pos.
        """
        B, T, C = x.shape
        H = self.n_head
        mask = self.slots <= pos.unsqueeze(1) if keys is None else None  # (T, max_len)
        x = x + self.pos_emb.index_select(0, pos)
        for L, k_cache, v_cache in zip(self.layers, self.k, self.v):
            h = F.layer_norm(x, (C,), *L.ln1)
            q, k, v = L.qkv(h).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
            k_cache.index_copy_(2, pos, k)
            v_cache.index_copy_(2, pos, v)
            if keys is None:
                y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask)
            else:
                y = F.scaled_dot_product_attention(q, k_cache[:, :, :keys], v_cache[:, :, :keys], is_causal=T > 1)
            x = x + L.proj(y.transpose(1, 2).reshape(B, T, C))
            x = x + L.out(F.gelu(L.fc(F.layer_norm(x, (C,), *L.ln2))))
        return self.head(F.layer_norm(x[:, -1], (C,), *self.ln_f))

    def _draw(self, logits: torch.Tensor) -> None:
        u = self.u.index_select(1, self.t).squeeze(1)
        nxt = _next_tokens(logits, self.top_k, self.temperature, u)
        self.tokens.index_copy_(1, self.t, nxt.unsqueeze(1))
        self.t.add_(1)
        self.n_drawn += 1

    def prefill(self, feats: torch.Tensor) -> None:
        """feats (B, D, S): the condition positions at once, then the first token (from position S - 1)."""
        x = self.embedder(feats.to(self.dtype).transpose(1, 2))
        self._draw(self._forward(x, self.slots[:self.S], keys=self.S))

    def step(self) -> None:
        """Draw token t from token t - 1, which sits at position S + t - 1."""
        pos = self.t + (self.S - 1)
        x = F.embedding(self.tokens.index_select(1, self.t - 1), self.tok_emb)  # (B, 1, C)
        self._draw(self._forward(x, pos, keys=None if self.fixed_shapes else self.S + self.n_drawn))

    def run(self, feats: torch.Tensor, cuda_graph: bool = True) -> torch.Tensor:
        """All tokens (B, n_tokens); on CUDA with fixed shapes the steps replay one captured CUDA graph."""
        self.prefill(feats)
        n = self.tokens.shape[1] - 1
        if cuda_graph and self.fixed_shapes and self.tokens.is_cuda:
            _run_as_cuda_graph(self.step, n)
        else:
            for _ in range(n):
                self.step()
        return self.tokens


@torch.no_grad()
def sample_tokens(model: GPT, feats: torch.Tensor, n_tokens: int, top_k: int | None = 64,
                  temperature: float = 1.0, seeds: Sequence[int] | None = None, cache: bool = True,
                  dtype: torch.dtype = torch.float32, cuda_graph: bool = True,
                  fixed_shapes: bool | None = None) -> torch.Tensor:
    """Autoregressively draw `n_tokens` codebook tokens per row of `feats` (B, D, S) -> LongTensor (B, n_tokens).

    `feats` as extracted: a transformer trained on standardised features (its checkpoint carries the training
    split's statistics) gets them standardised here, as in training.
    Rows are independent (videos x samples flattened): row b draws from its own `torch.Generator` seeded
    with `seeds[b]`, so its tokens do not depend on which batch it was sampled in. `cache=False` re-runs
    the whole sequence each step, exactly like SpecVQGAN; `cache=True` (a `TokenSampler`) gives the same tokens
    in fp32 much faster. `dtype=torch.bfloat16` samples in bf16 (meant for GPUs; tokens may then differ from
    fp32's). On CUDA the decode step runs with `fixed_shapes` as one captured CUDA graph (`cuda_graph=False`:
    eagerly). Measured on one H200 (24 layers, S 212, top-k 64): the graph draws eager's tokens (64/64 rows); cached
    fp32 rows equal the full recompute's with cuDNN's TF32 off (precision `fp32`; 10/16 with PyTorch's default
    TF32 Conv1d embedder); bf16 rows all differ from fp32's (any rounding change diverges a sampled row). The
    speed is `benchmarks/sampling.py`'s to measure; the CPU tests cover the fixed-shape step the graph captures.
    """
    if feats.dim() != 3 or feats.shape[1] != model.config.feat_dim:
        raise ValueError(f"feats must be (B, {model.config.feat_dim}, S), got {tuple(feats.shape)}")
    B, _, S = feats.shape
    if seeds is None:
        raise ValueError("sample_tokens needs one seed per row (seeds=[...]) so that samples can be reproduced")
    if len(seeds) != B:
        raise ValueError(f"got {len(seeds)} seeds for {B} rows: give one seed per row")
    if S + n_tokens - 1 > model.block_size:
        raise ValueError(f"S={S} features + {n_tokens} tokens need block_size >= {S + n_tokens - 1}, "
                         f"the model has {model.block_size}")
    device = model.pos_emb.device
    feats = standardize_features(model, feats.to(device=device, dtype=model.pos_emb.dtype))
    # Uniforms drawn on the CPU: the same seed gives the same draws on any device.
    u = torch.stack([torch.rand(n_tokens, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    u = u.to(device)
    if cache:
        if device.type == "cuda":
            c = model.config
            need = 2 * c.layers * B * (S + n_tokens + 15) * c.embed * dtype.itemsize
            free = torch.cuda.mem_get_info(device)[0]
            if need > free:
                raise ValueError(f"the key/value cache of {B} rows needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} "
                                 "GiB are free: sample fewer rows at a time")
        sampler = TokenSampler(model, S, u, top_k, temperature, dtype=dtype, fixed_shapes=fixed_shapes)
        return sampler.run(feats, cuda_graph=cuda_graph)
    out = torch.empty(B, n_tokens, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
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
    stats = ckpt.get("feature_stats")  # features standardised in training are standardised the same way here
    model.feature_stats = None if stats is None else {k: v.float().to(map_location) for k, v in stats.items()}
    return model.to(map_location).eval()


def standardize(feats: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, D, S) features standardised per dimension with (D,) statistics: in training and in sampling alike."""
    return (feats - mean[:, None]) / std[:, None]


def standardize_features(model: GPT, feats: torch.Tensor) -> torch.Tensor:
    """(B, D, S) features as the transformer saw them in training: standardised with its training split's
    statistics when the run used `feature_norm: standard` (they travel in the checkpoint), else as they are."""
    stats = getattr(model, "feature_stats", None)
    if stats is None:
        return feats
    return standardize(feats, stats["mean"].to(feats.device), stats["std"].to(feats.device))


def released_config(name: str, vocab_size: int, n_tokens: int) -> GPTConfig:
    """A released SpecVQGAN transformer's shape. Layers, heads, width and S are what the fetched checkpoint's own
    config says (else the registry of released files: the weights do not tell the head count), the feature depth
    is its backbone's, and the vocabulary and token count are the codebook's it is used with, never a config's
    `codebook.model`."""
    from i2a.features.registry import feature_dim
    from i2a.models.released import released

    entry = released(name)
    if entry.kind != "transformer":
        raise ValueError(f"{name!r} is a released {entry.kind}, not a transformer")
    shape = entry.shape()
    return GPTConfig(vocab_size=vocab_size, block_size=n_tokens + shape["feat_sample_size"], layers=shape["layers"],
                     heads=shape["heads"], embed=shape["embed"], feat_dim=feature_dim(shape["features"]), dropout=0.0)


def load_released_transformer(name: str, vocab_size: int, n_tokens: int, path: str | Path | None = None,
                              map_location: str | torch.device = "cpu") -> GPT:
    """One of the authors' VAS transformers (`i2a.models.released`) as a GPT that describes itself like a trained
    one: `model.run_spec` says its backbone, S and shape (from the registry, checked against the weights)."""
    from i2a.models.released import how_to_fetch, released
    from i2a.runspec import RunSpec

    entry = released(name)
    path = Path(path or entry.local_path)
    if not path.is_file():
        raise FileNotFoundError(f"released transformer {name} not found at {path}: fetch it with {how_to_fetch(name)}")
    cfg = released_config(name, vocab_size, n_tokens)
    shape = entry.shape()
    model = load_transformer(path, cfg, map_location=map_location)
    model.run_spec = RunSpec(name=name, features=shape["features"], feat_sample_size=shape["feat_sample_size"],
                             source="released", released=name, model=cfg)
    return model
