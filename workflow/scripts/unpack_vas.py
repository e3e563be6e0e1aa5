"""Unpack VAS.zip and lay it out as <class>/<clip>.mp4."""
import shutil
from pathlib import Path

from i2a.dataset import collect_class_videos
from i2a.download import record_or_check_md5, unpack_zip
from i2a.jobs import start_job

log = start_job(snakemake)
archive, out = Path(snakemake.input[0]), Path(snakemake.output[0])
record_or_check_md5(archive, None)  # the archive must still be the one downloaded
staging = unpack_zip(archive, out.with_name(out.name + ".unpacked"))
try:
    counts = collect_class_videos(staging, out)
finally:
    shutil.rmtree(staging, ignore_errors=True)
log.info("videos per class: %s", counts)
