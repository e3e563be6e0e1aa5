"""Write the demo's toy dataset: <class>/<clip>.mp4 with H.264 video and AAC audio."""
from i2a.pipeline.jobs import start_job
from i2a.data.synthetic import make_synthetic_dataset

log = start_job(snakemake)
cfg = snakemake.params.synthetic
paths = make_synthetic_dataset(snakemake.output[0], n_classes=cfg["classes"], clips_per_class=cfg["clips_per_class"],
                               seconds=snakemake.params.seconds, fps=cfg["source_fps"],
                               size=(cfg["height"], cfg["width"]), seed=cfg["seed"])
log.info("wrote %d clips", len(paths))
