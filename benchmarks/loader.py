"""GPT training input throughput: the input path train_gpt uses now vs the old one, same store, same run.

The store: `--clips` clips (2,000) x 212 frames x 2048-d fp16 features (ResNet50's, as `features.dtype: float16`
stores them) and 265 int16 tokens per clip, written into a temporary folder with the project's store writer
(`i2a.data.store.NpyRowWriter`) in `--shards` shards and read memory-mapped through `ShardedArray`, as
train_gpt reads its shards. 2,000 clips are 1.7 GB: just written, they are in the page cache, so this measures
the loader's CPU work, not the disk (both paths read the same bytes when S = 212).

old (a baseline kept here, no longer in the package): each sample converted on the CPU in `__getitem__`: the
  whole 212 x 2048 row read and converted fp16 -> fp32, the S frames picked, transposed to (D, S) and made
  contiguous, tokens to int64; DataLoader with num_workers=0 (the old default). Its batches are the model's
  inputs as they are, so nothing else is timed.
new (`i2a.training.gpt`): `GPTDataset` returns the stored rows (the S frames of fp16, int16 tokens), a DataLoader
  with 0, 1, 2 ... worker processes (`--workers`; persistent, as the config's `loader:` has them), then, in the
  timed loop, what the training step does once the batch is on its device: `model_inputs` (fp32, int64, the
  (D, S) view the GPT's Conv1d takes). Nothing is moved to a GPU, so that conversion runs on the CPU, in the main
  process, and is counted in full. Not measured: the host -> device copy (half the bytes on the new path) and
  pinned memory (no CUDA).
new + transpose: the same, with the (D, S) view also copied into a contiguous tensor. On a GPU that copy costs
  microseconds inside the model's first layer; on a CPU the first layer pays it (about 2 ms per sample here), so
  this line is what CPU-only training (the demo) gains.

Workers: on a small machine with the store in the page cache, worker processes cost more than they save (each
batch is copied into fresh shared memory and mapped again by the trainer: page faults, expensive on a VM), which
is why the demo sets `loader.num_workers: 0`; on a cluster node they overlap reads from a network file system
with the GPU's work. Each configuration is printed; `loader_speedup` is the fastest new configuration (named on
the line before) against the old path.

Both paths iterate the same shuffled order (`EpochSampler`), batch `--batch`; the first batches are compared
(identical in fp32, or exit code 1). Each configuration gets one untimed warm-up epoch (worker start-up, page
cache, the workers' memory maps), then `--repeats` timed epochs in rotating order; the fastest epoch of each is
reported (a shared machine only ever slows a run down). The main process uses `--threads` torch threads (1).

    .venv/bin/python benchmarks/loader.py [--clips 2000] [--workers 0,1,2] [--batch 16]

The last line is `loader_speedup: <ratio>` (samples/s of the fastest new configuration / samples/s of the old).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from i2a.data.store import NpyRowWriter, ShardedArray
from i2a.spec.frames import sample_frame_indices
from i2a.training.gpt import GPTDataset, model_inputs
from i2a.training.loop import EpochSampler

FRAMES, DIM, TOKENS, VOCAB = 212, 2048, 265, 128


class OldGPTDataset(Dataset):
    """The old input path: (int64 tokens, fp32 (D, S) features) made on the CPU for every sample."""

    def __init__(self, tokens, feats, S: int):
        self.tokens, self.feats, self.frame_idx = tokens, feats, sample_frame_indices(feats.shape[1], S)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index):
        index, _epoch = index if isinstance(index, tuple) else (index, 0)
        tokens = torch.from_numpy(np.asarray(self.tokens[index], dtype=np.int64))
        feats = np.asarray(self.feats[index], dtype=np.float32)[self.frame_idx].T
        return tokens, torch.from_numpy(np.ascontiguousarray(feats))


def write_store(folder: Path, clips: int, shards: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Feature and token shards as the workflow writes them (row by row through NpyRowWriter)."""
    rng = np.random.default_rng(seed)
    feats, tokens = [], []
    bounds = np.linspace(0, clips, shards + 1).astype(int)
    for k in range(shards):
        f, t = folder / f"feats{k:03d}.npy", folder / f"tokens{k:03d}.npy"
        n = bounds[k + 1] - bounds[k]
        with NpyRowWriter(f, (FRAMES, DIM), "float16") as out:
            for _ in range(n):
                out.append(rng.standard_normal((FRAMES, DIM), dtype=np.float32))
        with NpyRowWriter(t, (TOKENS,), "int16") as out:
            for row in rng.integers(0, VOCAB, (n, TOKENS)):
                out.append(row)
        feats.append(f)
        tokens.append(t)
    return feats, tokens


def old_epoch(loader) -> int:
    n = 0
    for tokens, feats in loader:
        n += len(tokens)
    return n


def new_epoch(loader, contiguous: bool = False) -> int:
    n = 0
    for batch in loader:
        tokens, feats = model_inputs(batch)  # what on_after_batch_transfer does on the device
        if contiguous:
            feats = feats.contiguous()
        n += len(tokens)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--feat-sample-size", type=int, default=FRAMES, help="S frames per clip (212: all)")
    ap.add_argument("--batch", type=int, default=16, help="clips per batch (the study's per-GPU batch: 16-128)")
    ap.add_argument("--workers", default="0,1,2", help="loader worker processes of the new path, comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per configuration; the fastest is reported")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the main process (0: torch's default; 1: OpenMP cannot be stalled by "
                         "other load on a shared machine; workers always use 1)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="i2a-loader-bench-") as tmp:
        t0 = time.perf_counter()
        feat_files, token_files = write_store(Path(tmp), args.clips, args.shards)
        size = sum(p.stat().st_size for p in feat_files) / 1e9
        print(f"store: {args.clips} clips x {FRAMES} x {DIM} fp16 in {args.shards} shards ({size:.2f} GB), written "
              f"in {time.perf_counter() - t0:.0f} s; S={args.feat_sample_size}, batch {args.batch}, "
              f"torch threads {torch.get_num_threads()}", flush=True)
        tokens, feats = ShardedArray(token_files), ShardedArray(feat_files)
        S = args.feat_sample_size

        def sampler():
            return EpochSampler(len(tokens), shuffle=True, seed=0)

        old = DataLoader(OldGPTDataset(tokens, feats, S), batch_size=args.batch, sampler=sampler(), num_workers=0)
        paths = {"old (CPU convert, 0 workers)": (old_epoch, old)}
        loaders = []
        for workers in (int(w) for w in args.workers.split(",")):
            new = DataLoader(GPTDataset(tokens, feats, S), batch_size=args.batch, sampler=sampler(),
                             num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
            loaders.append(new)
            paths[f"new ({workers} workers)"] = (new_epoch, new)
            paths[f"new ({workers} workers) + transpose"] = (lambda loader: new_epoch(loader, contiguous=True), new)

        # the same batches: the new path's stored rows, converted as on the device, equal the old fp32 batch
        old_tokens, old_feats = next(iter(old))
        for new in loaders:
            new_tokens, new_feats = model_inputs(next(iter(new)))
            same = (old_tokens.dtype == new_tokens.dtype and old_tokens.equal(new_tokens)
                    and old_feats.dtype == new_feats.dtype and old_feats.equal(new_feats))
            if not same:
                sys.exit(f"FAILED: the new input path's batch ({new.num_workers} workers) differs from the old one")
        print(f"first batches identical (tokens {tuple(new_tokens.shape)} {new_tokens.dtype}, features "
              f"{tuple(new_feats.shape)} {new_feats.dtype}): True", flush=True)

        for fn, loader in paths.values():  # warm-up: workers started, pages cached and mapped
            fn(loader)
        best: dict[str, float] = {}
        names = list(paths)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotating order
                fn, loader = paths[name]
                seconds = time.perf_counter()
                n = fn(loader)
                seconds = time.perf_counter() - seconds
                assert n == args.clips, (name, n)
                best[name] = min(best.get(name, float("inf")), seconds)
            print(f"  round {r + 1}: " + ", ".join(f"{name.split(' (')[0]}{name[name.index('('):]} "
                                                   f"{args.clips / best[name]:.0f}/s" for name in names), flush=True)
        del loaders, paths  # stop the persistent workers before the store goes

    print(f"{'configuration':38s} {'samples/s':>10s} {'s/epoch':>8s} {'vs old':>7s}")
    rates = {name: args.clips / seconds for name, seconds in best.items()}
    old_rate = rates[names[0]]
    for name in names:
        print(f"{name:38s} {rates[name]:10.1f} {best[name]:8.2f} {rates[name] / old_rate:6.2f}x")
    fastest = max((n for n in names[1:] if not n.endswith("transpose")), key=rates.get)
    print(f"fastest new configuration: {fastest}; with the transpose copied too: "
          f"{rates[fastest + ' + transpose'] / old_rate:.2f}x")
    print(f"loader_speedup: {rates[fastest] / old_rate:.2f}")


if __name__ == "__main__":
    main()
