"""Download a file once, resumably; its MD5 is checked (configured) or recorded (first time) beside it."""
from i2a.download import download, record_or_check_md5
from i2a.jobs import start_job

log = start_job(snakemake)
path = download(snakemake.params.url, snakemake.output[0])
log.info("%s: md5 %s", path, record_or_check_md5(path, snakemake.params.md5))
