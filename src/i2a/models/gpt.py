"""Stage 2: SpecVQGAN's conditional minGPT (`GPTFeats`) and a fast, reproducible token sampler.

The layer layout and state-dict names are exactly SpecVQGAN's (`specvqgan/modules/transformer/mingpt.py`),
so its released VAS transformers load as they are. Two things differ in *how*, not *what*, is computed:
attention goes through `F.scaled_dot_product_attention` (a fused kernel on GPU; the causal `attn.mask`
buffer is kept only so checkpoints keep their keys), and sampling (`TokenSampler`) computes each video's
conditioning once and caches keys/values instead of re-running the whole sequence for each of the 265 tokens as
SpecVQGAN does, with decode steps whose shapes change only per bucket of cache length, so that on a GPU they run
as a few replayed CUDA graphs (docs/sampling.md).

Sequence layout (SpecVQGAN's): `[c_1 .. c_S, z_1 .. z_T]` where `c` are the Conv1d-embedded frame features
and `z` the codebook tokens in column-major order; position `S - 1 + t` predicts token `z_{t+1}`, so
`logits[:, S-1:]` of a forward over the first 264 tokens scores all 265.
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from i2a.spec.runspec import GPTConfig

log = logging.getLogger(__name__)


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


def _run_as_cuda_graph(step, n: int, warmup: int = 3, pool=None) -> None:
    """Call `step` n times: the first `warmup` times eagerly on a side stream (as the torch.cuda.graphs docs
    prescribe: lazy init, cuBLAS workspaces), then capture one call as a CUDA graph and replay it for the rest.
    Capturing does not run the step, so the state advances exactly n times. If capture fails the rest run
    eagerly, with a warning. `pool`: a graph memory pool shared with the other buckets' graphs."""
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
        with torch.cuda.graph(graph, pool=pool):
            step()
    except RuntimeError as e:
        log.warning("could not capture the decode step as a CUDA graph (%s): sampling eagerly", e)
        graph = None
    for _ in range(n - warmup):
        if graph is None:
            step()
        else:
            graph.replay()


CUDA_BUCKET = 64  # own-cache slots read per decode step on CUDA, in steps of this: one CUDA graph per bucket


def bucket_schedule(n_tokens: int, bucket: int) -> list[tuple[int, int]]:
    """(slots read, decode steps) per bucket: step t (t = 1 .. n_tokens - 1) has t filled slots of its row's own
    cache and reads them rounded up to a multiple of `bucket` (0: exactly t, one 'bucket' per step). Steps of one
    bucket run the same ops on the same shapes, so on CUDA each bucket is one captured graph."""
    if bucket < 0:
        raise ValueError(f"bucket must be >= 0, got {bucket}")
    schedule: list[tuple[int, int]] = []
    for t in range(1, n_tokens):
        keys = t if bucket == 0 else -(-t // bucket) * bucket
        if schedule and schedule[-1][0] == keys:
            schedule[-1] = (keys, schedule[-1][1] + 1)
        else:
            schedule.append((keys, 1))
    return schedule


def own_slots(n_tokens: int, bucket: int) -> int:
    """A row's own cache: its tokens 0 .. n_tokens - 2 (the last one is drawn, never attended to), rounded up to
    whole buckets (exact reads: to 16 slots)."""
    return -(-max(1, n_tokens - 1) // (bucket or 16)) * (bucket or 16)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q (N, H, Q, hd) over k, v (N, H, K, hd): (output (N, H, Q, hd), fp32 log-sum-exp of
    the scaled scores (N, H, Q)), which lets two such parts over disjoint keys merge exactly (`_merge`). `bias`
    (1, K): 0 for a key to attend to, -inf for one to skip. One fused kernel where PyTorch has one that returns
    the log-sum-exp (the CPU's flash attention, CUDA's memory-efficient attention): a decode step is many small
    ops, and on a busy machine each op costs a wait for the other threads, whatever its size."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=bias)
        return out, lse
    if q.device.type == "cuda":
        bias4 = None if bias is None else bias.view(1, 1, 1, -1).expand(q.shape[0], q.shape[1], q.shape[2], -1)
        out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias4, True)
        return out, lse[..., :q.shape[2]]  # the kernel pads the query length of its log-sum-exp
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias.float()
    lse = torch.logsumexp(scores, dim=-1)
    return torch.exp(scores - lse.unsqueeze(-1)).to(v.dtype) @ v, lse


def _merge(a: torch.Tensor, lse_a: torch.Tensor, b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Attention over keys A and B from attention over A and over B alone (cascade inference): A's share of the
    softmax's denominator is exp(lse_a) / (exp(lse_a) + exp(lse_b)) = sigmoid(lse_a - lse_b)."""
    return torch.lerp(b, a, torch.sigmoid(lse_a - lse_b).unsqueeze(-1).to(a.dtype))


class TokenSampler:
    """The transformer laid out for drawing tokens one position at a time, with the conditioning shared per video.

    Rows (videos x samples) are grouped by the video whose features they are conditioned on (`video_of_row`).
    `prefill` runs the S condition positions once per video and keeps one copy of their keys and values,
    (layers, videos, heads, S, head_dim) twice; each row keeps only its own tokens' keys and values, (layers,
    rows, heads, tokens, head_dim) twice. A decode step attends over the two parts separately, the shared prefix
    as one batched product per video for all its rows, and merges them exactly by their log-sum-exps
    (`_merge`, as cascade inference does). It reads only the filled slots of a row's own cache: exactly t of them
    at step t (`bucket=0`, the CPU's default), or t rounded up to a multiple of `bucket` with the rest masked, so
    that the steps of one bucket run the same ops on the same shapes (the position is a tensor) and on CUDA are
    one captured graph per bucket (`CUDA_BUCKET` slots, the GPU's default).

    `dtype` casts a copy of the weights and the caches (bf16 on a GPU); softmax and the draw are fp32 whatever the
    dtype. Every row draws with its own uniforms `u` (rows, n_tokens), so its tokens do not depend on its batch.
    """

    def __init__(self, model: GPT, S: int, u: torch.Tensor, video_of_row: torch.Tensor | None = None, *,
                 top_k: int | None, temperature: float, dtype: torch.dtype = torch.float32, bucket: int | None = None):
        cfg, device = model.config, model.pos_emb.device
        B, n_tokens = u.shape
        self.S, self.top_k, self.temperature, self.dtype = S, top_k, temperature, dtype
        self.n_head = cfg.heads
        self.bucket = (CUDA_BUCKET if device.type == "cuda" else 0) if bucket is None else bucket
        video_of_row = torch.arange(B) if video_of_row is None else torch.as_tensor(video_of_row).long().cpu()
        if video_of_row.shape != (B,):
            raise ValueError(f"video_of_row must give one video per row ({B}), got shape {tuple(video_of_row.shape)}")
        self.n_videos = int(video_of_row.max()) + 1 if B else 0
        self._group_rows(video_of_row, device)

        def w(t: torch.Tensor) -> torch.Tensor:  # fp32: the model's own tensors (_Linear may reorder a copy)
            return t.detach().to(dtype)

        def lin(m: nn.Linear) -> _Linear:
            return _Linear(w(m.weight), None if m.bias is None else w(m.bias), rows=B)

        def norm(m: nn.LayerNorm) -> tuple:
            return w(m.weight), w(m.bias), m.eps

        self.tok_emb, self.pos_emb = w(model.tok_emb.weight), w(model.pos_emb[0])
        # a 1x1 Conv1d is a Linear
        self.embedder = _Linear(w(model.embedder.weight.squeeze(2)), w(model.embedder.bias),
                                rows=self.n_videos * S)
        self.layers = [_Layer(
            ln1=norm(b.ln1),
            qkv=_Linear(w(torch.cat([b.attn.query.weight, b.attn.key.weight, b.attn.value.weight])),
                        w(torch.cat([b.attn.query.bias, b.attn.key.bias, b.attn.value.bias])), rows=B),
            proj=lin(b.attn.proj), ln2=norm(b.ln2), fc=lin(b.mlp[0]), out=lin(b.mlp[2]),
        ) for b in model.blocks]
        self.ln_f, self.head = norm(model.ln_f), lin(model.head)
        hd = cfg.embed // cfg.heads
        self.prefix_k = torch.zeros((cfg.layers, self.n_videos, cfg.heads, S, hd), device=device, dtype=dtype)
        self.prefix_v = torch.zeros_like(self.prefix_k)
        # zeros, not empty: a masked slot has weight exactly 0, and 0 * garbage could be NaN
        capacity = own_slots(n_tokens, self.bucket)
        self.k = torch.zeros((cfg.layers, B, cfg.heads, capacity, hd), device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.slots = torch.arange(capacity, device=device)
        self.u = u.to(device=device, dtype=torch.float32)
        self.tokens = torch.zeros(B, n_tokens, dtype=torch.long, device=device)
        self.t = torch.zeros(1, dtype=torch.long, device=device)  # the next token to draw, as a tensor
        self.n_drawn = 0  # the same as a Python int, for the CPU's exact slices

    def _group_rows(self, video_of_row: torch.Tensor, device: torch.device) -> None:
        """Lay the rows out as (videos, widest group): `_slot_rows` picks each slot's row (B: a zero row that pads
        a smaller group), `_row_slots` each row's slot. Rows already in that layout skip both gathers."""
        B, V = len(video_of_row), self.n_videos
        counts = torch.bincount(video_of_row, minlength=V)
        if B and int(counts.min()) == 0:
            raise ValueError("video_of_row must use every video 0 .. V-1 (a video without rows has no place)")
        self.group = int(counts.max()) if B else 0
        order = torch.argsort(video_of_row, stable=True)
        rank = torch.empty(B, dtype=torch.long)
        starts = torch.cumsum(counts, 0) - counts
        rank[order] = torch.arange(B) - starts[video_of_row[order]]
        row_slots = video_of_row * self.group + rank
        slot_rows = torch.full((V * self.group,), B, dtype=torch.long)
        slot_rows[row_slots] = torch.arange(B)
        identity = len(slot_rows) == B and torch.equal(slot_rows, torch.arange(B))
        self._slot_rows = None if identity else slot_rows.to(device)
        self._row_slots = None if identity else row_slots.to(device)
        self.video_of_row = video_of_row.to(device)

    def _attend_shared(self, q: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, H, hd) over its video's prefix: one product per video for all its rows -> (B, H, hd), (B, H)."""
        B, H, hd = q.shape
        if self._slot_rows is not None:
            q = torch.cat([q, q.new_zeros(1, H, hd)]).index_select(0, self._slot_rows)
        q = q.view(self.n_videos, self.group, H, hd).transpose(1, 2)  # (V, H, group, hd)
        out, lse = _attend(q, self.prefix_k[layer], self.prefix_v[layer])
        out = out.transpose(1, 2).reshape(-1, H, hd)
        lse = lse.transpose(1, 2).reshape(-1, H)
        if self._row_slots is not None:
            out, lse = out.index_select(0, self._row_slots), lse.index_select(0, self._row_slots)
        return out, lse

    def _draw(self, logits: torch.Tensor) -> None:
        u = self.u.index_select(1, self.t).squeeze(1)
        nxt = _next_tokens(logits, self.top_k, self.temperature, u)
        self.tokens.index_copy_(1, self.t, nxt.unsqueeze(1))
        self.t.add_(1)
        self.n_drawn += 1

    def prefill(self, feats: torch.Tensor) -> None:
        """feats (videos, D, S): the condition positions of every video at once, their keys and values kept once
        per video; then every row's first token from its video's position S - 1."""
        if feats.shape[0] != self.n_videos:
            raise ValueError(f"prefill takes one feature row per video ({self.n_videos}), got {feats.shape[0]}")
        x = self.embedder(feats.to(self.dtype).transpose(1, 2))  # (V, S, C)
        V, T, C = x.shape
        H = self.n_head
        x = x + self.pos_emb[:T]
        for L, k_cache, v_cache in zip(self.layers, self.prefix_k, self.prefix_v):
            h = F.layer_norm(x, (C,), *L.ln1)
            q, k, v = L.qkv(h).view(V, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
            k_cache.copy_(k)
            v_cache.copy_(v)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
            x = x + L.proj(y.transpose(1, 2).reshape(V, T, C))
            x = x + L.out(F.gelu(L.fc(F.layer_norm(x, (C,), *L.ln2))))
        logits = self.head(F.layer_norm(x[:, -1], (C,), *self.ln_f))  # (V, vocab)
        self._draw(logits.index_select(0, self.video_of_row))

    def step(self, keys: int) -> None:
        """Draw token t from token t - 1 (position S + t - 1, own slot t - 1), reading `keys` own slots: exactly the
        t filled ones, or a bucket's worth of which those beyond t are masked."""
        B = self.tokens.shape[0]
        H = self.n_head
        slot = self.t - 1
        x = F.embedding(self.tokens.index_select(1, slot), self.tok_emb)  # (B, 1, C)
        C = x.shape[-1]
        x = x + self.pos_emb.index_select(0, slot + self.S)
        bias = None  # exactly the filled slots; in a bucket, the slots beyond them are masked
        if not (keys == self.n_drawn and self.bucket == 0):
            bias = torch.zeros(1, keys, dtype=self.dtype, device=x.device).masked_fill_(
                self.slots[:keys] >= self.t, float("-inf"))
        for i, (L, k_cache, v_cache) in enumerate(zip(self.layers, self.k, self.v)):
            h = F.layer_norm(x, (C,), *L.ln1)
            q, k, v = L.qkv(h).view(B, 1, 3, H, C // H).permute(2, 0, 3, 1, 4)  # (B, H, 1, hd) each
            k_cache.index_copy_(2, slot, k)
            v_cache.index_copy_(2, slot, v)
            shared, lse_shared = self._attend_shared(q.squeeze(2), i)
            own, lse_own = _attend(q, k_cache[:, :, :keys], v_cache[:, :, :keys], bias)
            y = _merge(shared, lse_shared, own.squeeze(2), lse_own.squeeze(2))
            x = x + L.proj(y.reshape(B, 1, C))
            x = x + L.out(F.gelu(L.fc(F.layer_norm(x, (C,), *L.ln2))))
        self._draw(self.head(F.layer_norm(x[:, -1], (C,), *self.ln_f)))

    def run(self, feats: torch.Tensor, cuda_graph: bool = True) -> torch.Tensor:
        """All tokens (rows, n_tokens); on CUDA with buckets each bucket's steps replay one captured CUDA graph."""
        self.prefill(feats)
        graphs = cuda_graph and self.bucket > 0 and self.tokens.is_cuda
        pool = torch.cuda.graph_pool_handle() if graphs else None
        for i, (keys, steps) in enumerate(bucket_schedule(self.tokens.shape[1], self.bucket)):
            if graphs:
                _run_as_cuda_graph(lambda: self.step(keys), steps, warmup=3 if i == 0 else 1, pool=pool)
            else:
                for _ in range(steps):
                    self.step(keys)
        return self.tokens


def kv_cache_bytes(cfg: GPTConfig, rows: int, videos: int, S: int, n_tokens: int, dtype: torch.dtype,
                   bucket: int = CUDA_BUCKET) -> int:
    """Bytes of TokenSampler's key/value caches: one prefix per video, each row's own tokens (whole buckets)."""
    own = own_slots(n_tokens, bucket)
    return 2 * cfg.layers * (videos * S + rows * own) * cfg.embed * dtype.itemsize


def rows_by_video(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D, S) rows -> (the distinct conditionings (V, D, S), video_of_row (B,)): rows with the same features
    (a video's samples) share one prefix."""
    flat = feats.reshape(feats.shape[0], -1)
    unique, video_of_row = torch.unique(flat, dim=0, return_inverse=True)
    return unique.view(-1, *feats.shape[1:]), video_of_row


@torch.no_grad()
def sample_tokens(model: GPT, feats: torch.Tensor, n_tokens: int, *, top_k: int | None, temperature: float,
                  seeds: Sequence[int] | None = None, cache: bool = True,
                  dtype: torch.dtype = torch.float32, cuda_graph: bool = True, bucket: int | None = None,
                  video_of_row: Sequence[int] | torch.Tensor | None = None, share_prefix: bool = True
                  ) -> torch.Tensor:
    """Autoregressively draw `n_tokens` codebook tokens per row -> LongTensor (rows, n_tokens).

    `feats` (B, D, S): one row of features per sequence, or with `video_of_row` (B,) one per video (V, D, S) and
    the video each sequence is conditioned on. Rows with the same features share one computed prefix (found
    here when `video_of_row` is not given; `share_prefix=False`: every row computes and keeps its own, as the
    sampler before the shared prefix did). `feats` as the transformer reads them: `LoadedTransformer.sample`
    standardises them first for a run trained on standardised features.
    Row b draws from its own `torch.Generator` seeded with `seeds[b]`, so its tokens do not depend on which batch
    it was sampled in. `cache=False` re-runs the whole sequence each step, exactly like SpecVQGAN; `cache=True`
    (a `TokenSampler`) gives the same tokens in fp32 much faster. `dtype=torch.bfloat16` samples in bf16 (tokens
    then differ from fp32's). `bucket`: own-cache slots read per step in multiples of it (None: 64 on CUDA, where
    each bucket's steps replay a captured CUDA graph unless `cuda_graph=False`; exact on the CPU). What has and
    has not been checked on a GPU: docs/sampling.md.
    """
    if feats.dim() != 3 or feats.shape[1] != model.config.feat_dim:
        raise ValueError(f"feats must be (B, {model.config.feat_dim}, S), got {tuple(feats.shape)}")
    S = feats.shape[2]
    if video_of_row is not None:
        video_of_row = torch.as_tensor(video_of_row, dtype=torch.long).cpu()
        if video_of_row.dim() != 1 or (len(video_of_row) and not 0 <= int(video_of_row.min()) <= int(
                video_of_row.max()) < len(feats)):
            raise ValueError(f"video_of_row must be (rows,) indices into the {len(feats)} feature rows")
    B = len(feats) if video_of_row is None else len(video_of_row)
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
    if not cache:
        rows = feats if video_of_row is None else feats.index_select(0, video_of_row.to(device))
        return _sample_full_recompute(model, rows, n_tokens, top_k, temperature, u)
    if video_of_row is None:
        feats, video_of_row = rows_by_video(feats) if share_prefix else (feats, torch.arange(B))
    elif not share_prefix:
        feats, video_of_row = feats.index_select(0, video_of_row.to(device)), torch.arange(B)
    else:  # only the videos the rows use, numbered 0 .. V-1
        used, video_of_row = torch.unique(video_of_row, return_inverse=True)
        feats = feats.index_select(0, used.to(device))
    if device.type == "cuda":
        need = kv_cache_bytes(model.config, B, len(feats), S, n_tokens, dtype,
                              CUDA_BUCKET if bucket is None else bucket)
        free = torch.cuda.mem_get_info(device)[0]
        if need > free:
            raise ValueError(f"the key/value caches of {B} rows need {need / 2**30:.1f} GiB, {free / 2**30:.1f} "
                             "GiB are free: sample fewer rows at a time")
    sampler = TokenSampler(model, S, u, video_of_row, top_k=top_k, temperature=temperature, dtype=dtype, bucket=bucket)
    return sampler.run(feats, cuda_graph=cuda_graph)


def _sample_full_recompute(model: GPT, feats: torch.Tensor, n_tokens: int, top_k: int | None, temperature: float,
                           u: torch.Tensor) -> torch.Tensor:
    """SpecVQGAN's way: the whole sequence re-run for every token (the reference the cached sampler must match)."""
    out = torch.empty(len(feats), n_tokens, dtype=torch.long, device=feats.device)
    was_training = model.training
    model.eval()
    try:
        for t in range(n_tokens):
            logits = model(out[:, :t], feats)[:, -1]
            out[:, t] = _next_tokens(logits, top_k, temperature, u[:, t])
    finally:
        model.train(was_training)
    return out
