"""One run of the grid: its config entry turned into training, sampling and scoring calls."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from i2a.gpt import load_transformer, random_features, sample_frame_indices, sample_tokens
from i2a.store import ShardedArray

log = logging.getLogger(__name__)

NO_FEATS_DIM = 2048  # SpecVQGAN's no-feats baseline draws noise of the ResNet50/BN-Inception feature depth


def train_config(hp: dict, vocab_size: int):
    """A run entry of the config (schema names) as the trainer's TrainConfig."""
    from i2a.train_gpt import TrainConfig

    return TrainConfig(
        n_layer=hp["layers"], n_head=hp["heads"], n_embd=hp["embed"],
        embd_pdrop=hp["dropout"], resid_pdrop=hp["dropout"], attn_pdrop=hp["dropout"],
        vocab_size=vocab_size, feat_sample_size=hp["feat_sample_size"], batch_size=hp["batch"],
        base_lr=hp["base_lr"], weight_decay=hp["weight_decay"], gpus=hp["gpus"],
        accumulate_grad_batches=hp["accumulate"], scheduler=hp["scheduler"], plateau_patience=hp["plateau_patience"],
        max_epochs=hp["max_epochs"], early_stopping=hp["early_stopping"],
        early_stopping_patience=hp["early_stopping_patience"], seed=hp["seed"])


def gpt_dataset(token_files: Sequence[str], feature_files: Sequence[str], hp: dict):
    """Tokens and (memory-mapped) features of a split; random features for the no-feats baseline."""
    from i2a.train_gpt import GPTDataset

    tokens = ShardedArray(token_files)
    if hp["features"] == "none":
        return GPTDataset(tokens, None, hp["feat_sample_size"], random_feats_dim=NO_FEATS_DIM, seed=hp["seed"])
    return GPTDataset(tokens, ShardedArray(feature_files), hp["feat_sample_size"], seed=hp["seed"])


def prepare_state_dir(state_dir: str | Path, hp: dict) -> Path:
    """The folder a killed training job resumes from; emptied when the run's hyperparameters changed."""
    state_dir = Path(state_dir)
    stamp = state_dir / "hparams.json"
    if state_dir.exists() and (not stamp.exists() or json.loads(stamp.read_text()) != hp):
        log.info("hyperparameters changed since %s was written: starting over", state_dir)
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        stamp.write_text(json.dumps(hp, sort_keys=True))
    return state_dir


def sample_seeds(base_seed: int, n_videos: int, samples_per_video: int, repeats: int = 1) -> np.ndarray:
    """(V, repeats x K) seeds, one per (video, repeat, sample): a sample does not depend on batching, device or
    the other videos. Repeat r is the sample set of sampling seed base_seed + r (repeat 0 is base_seed's)."""
    video = np.arange(n_videos)[:, None, None]
    repeat = np.arange(repeats)[None, :, None]
    sample = np.arange(samples_per_video)[None, None, :]
    seeds = (base_seed + repeat) * 1_000_003 + video * samples_per_video + sample
    return seeds.reshape(n_videos, repeats * samples_per_video).astype(np.int64)


def condition(hp: dict, feats: np.ndarray | None, seeds: np.ndarray, S: int, feat_dim: int) -> torch.Tensor:
    """(rows, D, S) conditioning for one batch: real frames, or seeded noise for the no-feats baseline."""
    if hp["features"] == "none":
        return torch.cat([random_features(1, feat_dim, S, int(s)) for s in seeds])
    idx = sample_frame_indices(feats.shape[1], S)
    return torch.from_numpy(np.ascontiguousarray(feats[:, idx].transpose(0, 2, 1), dtype=np.float32))


def sample_run(transformer_ckpt: str, codebook_ckpt: str, feature_files: Sequence[str], n_videos: int, hp: dict,
               sampling: dict, batch_size: int, device: str, tokens_out: str | Path, mels_out: str | Path) -> None:
    """Top-k samples for every validation video: tokens (V, R x K, n_tokens) int16 and decoded mels
    (V, R x K, n_mels, T) float16 for R = sampling["seeds"] sampling seeds of K samples each (seed-major), written
    memory-mapped (100 samples x 768 videos do not fit in memory) and renamed when complete."""
    from i2a.vqgan import decode_tokens, load_codebook

    gpt = load_transformer(transformer_ckpt, map_location=device)
    codebook = load_codebook(codebook_ckpt, map_location=device)
    S = hp["feat_sample_size"]
    n_tokens = gpt.block_size - S
    R = sampling.get("seeds", 1)
    K = R * sampling["samples_per_video"]
    feats = None if hp["features"] == "none" else ShardedArray(feature_files)
    if feats is not None and len(feats) != n_videos:
        raise ValueError(f"{len(feats)} feature rows for {n_videos} validation videos")
    seeds = sample_seeds(sampling["seed"], n_videos, sampling["samples_per_video"], R)
    videos_per_batch = max(1, batch_size // K)
    tokens_tmp, mels_tmp = (Path(p).with_name(f".{Path(p).name}.tmp") for p in (tokens_out, mels_out))
    tokens = np.lib.format.open_memmap(tokens_tmp, mode="w+", dtype=np.int16, shape=(n_videos, K, n_tokens))
    mels = None
    for start in tqdm(range(0, n_videos, videos_per_batch), desc="sampling", mininterval=10):
        stop = min(n_videos, start + videos_per_batch)
        # each video's features are read once and shared by its K samples
        batch_feats = None if feats is None else np.repeat(np.stack([feats[i] for i in range(start, stop)]), K, axis=0)
        batch_seeds = seeds[start:stop].ravel()
        cond = condition(hp, batch_feats, batch_seeds, S, gpt.config.feat_dim).to(device)
        out = sample_tokens(gpt, cond, n_tokens, top_k=sampling["top_k"], temperature=sampling["temperature"],
                            seeds=batch_seeds.tolist(), cache=True)
        tokens[start:stop] = out.view(stop - start, K, n_tokens).cpu().numpy()
        decoded = decode_tokens(codebook, out.cpu().numpy(), progress=False)
        if mels is None:
            mels = np.lib.format.open_memmap(mels_tmp, mode="w+", dtype=np.float16,
                                             shape=(n_videos, K, *decoded.shape[1:]))
        mels[start:stop] = decoded.reshape(stop - start, K, *decoded.shape[1:])
    tokens.flush()
    mels.flush()
    del tokens, mels
    tokens_tmp.replace(tokens_out)
    mels_tmp.replace(mels_out)
    log.info("sampled %d videos x %d seeds x %d samples of %d tokens", n_videos, R, K // R, n_tokens)
