"""The report's landing page (reStructuredText) from the table, the evaluator, the probes and the codebook."""
from i2a.jobs import start_job
from i2a.report.landing import write_landing

start_job(snakemake)
write_landing(snakemake.input.table, snakemake.input.evaluator, snakemake.input.probes,
              (snakemake.input.codebook or [None])[0], snakemake.params.dataset, snakemake.output[0])
