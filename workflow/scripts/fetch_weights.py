"""Download one backbone weights file into resources/weights/, checksum verified."""
from pathlib import Path

from i2a.backbones import fetch_weights_file
from i2a.jobs import start_job

log = start_job(snakemake)
log.info("fetched %s", fetch_weights_file(Path(snakemake.output[0])))
