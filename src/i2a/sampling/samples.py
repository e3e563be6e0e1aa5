"""A run's samples: tokens drawn for every validation video, decoded to spectrograms by the codebook, and some
of them vocoded to wav files to listen to.

Every sample has a seed of its own (video, sampling seed, sample number), so it does not depend on batching,
device or the other videos, and a sample set can be extended or recomputed piece by piece.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from i2a.data.mel import MelSpec
from i2a.data.store import ShardedArray, finite_rows
from i2a.infra.atomic import atomic_path
from i2a.infra.device import pick_device
from i2a.infra.precision import autocast_dtype, describe, set_precision
from i2a.models.condition import condition
from i2a.models.gpt import CUDA_BUCKET, kv_cache_bytes
from i2a.models.transformer import LoadedTransformer, load_transformer
from i2a.spec.runspec import GPTConfig, RunSpec

log = logging.getLogger(__name__)


def sample_seeds(base_seed: int, n_videos: int, samples_per_video: int, repeats: int = 1) -> np.ndarray:
    """(V, repeats x K) seeds, one per (video, repeat, sample): a sample does not depend on batching, device or
    the other videos. Repeat r is the sample set of sampling seed base_seed + r (repeat 0 is base_seed's)."""
    video = np.arange(n_videos)[:, None, None]
    repeat = np.arange(repeats)[None, :, None]
    sample = np.arange(samples_per_video)[None, None, :]
    seeds = (base_seed + repeat) * 1_000_003 + video * samples_per_video + sample
    return seeds.reshape(n_videos, repeats * samples_per_video).astype(np.int64)


# `sampling.batch_size: auto` on a CPU: a decode step there is bound by reading the weights once for all rows, and
# beyond ~64 rows the step grows about in proportion to the rows (nothing left to share), while memory keeps growing
AUTO_CPU_ROWS = 64
# of the GPU memory free when sampling starts, what `auto` leaves unused (allocator fragmentation, CUDA graphs' pools)
AUTO_GPU_HEADROOM = 0.1


def videos_per_batch(batch_size: int | str, samples_per_video: int, gpt, S: int, n_tokens: int,
                     dtype: torch.dtype, device: torch.device) -> int:
    """Videos sampled together: `batch_size` rows (sequences) rounded down to whole videos (at least one), or with
    `auto` as many as fit: on a GPU the free memory (torch.cuda.mem_get_info) less a headroom and the weights'
    copy in `dtype`, over one video's key/value caches (one prefix, `samples_per_video` rows of own tokens) and
    its activations; on a CPU AUTO_CPU_ROWS rows. The log says how many and why."""
    K = samples_per_video
    if batch_size != "auto":
        return max(1, int(batch_size) // K)
    if device.type != "cuda":
        videos = max(1, AUTO_CPU_ROWS // K)
        log.info("batch_size auto on the CPU: %d videos x %d samples = %d sequences per batch (the CPU's bound of "
                 "%d rows)", videos, K, videos * K, AUTO_CPU_ROWS)
        return videos
    free, total = torch.cuda.mem_get_info(device)
    cfg: GPTConfig = gpt.config
    weights = sum(p.numel() for p in gpt.parameters()) * dtype.itemsize
    # a decode step's activations per row (qkv, MLP hidden, logits and the draw's fp32 copies) and the prefill's
    # per video (its S positions through one block at a time, MLP hidden included)
    per_row = (9 * cfg.embed + 4 * cfg.vocab_size) * 4
    per_video_prefill = S * 9 * cfg.embed * 4
    per_video = kv_cache_bytes(cfg, K, 1, S, n_tokens, dtype, CUDA_BUCKET) + K * per_row + per_video_prefill
    usable = free * (1 - AUTO_GPU_HEADROOM) - weights
    videos = max(1, int(usable // per_video))
    log.info("batch_size auto: %d videos x %d samples = %d sequences per batch (%.2f GiB per video's caches and "
             "activations in %s; %.1f of %.1f GiB free, %.0f%% kept free, %.2f GiB for the weights' copy)",
             videos, K, videos * K, per_video / 2**30, dtype, free / 2**30, total / 2**30, 100 * AUTO_GPU_HEADROOM,
             weights / 2**30)
    return videos


def derangement(n: int, seed: int) -> np.ndarray:
    """A fixed permutation with no fixed point (Sattolo's algorithm: one cycle through all n), so that every video
    gets another video's features in the shuffled control; the same n and seed give the same pairing."""
    if n < 2:
        raise ValueError("a shuffled control needs at least 2 validation videos")
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def load_run_transformer(spec: RunSpec, path: str | Path, device: torch.device) -> LoadedTransformer:
    """The run's transformer: a trained one describes itself and must be the run's; a released one (or a bare
    state dict) is checked against the run's shape, takes its head count from it and is described by it."""
    loaded = load_transformer(path, spec.model if spec.source == "released" else None, map_location=device)
    if loaded.spec is None:
        return dataclasses.replace(loaded, spec=spec)
    if loaded.spec.training_view() != spec.training_view():
        raise ValueError(f"{path} was trained for run {loaded.spec.name!r} with other settings than run "
                         f"{spec.name!r}: retrain it (snakemake reruns train_gpt when its settings change)")
    return loaded


def sample_run(spec: RunSpec, transformer_ckpt: str | Path, codebook_ckpt: str | Path,
               valid_shards: Sequence[str | Path], feature_files: Sequence[str | Path], tokens_out: str | Path,
               mels_out: str | Path, names_out: str | Path, batch_size: int | str = 64, device: str | None = None,
               shuffled: bool = False) -> None:
    """Top-k samples for every validation video: tokens (V, R x K, n_tokens) int16 and decoded mels
    (V, R x K, n_mels, T) float16 for R = spec.sampling.seeds sampling seeds of K samples each (seed-major),
    written memory-mapped (100 samples x 768 videos do not fit in memory) and in place only when complete;
    `names_out` lists the V videos in row order. `shuffled`: the control, where video i is sampled with the
    features of video derangement(V)[i] and the same seeds, so it differs from the run only by the picture.
    Sampled in spec.sampling.precision (fp32: strict, the full recompute's tokens; bf16: weights and caches in
    bf16), `batch_size` sequences (rounded to whole videos) or `auto` (videos_per_batch) at a time."""
    from i2a.data.clips import split_clips
    from i2a.infra.atomic import remove_leftovers, write_text
    from i2a.models.codebook import check_codebook, decode_tokens, load_codebook

    for out in (tokens_out, mels_out):  # a killed job's memory-mapped temporaries (GB for the mels)
        for leftover in remove_leftovers(out):
            log.info("removed %s, left by a killed sample_tokens", leftover)
    device = pick_device(device)
    transformer = load_run_transformer(spec, transformer_ckpt, device)
    gpt = transformer.gpt
    codebook = load_codebook(codebook_ckpt, map_location=device)
    # a transformer's tokens mean what they meant in training only with the codebook it was trained on
    check_codebook(transformer.codebook_fingerprint, codebook_ckpt, codebook.cfg, transformer=str(transformer_ckpt))
    videos = list(split_clips(valid_shards)["clip"])
    n_videos = len(videos)
    # the transformer's own description says what it reads (a released one: the run, checked against its shapes)
    trained_as = transformer.spec
    sampling, S, n_tokens = spec.sampling, transformer.S, transformer.n_tokens
    R, K = sampling.seeds, sampling.seeds * sampling.samples_per_video
    feats = None if trained_as.features == "none" else ShardedArray(feature_files)
    if feats is not None and len(feats) != n_videos:
        raise ValueError(f"{len(feats)} feature rows for {n_videos} validation videos")
    if feats is not None:
        missing = np.flatnonzero(~finite_rows(feats))
        if len(missing):  # every validation video is scored, so there is no leaving one out quietly here
            raise ValueError(f"validation videos {missing.tolist()[:10]} have no features (their extraction failed; "
                             "the reason is in the features' index .tsv): fix or remove those clips and rerun")
    if shuffled and trained_as.features == "none":
        raise ValueError(f"run {spec.name} has no features to shuffle")
    source = derangement(n_videos, sampling.seed) if shuffled else np.arange(n_videos)
    seeds = sample_seeds(sampling.seed, n_videos, sampling.samples_per_video, R)
    set_precision(sampling.precision)
    dtype = autocast_dtype(sampling.precision) or torch.float32  # bf16: weights and caches in bf16
    log.info("sampling in %s (%s)", dtype, describe(sampling.precision))
    per_batch = videos_per_batch(batch_size, K, gpt, S, n_tokens, dtype, device)
    with atomic_path(tokens_out) as tokens_tmp, atomic_path(mels_out) as mels_tmp:
        tokens = np.lib.format.open_memmap(tokens_tmp, mode="w+", dtype=np.int16, shape=(n_videos, K, n_tokens))
        mels = None
        for start in tqdm(range(0, n_videos, per_batch), desc="sampling", mininterval=10):
            stop = min(n_videos, start + per_batch)
            batch_seeds = seeds[start:stop].ravel()
            if feats is None:  # the no-feats baseline: every sample its own noise, nothing shared
                cond = condition("none", None, batch_seeds, S, gpt.config.feat_dim)
                video_of_row = np.arange(len(batch_seeds))
            else:  # each video's features read once; its K samples share one computed prefix
                cond = condition(trained_as.features, np.stack([feats[source[i]] for i in range(start, stop)]),
                                 batch_seeds, S, gpt.config.feat_dim)
                video_of_row = np.repeat(np.arange(stop - start), K)
            out = transformer.sample(cond, n_tokens, top_k=sampling.top_k, temperature=sampling.temperature,
                                     seeds=batch_seeds.tolist(), cache=True, dtype=dtype,
                                     video_of_row=torch.from_numpy(video_of_row))
            tokens[start:stop] = out.view(stop - start, K, n_tokens).cpu().numpy()
            decoded = decode_tokens(codebook, out.cpu().numpy(), progress=False)
            if mels is None:
                mels = np.lib.format.open_memmap(mels_tmp, mode="w+", dtype=np.float16,
                                                 shape=(n_videos, K, *decoded.shape[1:]))
            mels[start:stop] = decoded.reshape(stop - start, K, *decoded.shape[1:])
        tokens.flush()
        mels.flush()
        del tokens, mels
    write_text(names_out, "\n".join(videos) + "\n")
    log.info("sampled %d videos x %d seeds x %d samples of %d tokens%s", n_videos, R, K // R, n_tokens,
             " with shuffled features (control)" if shuffled else "")


def reconstruct_validation(codebook_ckpt: str | Path, valid_shards: Sequence[str | Path], crop_frames: int,
                           mels_out: str | Path, names_out: str | Path, device: str | None = None) -> None:
    """The ceiling any transformer can reach: every real validation clip encoded and decoded by the codebook,
    saved like a run's samples (V, 1, n_mels, crop_frames) so that it is scored the same way."""
    from i2a.data.clips import split_clips, split_mels
    from i2a.infra.atomic import write_text
    from i2a.models.codebook import decode_tokens, encode_mels, load_codebook

    device = pick_device(device)
    codebook = load_codebook(codebook_ckpt, map_location=device).to(device)
    real = split_mels(valid_shards, crop_frames)
    rec = decode_tokens(codebook, encode_mels(codebook, real), progress=False)
    with atomic_path(mels_out) as tmp, open(tmp, "wb") as fh:
        np.save(fh, rec[:, None].astype(np.float16))
    write_text(names_out, "\n".join(split_clips(valid_shards)["clip"]) + "\n")
    log.info("reconstructed %d validation clips: L1 %.4f", len(rec), float(np.abs(rec - real).mean()))


def vocode_samples(mels_path: str | Path, names_path: str | Path, out_dir: str | Path, kind: str, mel: MelSpec,
                   melgan_ckpt: str | Path | None = None, listen_videos: int = 0, listen_samples: int = 0,
                   device: str | None = None) -> int:
    """The first `listen_samples` samples (0: all) of `listen_videos` validation videos (0: all; one per class in
    turn, see `class_round_robin`) as 22,050 Hz wavs in `out_dir`, with `index.tsv` (file, clip, sample); `kind` is
    'melgan' or 'griffin_lim'. The folder appears only complete."""
    from i2a.data.clips import write_tsv
    from i2a.models.vocoder import load_vocoder, write_wav

    mels = np.load(mels_path, mmap_mode="r")  # (videos, samples, n_mels, frames)
    videos = Path(names_path).read_text().splitlines()
    order = class_round_robin(videos)[:listen_videos or len(videos)]
    n_samples = min(listen_samples or mels.shape[1], mels.shape[1])
    to_wav = load_vocoder(kind, mel, melgan_ckpt, device=pick_device(device))
    rows = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for v in tqdm(order, desc="vocoding", unit="video", mininterval=10):
            clip = videos[v]
            batch = np.asarray(mels[v, :n_samples], dtype=np.float32)
            wavs = to_wav(batch)
            for k, wav in enumerate(wavs):
                name = f"{v:04d}_sample{k:02d}.wav"
                write_wav(tmp / name, wav, sr=mel.sample_rate)
                rows.append({"file": name, "clip": clip, "sample": k})
        write_tsv(pd.DataFrame(rows, columns=["file", "clip", "sample"]), tmp / "index.tsv")
    log.info("wrote %d wav files for %d videos", len(rows), len(order))
    return len(rows)


def class_round_robin(videos: Sequence[str]) -> list[int]:
    """Row numbers of `videos` ('<class>/<clip>') taking one video per class in turn, classes and clips in name
    order: the first len(classes) rows are the first video of every class."""
    by_class: dict[str, list[int]] = {}
    for row in sorted(range(len(videos)), key=lambda r: videos[r]):
        by_class.setdefault(videos[row].split("/", 1)[0], []).append(row)
    queues = [by_class[c] for c in sorted(by_class)]
    order = []
    for depth in range(max(map(len, queues), default=0)):
        order += [q[depth] for q in queues if depth < len(q)]
    return order
