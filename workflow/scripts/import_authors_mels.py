"""One data shard of the authors' precomputed mel spectrograms, read from their per-class tars."""
from i2a.data.authors import import_mels_split_shard
from i2a.pipeline.jobs import start_job

start_job(snakemake)
import_mels_split_shard(snakemake.input.clips, snakemake.wildcards.split, int(snakemake.wildcards.shard),
                        snakemake.input.tars, snakemake.output[0], **snakemake.params.mel)
