"""Unpack VAS.zip and lay it out as <class>/<clip>.mp4."""
from i2a.data.clips import unpack_vas
from i2a.infra.download import record_or_check_md5
from i2a.pipeline.jobs import start_job

log = start_job(snakemake)
record_or_check_md5(snakemake.input[0], None)  # the archive must still be the one downloaded
counts = unpack_vas(snakemake.input[0], snakemake.output[0])
log.info("videos per class: %s (%d in all)", counts, sum(counts.values()))
