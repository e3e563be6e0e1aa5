"""FID and MKL (SPEC section 7) of one run's samples against the shared real reference, with 95% intervals."""
import json
from pathlib import Path

import numpy as np
import torch

from i2a.jobs import start_job
from i2a.melception import load_melception, melception_outputs
from i2a.metrics import METRICS, bootstrap_ci, inception_score, kid, mean_over_seeds, seed_spread

log = start_job(snakemake)
device = "cuda" if torch.cuda.is_available() else "cpu"
stats_path = snakemake.input.stats[0] if snakemake.input.stats else None
model, stats = load_melception(snakemake.input.melception, stats_path=stats_path, device=device)
reference = np.load(snakemake.input.reference)
videos = Path(snakemake.input.names).read_text().splitlines()
if list(reference["clips"]) != videos:
    raise ValueError("the samples and the real reference list different validation videos")
mels = np.load(snakemake.input.mels, mmap_mode="r")  # (V, R x K, n_mels, T), R sampling seeds of K samples
R = snakemake.params.seeds
V, RK = mels.shape[:2]
if RK % R:
    raise ValueError(f"{RK} samples per video do not split into {R} sampling seeds")
K = RK // R
fake = melception_outputs(model, np.asarray(mels, dtype=np.float32).reshape(V * RK, *mels.shape[2:]), stats,
                          device=device)
fake = {k: v.reshape(V, R, K, -1) for k, v in fake.items()}
cfg = snakemake.params.metrics
scores = {"n_videos": V, "samples_per_video": K, "n_seeds": R}
for name, key in (("fid", "2048"), ("mkl", "logits")):
    point, low, high = bootstrap_ci(fake[key], reference[key], mean_over_seeds(name), n_boot=cfg["bootstrap"],
                                    seed=cfg["seed"])
    per_seed = [METRICS[name](fake[key][:, r], reference[key]) for r in range(R)]
    _, seed_sd = seed_spread(per_seed)
    scores[name] = {"value": point, "low": low, "high": high, "per_seed": per_seed, "seed_sd": seed_sd}
fake = {k: v.reshape(V, R * K, -1) for k, v in fake.items()}
K_all = R * K
isc_mean, isc_std = inception_score(fake["logits_unbiased"].reshape(V * K_all, -1), splits=min(10, V * K_all))
kid_mean, kid_std = kid(fake["2048"].reshape(V * K_all, -1), reference["2048"])
scores["isc"] = {"value": isc_mean, "std": isc_std}
scores["kid"] = {"value": kid_mean, "std": kid_std}
Path(snakemake.output[0]).write_text(json.dumps(scores, indent=2, allow_nan=True))
log.info("FID %.2f [%.2f, %.2f]  MKL %.3f [%.3f, %.3f]  (%d videos x %d seeds x %d samples)", scores["fid"]["value"],
         scores["fid"]["low"], scores["fid"]["high"], scores["mkl"]["value"], scores["mkl"]["low"],
         scores["mkl"]["high"], V, R, K)
