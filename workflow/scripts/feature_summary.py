"""A backbone's feature statistics (training split) and the linear-probe accuracy of its features."""
from i2a.features.probe import summarise_features
from i2a.pipeline.jobs import start_job

start_job(snakemake)
summarise_features(snakemake.input.train, snakemake.input.valid, snakemake.input.train_index,
                   snakemake.input.valid_index, snakemake.output.stats, snakemake.output.probe)
