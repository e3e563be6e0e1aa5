"""Melception outputs of the real validation spectrograms, the reference every run is scored against."""
import os

import numpy as np
import torch

from i2a.dataset import split_clips, split_mels
from i2a.jobs import start_job
from i2a.melception import load_melception, melception_outputs

log = start_job(snakemake)
device = "cuda" if torch.cuda.is_available() else "cpu"
stats_path = snakemake.input.stats[0] if snakemake.input.stats else None
model, stats = load_melception(snakemake.input.melception, stats_path=stats_path, device=device)
if stats is None:
    raise ValueError(f"{snakemake.input.melception} carries no per-mel-bin statistics: set melception.stats to "
                     "its train_means_stds_melspec_10s_22050hz.txt")
clips = split_clips(snakemake.input.clips)
outputs = melception_outputs(model, split_mels(snakemake.input.clips, snakemake.params.crop_frames), stats,
                             device=device)
tmp = snakemake.output[0] + ".tmp.npz"
np.savez(tmp, clips=np.array(list(clips["clip"]), dtype=str), classes=np.array(list(clips["class"]), dtype=str),
         **outputs)
os.replace(tmp, snakemake.output[0])
log.info("reference: %d real clips", len(clips))
