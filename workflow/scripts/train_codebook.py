"""Train the spectrogram codebook (SPEC section 4) on the training split's mels."""
from pathlib import Path

from i2a.jobs import start_job
from i2a.store import ShardedArray
from i2a.vqgan import CodebookTrainConfig, VQGANConfig, train_codebook

log = start_job(snakemake)
train = ShardedArray([Path(d) / "mels.npy" for d in snakemake.input.train])
valid = ShardedArray([Path(d) / "mels.npy" for d in snakemake.input.valid])
model_cfg = VQGANConfig(**snakemake.params.model, resolution=snakemake.params.crop_frames)
train_cfg = CodebookTrainConfig(**snakemake.params.train)
log.info("training on %d mels, validating on %d", len(train), len(valid))
train_codebook(train, valid, model_cfg, train_cfg, Path(snakemake.output.checkpoint).parent)
