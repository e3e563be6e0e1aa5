"""Token grids of one shard's mels, in the transformer's column-major order."""
from i2a.pipeline.jobs import start_job
from i2a.models.codebook import encode_shard

start_job(snakemake)
encode_shard(snakemake.input.codebook, snakemake.input.clips, snakemake.params.crop_frames, snakemake.output[0])
