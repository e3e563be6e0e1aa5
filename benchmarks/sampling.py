"""Full-recompute sampling (SpecVQGAN's) vs the KV-cached sampler, same model, inputs and seeds.

VAS width (1024-d, 16 heads, block 477, S=212 features, 265 tokens, top-k 64), random weights, with few
layers so that it runs in minutes on a laptop CPU: both samplers scale linearly in the layer count, so the
ratio carries over to the 24-layer model. The cached sampler is timed `--repeats` times (median reported: it
takes about a second, so one busy moment of a shared machine would decide a single run); the full recompute
once (it takes minutes, which averages such moments out). The last line is `sampling_speedup: <ratio>`.

    python benchmarks/sampling.py [--layers 1] [--batch 4] [--device cpu] [--threads 2]
        [--fixed-shapes] [--dtype bfloat16] [--no-cuda-graph]

On CUDA the cached sampler runs with fixed shapes and its decode step as one CUDA graph; `--dtype bfloat16`
samples in bf16 (`identical_rows` then says how many rows still equal fp32's full recompute).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from i2a.device import pick_device
from i2a.models.gpt import GPT, sample_tokens
from i2a.runspec import GPTConfig


def _timed(fn, device: str) -> tuple[torch.Tensor, float, float]:
    """Wall and process CPU seconds (the latter shows how much a busy machine stretched the wall time)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=265)
    ap.add_argument("--feat-sample-size", type=int, default=212)
    ap.add_argument("--device", default=str(pick_device()))
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of the cached sampler (median reported)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the cached sampler's")
    ap.add_argument("--fixed-shapes", action="store_true",
                    help="on the CPU too: attend over the whole masked cache (what CUDA captures as a graph)")
    ap.add_argument("--no-cuda-graph", action="store_true", help="on CUDA: run the fixed-shape steps eagerly")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = GPTConfig(layers=args.layers)  # vocab 128, block 477, 16 heads, 1024-d, 2048-d features
    model = GPT(cfg).to(args.device).eval()
    feats = torch.randn(args.batch, cfg.feat_dim, args.feat_sample_size, device=args.device)
    seeds = list(range(args.batch))
    print(f"device {args.device}, threads {torch.get_num_threads()}, layers {args.layers}, batch {args.batch}, "
          f"S {args.feat_sample_size}, tokens {args.tokens}, cached: {args.dtype}"
          f"{', fixed shapes' if args.fixed_shapes else ''}", flush=True)

    def run(cache: bool) -> torch.Tensor:
        if not cache:
            return sample_tokens(model, feats, args.tokens, top_k=64, seeds=seeds, cache=False)
        return sample_tokens(model, feats, args.tokens, top_k=64, seeds=seeds, cache=True,
                             dtype=getattr(torch, args.dtype), cuda_graph=not args.no_cuda_graph,
                             fixed_shapes=True if args.fixed_shapes else None)

    run(True)  # warm-up (allocator, kernels)
    times = [_timed(lambda: run(True), args.device) for _ in range(args.repeats)]
    cached = times[0][0]
    if not all(torch.equal(out, cached) for out, _, _ in times):
        raise RuntimeError("the cached sampler gave different tokens for the same seeds in different runs")
    t_cached = statistics.median(t for _, t, _ in times)
    c_cached = statistics.median(c for _, _, c in times)
    print(f"kv_cache_s: {t_cached:.2f} ({t_cached / args.batch:.3f} s/sample, cpu {c_cached:.1f} s; "
          f"runs {', '.join(f'{t:.2f}' for _, t, _ in times)})", flush=True)
    plain, t_plain, c_plain = _timed(lambda: run(False), args.device)
    print(f"full_recompute_s: {t_plain:.2f} ({t_plain / args.batch:.3f} s/sample, cpu {c_plain:.1f} s)", flush=True)
    same = int((plain == cached).all(dim=1).sum())
    print(f"identical_rows: {same}/{args.batch}")
    print(f"sampling_speedup: {t_plain / t_cached:.1f}")


if __name__ == "__main__":
    main()
