"""FID and MKL (design.md §7) of one row's samples against the shared real reference, with 95% intervals."""
from i2a.evaluation.scoring import score_samples
from i2a.pipeline.jobs import start_job

start_job(snakemake)
metrics = snakemake.params.metrics
score_samples(snakemake.input.mels, snakemake.input.names, snakemake.input.reference, snakemake.input.melception,
              (snakemake.input.stats or [None])[0], snakemake.params.seeds, metrics["bootstrap"], metrics["seed"],
              snakemake.output.scores, snakemake.output.outputs)
