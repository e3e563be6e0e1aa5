"""A released SpecVQGAN checkpoint: download (MD5 checked), unpack the .ckpt from its tar.gz."""
import shutil
from pathlib import Path

from i2a.download import download, extract_checkpoint, record_or_check_md5
from i2a.jobs import start_job

log = start_job(snakemake)
spec, out = snakemake.params.spec, Path(snakemake.output[0])
archive = out.parent / "downloads" / spec["url"].rsplit("/", 1)[-1]
if not archive.exists():
    download(spec["url"], archive, md5=spec["md5"])
log.info("%s: md5 %s", archive, record_or_check_md5(archive, spec["md5"]))
if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
    extract_checkpoint(archive, out, spec.get("member"))
else:
    tmp = out.with_name(out.name + ".part")
    shutil.copyfile(archive, tmp)  # streamed: the file can be larger than memory
    tmp.replace(out)
log.info("wrote %s", out)
