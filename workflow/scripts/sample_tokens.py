"""Samples for every validation video of one run, decoded to spectrograms by the codebook."""
from i2a.jobs import start_job
from i2a.models.codebook import check_codebook
from i2a.models.gpt import checkpoint_codebook
from i2a.runspec import RunSpec
from i2a.samples import sample_run

start_job(snakemake)
# a transformer's tokens mean what they meant in training only with the codebook it was trained on
check_codebook(checkpoint_codebook(snakemake.input.transformer), snakemake.input.codebook,
               transformer=snakemake.input.transformer)
sample_run(RunSpec.from_dict(snakemake.params.run), snakemake.input.transformer, snakemake.input.codebook,
           snakemake.input.clips, snakemake.input.features, snakemake.output.tokens, snakemake.output.mels,
           snakemake.output.names, batch_size=snakemake.config["sampling"]["batch_size"],
           shuffled=snakemake.params.shuffled)
