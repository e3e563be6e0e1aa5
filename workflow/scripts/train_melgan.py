"""Train a MelGAN vocoder on the training split's wavs (SPEC section 6)."""
from pathlib import Path

import torch

from i2a.dataset import Shard, mel_spec_from_config, read_wav
from i2a.jobs import start_job
from i2a.vocoder import VocoderTrainConfig, train_melgan

log = start_job(snakemake)
mel = mel_spec_from_config(snakemake.params.audio)
wavs = [read_wav(p, mel.sample_rate) for d in snakemake.input.train for p in Shard(d).wav_paths()]
train = dict(snakemake.params.train)
cfg = VocoderTrainConfig(ngf=train["ngf"], n_residual_layers=train["n_residual_layers"], max_steps=train["steps"],
                         batch_size=train["batch_size"], segment_length=train["segment_length"], seed=train["seed"],
                         mel=mel, device="cuda" if torch.cuda.is_available() else "cpu")
log.info("training on %d wavs", len(wavs))
train_melgan(wavs, cfg, Path(snakemake.output.checkpoint).parent)
