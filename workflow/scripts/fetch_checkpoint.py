"""A released SpecVQGAN file: download (MD5 checked), unpack the .ckpt (or the member asked for) from its tar.gz."""
from i2a.pipeline.jobs import start_job
from i2a.spec.released import fetch_released

start_job(snakemake)
fetch_released(snakemake.wildcards.name, snakemake.output[0], url=snakemake.params.url, member=snakemake.params.member)
