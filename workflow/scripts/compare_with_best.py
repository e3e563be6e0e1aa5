"""A conditioned run against the best conditioned run (lowest MKL), paired over the same validation videos."""
from i2a.evaluation.scoring import compare_with_best
from i2a.pipeline.jobs import start_job

start_job(snakemake)
metrics = snakemake.params.metrics
runs = snakemake.params.runs
compare_with_best(snakemake.wildcards.run, dict(zip(runs, snakemake.input.outputs)),
                  dict(zip(runs, snakemake.input.scores)), snakemake.input.reference, metrics["bootstrap"],
                  metrics["seed"], snakemake.output[0])
