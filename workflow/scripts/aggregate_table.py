"""results/table.csv: the study's table, one row per run; comparisons.csv: every paired comparison."""
from i2a.evaluation.table import write_table
from i2a.pipeline.jobs import start_job

log = start_job(snakemake)
table = write_table(snakemake.params.runs, snakemake.params.rows, snakemake.params.baseline, snakemake.params.results,
                    snakemake.input.probes, snakemake.input.manifests, snakemake.input.clips, snakemake.output.table,
                    inputs=snakemake.params.inputs, settings=snakemake.params.settings,
                    comparisons=snakemake.input.comparisons, comparisons_out=snakemake.output.comparisons)
log.info("\n%s", table.to_string(index=False))
