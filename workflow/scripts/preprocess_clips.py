"""One shard of the data stage: SpecVQGAN's ffmpeg chain: 10 s wav, video and mel per clip."""
from i2a.data.clips import preprocess_split_shard
from i2a.pipeline.jobs import start_job

start_job(snakemake)
preprocess_split_shard(snakemake.input.clips, snakemake.wildcards.split, int(snakemake.wildcards.shard),
                       snakemake.params.data["audio"], snakemake.output[0], workers=snakemake.threads)
