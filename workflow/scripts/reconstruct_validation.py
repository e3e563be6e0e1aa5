"""The codebook's reconstructions of the real validation clips: the ceiling row of the table."""
from i2a.pipeline.jobs import start_job
from i2a.sampling.samples import reconstruct_validation

start_job(snakemake)
reconstruct_validation(snakemake.input.codebook, snakemake.input.clips, snakemake.params.crop_frames,
                       snakemake.output.mels, snakemake.output.names)
