"""Samples for every validation video of one run, decoded to spectrograms by the codebook."""
from pathlib import Path

import torch

from i2a.dataset import split_clips
from i2a.jobs import start_job
from i2a.runs import sample_run

log = start_job(snakemake)
clips = list(split_clips(snakemake.input.clips)["clip"])
sample_run(snakemake.input.transformer, snakemake.input.codebook, snakemake.input.features, len(clips),
           snakemake.params.hparams, snakemake.params.sampling, snakemake.params.batch_size,
           "cuda" if torch.cuda.is_available() else "cpu", snakemake.output.tokens, snakemake.output.mels)
Path(snakemake.output.names).write_text("\n".join(clips) + "\n")
