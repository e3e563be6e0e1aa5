"""The report's landing page (reStructuredText) and its method page from the table, the paired comparisons, the
evaluator, the probes and the codebook."""
from i2a.pipeline.jobs import start_job
from i2a.report.landing import write_landing

start_job(snakemake)
write_landing(snakemake.input.table, snakemake.input.comparisons, snakemake.input.evaluator, snakemake.input.probes,
              (snakemake.input.codebook or [None])[0], snakemake.params.dataset, snakemake.params.bootstrap,
              snakemake.output.landing, snakemake.output.method)
