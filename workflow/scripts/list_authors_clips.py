"""The clip table of SpecVQGAN's official VAS split lists: class, split and shard of every listed clip."""
from i2a.data.authors import list_authors_clips
from i2a.pipeline.jobs import start_job

start_job(snakemake)
list_authors_clips({"train": snakemake.input.train, "valid": snakemake.input.valid}, snakemake.params.shards,
                   snakemake.output.clips, snakemake.output.rejected)
