"""GPT training throughput: `train_gpt`'s own loop against a bare training step of the same model (issue 21.7).

loop: `i2a.training.gpt.train_gpt` as the workflow's job runs it (GPTModule, Lightning's Trainer as `fit` builds it,
  the DataLoader from `GPTDataset` rows in memory, `--workers` loader workers), one epoch of `--steps` batches; timed from the start of batch
  `--warmup` to the end of the last one (a callback; on CUDA it synchronises at those two points only).
bare: the same model (`GPT` of the same RunSpec, same initial weights), the same precision (`set_precision`, bf16
  autocast as Lightning's bf16-mixed), batch and optimizer (fused AdamW over `optimizer_groups`): forward,
  cross-entropy, backward, optimizer step, zero_grad, in a hand-written loop over batches already on the device.

Sizes: `tiny` (1 layer x 2 heads x 32-d, 8 frames, 16 tokens: the step costs almost nothing, so what the loop adds
per step shows), `small` (4 x 4 x 256), `study` (24 x 16 x 1024, S 212 + 265 tokens: the H200 note's shape; a GPU).
Printed per size: samples/s of each, the loop's extra milliseconds per step, and last `loop_efficiency: <loop / bare>`
(of the last size given).

    .venv/bin/python benchmarks/train_step.py [--sizes tiny] [--device cpu] [--precision fp32] [--batch 16]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from i2a.infra.device import pick_device
from i2a.infra.precision import autocast_dtype, set_precision
from i2a.models.gpt import GPT
from i2a.spec.runspec import GPTConfig, RunSpec, TrainSettings
from i2a.training.gpt import GPTDataset, model_inputs, optimizer_groups, train_gpt

SIZES = {  # layers, heads, embed, feature frames S, tokens, feature dim
    "tiny": (1, 2, 32, 8, 16, 16),
    "small": (4, 4, 256, 53, 66, 512),
    "study": (24, 16, 1024, 212, 265, 2048),
}
VOCAB = 128


def run_spec(size: str, batch: int, precision: str) -> RunSpec:
    layers, heads, embed, S, n_tok, dim = SIZES[size]
    model = GPTConfig(vocab_size=VOCAB, block_size=S + n_tok, layers=layers, heads=heads, embed=embed, feat_dim=dim)
    train = TrainSettings(batch=batch, base_lr=1e-6, max_epochs=1, seed=0, precision=precision)
    return RunSpec(name=f"bench-{size}", features="resnet50", feat_sample_size=S, model=model, train=train)


def datasets(spec: RunSpec, n_train: int) -> tuple[GPTDataset, GPTDataset]:
    """Random stored rows (int16 tokens, fp16 features) as the workflow's shards hold them."""
    rng = np.random.default_rng(0)
    S, n_tok, dim = spec.feat_sample_size, spec.n_tokens, spec.model.feat_dim

    def make(n):
        return GPTDataset(rng.integers(0, VOCAB, (n, n_tok)).astype(np.int16),
                          rng.random((n, S, dim), dtype=np.float32).astype(np.float16), S)

    return make(n_train), make(spec.train.batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_loop(spec: RunSpec, steps: int, warmup: int, device: torch.device, workers: int = 0) -> float:
    """samples/s of train_gpt's loop over steps warmup..steps of one epoch."""
    import lightning.pytorch as pl

    marks: dict[str, float] = {}

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                _sync(device)
                marks["start"] = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == steps - 1:
                _sync(device)
                marks["end"] = time.perf_counter()

    train_ds, valid_ds = datasets(spec, steps * spec.train.batch)
    with tempfile.TemporaryDirectory(prefix="train_step.") as tmp:
        train_gpt(spec, train_ds, valid_ds, Path(tmp) / "state", accelerator=device.type, callbacks=[Clock()], log_every=10**9,
                  loader={"num_workers": workers})
    return (steps - warmup) * spec.train.batch / (marks["end"] - marks["start"])


def measure_bare(spec: RunSpec, steps: int, warmup: int, device: torch.device) -> float:
    """samples/s of forward + backward + optimizer step on batches already on the device."""
    set_precision(spec.train.precision)
    torch.manual_seed(spec.train.seed)
    model = GPT(spec.model).to(device).train()
    opt = torch.optim.AdamW(optimizer_groups(model, spec.train.weight_decay), lr=spec.train.learning_rate,
                            betas=spec.train.betas, fused=True)
    train_ds, _ = datasets(spec, 4 * spec.train.batch)
    batches = []
    for i in range(4):
        rows = [train_ds[j] for j in range(i * spec.train.batch, (i + 1) * spec.train.batch)]
        batch = tuple(torch.stack(x).to(device) for x in zip(*rows))
        batches.append(model_inputs(batch))
    dtype, S = autocast_dtype(spec.train.precision), spec.feat_sample_size
    start = None
    for step in range(steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        tokens, feats = batches[step % len(batches)]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(tokens[:, :-1], feats)[:, S - 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return (steps - warmup) * spec.train.batch / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="tiny", help="comma-separated: " + ", ".join(SIZES))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60, help="training steps timed per measurement, after warm-up")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="each measured this often, alternating; the best kept")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="the loop's loader workers (config loader.num_workers)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    device = pick_device(args.device)
    steps = args.warmup + args.steps
    print(f"device {device}, torch {torch.__version__}, precision {args.precision}, batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup}, best of {args.repeats}, {args.threads} thread(s), "
          f"{args.workers} loader worker(s)")
    ratio = float("nan")
    for size in args.sizes.split(","):
        spec = run_spec(size, args.batch, args.precision)
        loop, bare = [], []
        for _ in range(args.repeats):  # alternating: a shared machine's slow spells hit both
            bare.append(measure_bare(spec, steps, args.warmup, device))
            loop.append(measure_loop(spec, steps, args.warmup, device, args.workers))
        loop_rate, bare_rate = max(loop), max(bare)
        ratio = loop_rate / bare_rate
        extra_ms = (1 / loop_rate - 1 / bare_rate) * args.batch * 1e3
        n_params = sum(p.numel() for p in GPT(spec.model).parameters())
        print(f"{size} ({n_params / 1e6:.2f}M params): train_gpt loop {loop_rate:.1f} samples/s, bare step "
              f"{bare_rate:.1f} samples/s; the loop adds {extra_ms:.2f} ms per step "
              f"({1e3 * args.batch / bare_rate:.2f} ms bare)")
    print(f"loop_efficiency: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
