"""Generated spectrograms of the first validation videos as 22,050 Hz wav files, for listening."""
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from i2a.dataset import mel_spec_from_config, write_tsv
from i2a.jobs import start_job
from i2a.vocoder import griffin_lim, load_melgan, vocode, write_wav

log = start_job(snakemake)
mel = mel_spec_from_config(snakemake.params.audio)
mels = np.load(snakemake.input.mels, mmap_mode="r")  # (videos, samples, n_mels, frames)
videos = Path(snakemake.input.names).read_text().splitlines()
n = snakemake.params.listen_videos or len(videos)
out = Path(snakemake.output[0])
out.mkdir(parents=True, exist_ok=True)
if snakemake.params.kind == "melgan":
    generator = load_melgan(snakemake.input.vocoder[0], device="cuda" if torch.cuda.is_available() else "cpu")
rows = []
for v, clip in enumerate(tqdm(videos[:n], desc="vocoding", unit="video", mininterval=10)):
    batch = np.asarray(mels[v], dtype=np.float32)
    wavs = vocode(generator, batch) if snakemake.params.kind == "melgan" else griffin_lim(batch, mel)
    for k, wav in enumerate(wavs):
        name = f"{v:04d}_sample{k:02d}.wav"
        write_wav(out / name, wav, sr=mel.sample_rate)
        rows.append({"file": name, "clip": clip, "sample": k})
write_tsv(pd.DataFrame(rows), out / "index.tsv")
log.info("wrote %d wav files for %d videos", len(rows), min(n, len(videos)))
