"""results/table.csv: the study's table, one row per run."""
from i2a.evaluation.table import write_table
from i2a.jobs import start_job

log = start_job(snakemake)
table = write_table(snakemake.params.runs, snakemake.input.scores, snakemake.input.training,
                    snakemake.input.manifests, snakemake.input.clips, snakemake.output[0])
log.info("\n%s", table.to_string(index=False))
