"""A Melception-architecture classifier of the dataset's classes, the demo's stand-in for the VGGSound one."""
from i2a.dataset import split_clips, split_mels
from i2a.jobs import start_job
from i2a.melception import MelceptionTrainConfig, train_melception

log = start_job(snakemake)
crop = snakemake.params.crop_frames
train_mels, valid_mels = split_mels(snakemake.input.train, crop), split_mels(snakemake.input.valid, crop)
train_labels = list(split_clips(snakemake.input.train)["class"])
valid_labels = list(split_clips(snakemake.input.valid)["class"])
result = train_melception(train_mels, train_labels, valid_mels, valid_labels,
                          MelceptionTrainConfig(**snakemake.params.train), snakemake.output[0])
log.info("melception: %s", result)
