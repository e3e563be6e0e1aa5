"""The clip table: class, split (the VAS rule) and shard of every clip found; and what is not a clip, and why."""
from i2a.data.clips import list_clips
from i2a.pipeline.jobs import start_job

start_job(snakemake)
list_clips(snakemake.input[0], snakemake.params.valid_per_class, snakemake.params.shards, snakemake.output.clips,
           snakemake.output.rejected)
