"""Train the spectrogram codebook (design.md §4) on the training split's mels; a killed job resumes."""
from pathlib import Path

from i2a.pipeline.jobs import start_job
from i2a.training.codebook import train_from_shards

start_job(snakemake)
train_from_shards(snakemake.input.train, snakemake.input.valid, snakemake.params.model, snakemake.params.train,
                  snakemake.params.crop_frames, Path(snakemake.output.checkpoint).parent)
