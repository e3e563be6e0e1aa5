"""A run sampled in the other precision against its own samples, paired over the same validation videos."""
from i2a.evaluation.scoring import compare_rows
from i2a.pipeline.jobs import start_job

start_job(snakemake)
metrics = snakemake.params.metrics
compare_rows(snakemake.input.outputs, snakemake.input.against, snakemake.input.reference, snakemake.params.row,
             snakemake.wildcards.run, snakemake.params.relation, metrics["bootstrap"], metrics["seed"],
             snakemake.output[0])
