"""The token samplers side by side on the same model, inputs and seeds.

VAS width (1024-d, 16 heads, block 477, S=212 features, 265 tokens, top-k 64), random weights, with few
layers so that it runs in minutes on a laptop CPU: the samplers scale about linearly in the layer count, so the
ratios carry over to the 24-layer model. Cached samplers are timed `--repeats` times (median reported: one busy
moment of a shared machine would decide a single run); the full recompute once (it takes minutes, which averages
such moments out).

    python benchmarks/sampling.py [--layers 1] [--batch 4] [--device cpu] [--threads 2] [--bucket N]
        [--dtype bfloat16] [--no-cuda-graph]
        -> the cached sampler against the full recompute (SpecVQGAN's), every row its own video;
           last line `sampling_speedup: <ratio>`

    python benchmarks/sampling.py --videos 4 --per-video 10 [--full-recompute] ...
        -> the study's pattern, rows sharing their video's features: the shared-prefix sampler against the
           per-row-prefix one (today's KV sampler before the shared prefix: every sample prefills and keeps its own
           copy of the conditioning), identical tokens asserted; last line `prefix_speedup: <ratio>`

    python benchmarks/sampling.py --device cuda --layers 24 --videos 8 --per-video 64 --dtype bfloat16
        -> the same on a GPU at the study's shape, with the time for the study's 76,800 sequences (768 validation
           videos x 100 samples) extrapolated from the measured sequences per second (`--study-sequences`)

On CUDA the decode steps read the own cache in buckets of 64 slots, each bucket one captured CUDA graph.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from i2a.infra.device import pick_device
from i2a.infra.precision import set_precision
from i2a.models.gpt import GPT, sample_tokens
from i2a.spec.runspec import GPTConfig, SamplingSettings

STUDY = SamplingSettings()  # the study's sampler settings (top-k, temperature): the config's defaults


def _timed(fn, device: str) -> tuple[torch.Tensor, float, float]:
    """Wall and process CPU seconds (the latter shows how much a busy machine stretched the wall time)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _repeated(name: str, fn, args) -> tuple[torch.Tensor, float]:
    """Warm-up, then `repeats` timed runs that must give the same tokens; prints and returns the median."""
    fn()  # warm-up (allocator, kernels, CUDA graphs' first capture)
    times = [_timed(fn, args.device) for _ in range(args.repeats)]
    out = times[0][0]
    if not all(torch.equal(o, out) for o, _, _ in times):
        raise RuntimeError(f"{name} gave different tokens for the same seeds in different runs")
    wall = statistics.median(t for _, t, _ in times)
    cpu = statistics.median(c for _, _, c in times)
    rows = out.shape[0]
    print(f"{name}_s: {wall:.2f} ({wall / rows:.3f} s/sequence, {rows / wall:.1f} sequences/s, cpu {cpu:.1f} s; "
          f"runs {', '.join(f'{t:.2f}' for _, t, _ in times)})", flush=True)
    return out, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4, help="rows, each its own video (without --videos)")
    ap.add_argument("--videos", type=int, default=0, help="videos whose features the rows share (0: none)")
    ap.add_argument("--per-video", type=int, default=10, help="samples per video (with --videos)")
    ap.add_argument("--full-recompute", action="store_true", help="with --videos: time the full recompute too")
    ap.add_argument("--tokens", type=int, default=265)
    ap.add_argument("--feat-sample-size", type=int, default=212)
    ap.add_argument("--device", default=str(pick_device()))
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of a cached sampler (median reported)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the cached samplers'")
    ap.add_argument("--bucket", type=int, default=None,
                    help="own-cache slots read per step in multiples of this (default: 64 on CUDA, exact on CPU)")
    ap.add_argument("--no-cuda-graph", action="store_true", help="on CUDA: run the bucketed steps eagerly")
    ap.add_argument("--study-sequences", type=int, default=76_800, help="sequences to extrapolate the time to")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(args.threads)
    set_precision("bf16" if args.dtype == "bfloat16" else "fp32")  # strict fp32: no TF32 in cuDNN's Conv1d either

    torch.manual_seed(0)
    cfg = GPTConfig(layers=args.layers)  # vocab 128, block 477, 16 heads, 1024-d, 2048-d features
    model = GPT(cfg).to(args.device).eval()
    shared = args.videos > 0
    n_videos = args.videos if shared else args.batch
    rows = n_videos * args.per_video if shared else args.batch
    feats = torch.randn(n_videos, cfg.feat_dim, args.feat_sample_size, device=args.device)
    video_of_row = torch.arange(n_videos).repeat_interleave(args.per_video) if shared else torch.arange(rows)
    seeds = list(range(rows))
    print(f"device {args.device}, threads {torch.get_num_threads()}, layers {args.layers}, rows {rows}"
          f"{f' ({n_videos} videos x {args.per_video})' if shared else ''}, S {args.feat_sample_size}, "
          f"tokens {args.tokens}, cached: {args.dtype}, bucket {args.bucket}", flush=True)

    def cached(share_prefix: bool) -> torch.Tensor:
        return sample_tokens(model, feats, args.tokens, top_k=STUDY.top_k, temperature=STUDY.temperature, seeds=seeds,
                             cache=True, video_of_row=video_of_row, share_prefix=share_prefix,
                             dtype=getattr(torch, args.dtype), cuda_graph=not args.no_cuda_graph, bucket=args.bucket)

    def full_recompute() -> torch.Tensor:
        return sample_tokens(model, feats, args.tokens, top_k=STUDY.top_k, temperature=STUDY.temperature, seeds=seeds,
                             cache=False, video_of_row=video_of_row)

    new, t_new = _repeated("shared_prefix" if shared else "kv_cache", lambda: cached(True), args)
    if args.device.startswith("cuda"):
        study = args.study_sequences / rows * t_new
        print(f"study_time_extrapolated_min: {study / 60:.1f} ({args.study_sequences} sequences at {rows} per batch, "
              f"{args.dtype}; peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)", flush=True)
    if shared:
        per_row, t_per_row = _repeated("per_row_prefix", lambda: cached(False), args)
        same = int((per_row == new).all(dim=1).sum())
        print(f"identical_rows: {same}/{rows} (shared vs per-row prefix)", flush=True)
        if same != rows:
            raise RuntimeError("the shared-prefix sampler gave other tokens than the per-row-prefix sampler")
    if not shared or args.full_recompute:
        plain, t_plain, c_plain = _timed(full_recompute, args.device)
        print(f"full_recompute_s: {t_plain:.2f} ({t_plain / rows:.3f} s/sequence, cpu {c_plain:.1f} s)", flush=True)
        print(f"identical_rows: {int((plain == new).all(dim=1).sum())}/{rows} (cached vs full recompute)", flush=True)
        if shared:
            print(f"sampling_speedup: {t_plain / t_new:.1f}")
    if shared:
        print(f"prefix_speedup: {t_per_row / t_new:.2f}")
    else:
        print(f"sampling_speedup: {t_plain / t_new:.1f}")


if __name__ == "__main__":
    main()
