"""A Melception-architecture classifier of the dataset's classes, the demo's stand-in for the VGGSound one."""
from i2a.pipeline.jobs import start_job
from i2a.training.melception import train_from_shards

start_job(snakemake)
train_from_shards(snakemake.input.train, snakemake.input.valid, snakemake.params.train, snakemake.params.crop_frames,
                  snakemake.output[0], (snakemake.input.codebook or [None])[0])
