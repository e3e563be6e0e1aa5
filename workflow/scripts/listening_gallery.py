"""A run's listening gallery: one HTML page embedding frames, spectrograms and sounds of a few validation videos."""
from i2a.pipeline.jobs import start_job
from i2a.infra.atomic import write_text
from i2a.report.gallery import collect_gallery, gallery_html

log = start_job(snakemake)
run = snakemake.wildcards.run
entries = collect_gallery(snakemake.input.audio, snakemake.input.mels, snakemake.input.names, snakemake.input.valid,
                          n_videos=snakemake.params.videos)
if len(entries) < snakemake.params.videos:
    log.warning("only %d videos were vocoded (vocoder.listen_videos): the gallery shows %d, not %d",
                len(entries), len(entries), snakemake.params.videos)
page = gallery_html(run, entries, vocoder=snakemake.params.vocoder)
write_text(snakemake.output[0], page)
log.info("gallery of %d videos, %.1f MB", len(entries), len(page) / 1e6)
