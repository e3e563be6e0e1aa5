"""The 10 s videos of one data shard's clips (the authors' mels), for the backbones the authors published no
features of."""
from i2a.data.authors import preprocess_authors_videos
from i2a.pipeline.jobs import start_job

start_job(snakemake)
audio = snakemake.params.data["audio"]
preprocess_authors_videos(snakemake.input.clips, snakemake.input.videos, snakemake.output[0],
                          seconds=audio["seconds"], sample_rate=audio["sample_rate"], workers=snakemake.threads)
