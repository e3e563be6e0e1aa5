"""Train a MelGAN vocoder on the training split's wavs (design.md §6); a killed job resumes."""
from pathlib import Path

from i2a.pipeline.jobs import start_job
from i2a.training.vocoder import train_from_shards

start_job(snakemake)
train_from_shards(snakemake.input.train, snakemake.params.train, snakemake.params.audio,
                  Path(snakemake.output.checkpoint).parent)
