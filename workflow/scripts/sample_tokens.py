"""Samples for every validation video of one run, decoded to spectrograms by the codebook."""
from i2a.jobs import start_job

# first, before torch is imported: OpenMP reads its thread count when it starts
start_job(snakemake)

from i2a.runspec import RunSpec  # noqa: E402
from i2a.samples import sample_run  # noqa: E402

sample_run(RunSpec.from_dict(snakemake.params.run), snakemake.input.transformer, snakemake.input.codebook,
           snakemake.input.clips, snakemake.input.features, snakemake.output.tokens, snakemake.output.mels,
           snakemake.output.names, batch_size=snakemake.config["sampling"]["batch_size"],
           shuffled=snakemake.params.shuffled)
