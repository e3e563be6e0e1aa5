"""One of the SpecVQGAN authors' VAS files, resumably (a .part file is continued), checked against their MD5."""
from i2a.infra.download import download
from i2a.pipeline.jobs import start_job

log = start_job(snakemake)
download(snakemake.params.url, snakemake.output[0], md5=snakemake.params.md5)
log.info("%s: md5 %s", snakemake.output[0], snakemake.params.md5)
