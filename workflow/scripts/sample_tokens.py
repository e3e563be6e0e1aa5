"""Samples for every validation video of one run, decoded to spectrograms by the codebook."""
from i2a.pipeline.jobs import start_job
from i2a.spec.runspec import RunSpec  # torch-free: read before torch starts

spec = RunSpec.from_dict(snakemake.params.run)
# first, before torch is imported: OpenMP reads its thread count when it starts
start_job(snakemake, precision=spec.sampling.precision)

from i2a.sampling.samples import sample_run  # noqa: E402

sample_run(spec, snakemake.input.transformer, snakemake.input.codebook,
           snakemake.input.clips, snakemake.input.features, snakemake.output.tokens, snakemake.output.mels,
           snakemake.output.names, batch_size=snakemake.config["sampling"]["batch_size"],
           shuffled=snakemake.params.shuffled)
