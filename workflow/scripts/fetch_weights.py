"""Download one backbone weights file into resources/weights/, checksum verified."""
from i2a.features.backbones import fetch_weights_file
from i2a.pipeline.jobs import start_job

start_job(snakemake)
fetch_weights_file(snakemake.output[0])
