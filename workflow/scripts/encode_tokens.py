"""Token grids of one shard's mels, in the transformer's column-major order."""
import torch

from i2a.dataset import Shard
from i2a.jobs import start_job
from i2a.mel import center_crop
from i2a.store import save_npy
from i2a.vqgan import encode_mels, load_codebook

log = start_job(snakemake)
device = "cuda" if torch.cuda.is_available() else "cpu"
codebook = load_codebook(snakemake.input.codebook, map_location=device)
mels = center_crop(Shard(snakemake.input.clips).mels(), snakemake.params.crop_frames)
tokens = encode_mels(codebook, mels)
save_npy(snakemake.output[0], tokens)
log.info("%d clips -> tokens %s", len(tokens), tokens.shape)
