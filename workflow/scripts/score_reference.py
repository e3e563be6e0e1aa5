"""Melception outputs of the real validation spectrograms, the reference every run is scored against."""
from i2a.evaluation.scoring import score_reference
from i2a.pipeline.jobs import start_job

start_job(snakemake)
score_reference(snakemake.input.clips, snakemake.input.melception, (snakemake.input.stats or [None])[0],
                snakemake.params.crop_frames, snakemake.output.reference, snakemake.output.evaluator)
