"""One row against the baseline run, paired over the same validation videos (dKL, dFID with 95% intervals)."""
from i2a.evaluation.scoring import compare_rows
from i2a.pipeline.jobs import start_job

start_job(snakemake)
metrics = snakemake.params.metrics
compare_rows(snakemake.input.outputs, snakemake.input.baseline, snakemake.input.reference, snakemake.params.row,
             snakemake.params.baseline, "baseline", metrics["bootstrap"], metrics["seed"], snakemake.output[0])
