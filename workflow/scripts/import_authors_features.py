"""One shard's ResNet50 features of the authors, padded and cropped as the workflow's own extracted features are."""
from i2a.data.authors import import_features_shard
from i2a.pipeline.jobs import start_job

start_job(snakemake)
frames = snakemake.params.frames
import_features_shard(snakemake.input.clips, snakemake.input.tars, snakemake.output.features, snakemake.output.index,
                      total=frames["total"], crop=frames["crop"], dtype=snakemake.params.dtype)
