"""results/table.csv: the study's table, one row per run."""
from i2a.evaluation.table import write_table
from i2a.jobs import start_job

log = start_job(snakemake)
table = write_table(snakemake.params.runs, snakemake.params.rows, snakemake.params.baseline, snakemake.params.results,
                    snakemake.input.probes, snakemake.input.manifests, snakemake.input.clips, snakemake.output[0],
                    inputs=snakemake.params.inputs, settings=snakemake.params.settings)
log.info("\n%s", table.to_string(index=False))
