"""Frame features of one shard's videos at video.fps: (clips, feat_crop, D), padded by tiling and centre-cropped."""
from i2a.features.extract import extract_shard
from i2a.pipeline.jobs import start_job

start_job(snakemake, precision=snakemake.params.precision)
backbone = snakemake.params.backbone
# batch_size is throughput only: read from the config, not a param that would rerun the job
settings = {**backbone, "batch_size": snakemake.config["backbones"][backbone["name"]]["batch_size"]}
extract_shard(backbone["name"], settings, snakemake.params.frames, snakemake.params.dtype, snakemake.input.clips,
              snakemake.output.features, snakemake.output.index, workers=snakemake.threads,
              precision=snakemake.params.precision, videos_dir=snakemake.input.videos or None)
