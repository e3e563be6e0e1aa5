"""Full-recompute sampling (SpecVQGAN's) vs the KV-cached sampler, same model, inputs and seeds.

VAS width (1024-d, 16 heads, block 477, S=212 features, 265 tokens, top-k 64), random weights, with few
layers so that it runs in minutes on a laptop CPU: both samplers scale linearly in the layer count, so the
ratio carries over to the 24-layer model. The last line is `sampling_speedup: <ratio>`.

    python benchmarks/sampling.py [--layers 1] [--batch 4] [--device cpu]
"""
from __future__ import annotations

import argparse
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
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = GPTConfig(layers=args.layers)  # vocab 128, block 477, 16 heads, 1024-d, 2048-d features
    model = GPT(cfg).to(args.device).eval()
    feats = torch.randn(args.batch, cfg.feat_dim, args.feat_sample_size, device=args.device)
    seeds = list(range(args.batch))
    print(f"device {args.device}, threads {torch.get_num_threads()}, layers {args.layers}, batch {args.batch}, "
          f"S {args.feat_sample_size}, tokens {args.tokens}", flush=True)

    def run(cache: bool) -> torch.Tensor:
        return sample_tokens(model, feats, args.tokens, top_k=64, seeds=seeds, cache=cache)

    run(True)  # warm-up (allocator, kernels)
    cached, t_cached, c_cached = _timed(lambda: run(True), args.device)
    print(f"kv_cache_s: {t_cached:.2f} ({t_cached / args.batch:.3f} s/sample, cpu {c_cached:.1f} s)", flush=True)
    plain, t_plain, c_plain = _timed(lambda: run(False), args.device)
    print(f"full_recompute_s: {t_plain:.2f} ({t_plain / args.batch:.3f} s/sample, cpu {c_plain:.1f} s)", flush=True)
    same = int((plain == cached).all(dim=1).sum())
    print(f"identical_rows: {same}/{args.batch}")
    print(f"sampling_speedup: {t_plain / t_cached:.1f}")


if __name__ == "__main__":
    main()
