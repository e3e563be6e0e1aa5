"""Download an archive once, resumably; its MD5 is recorded only once it proved whole."""
from i2a.infra.download import fetch_archive
from i2a.pipeline.jobs import start_job

log = start_job(snakemake)
log.info("%s: md5 %s", snakemake.output[0], fetch_archive(snakemake.params.url, snakemake.output[0], snakemake.params.md5))
