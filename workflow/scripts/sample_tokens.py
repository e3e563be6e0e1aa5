"""Samples for every validation video of one run, decoded to spectrograms by the codebook."""
from i2a.jobs import start_job
from i2a.runspec import RunSpec
from i2a.samples import sample_run

spec = RunSpec.from_dict(snakemake.params.run)
start_job(snakemake, precision=spec.sampling.precision)
sample_run(spec, snakemake.input.transformer, snakemake.input.codebook,
           snakemake.input.clips, snakemake.input.features, snakemake.output.tokens, snakemake.output.mels,
           snakemake.output.names, batch_size=snakemake.config["sampling"]["batch_size"],
           shuffled=snakemake.params.shuffled)
