"""Measure what each compute-heavy rule does per second on this machine, through the project's own code, and
write the calibration file `i2a plan` and the rules' time limits read (i2a.pipeline.sizing, docs/cluster.md).

    i2a calibrate                                   # the study's shapes (config/config.yaml) on the GPU if any
    i2a calibrate --configfile config/demo.yaml --device cpu --out profiles/slurm/calibration/cpu-2core.yaml

Measured, each after a warm-up: training samples/s per distinct run shape, batch and precision (a few steps of
train_gpt itself: GPTModule, Lightning, the loader, one GPU); sampling sequences/s at the config's batch and
precision (the KV sampler); encoder frames/s per backbone used (random weights: the arithmetic is the same);
decode frames/s with one thread; codebook encode and decode clips/s; Melception spectrograms/s; the vocoder's
spectrograms/s; a job's start-up (a fresh Python importing torch and Lightning). Random weights and data at the
config's shapes: nothing is downloaded and no result of the study is touched.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from i2a import SOURCE_CHECKOUT as REPO

log = logging.getLogger(__name__)

PARTS = ("startup", "training", "sampling", "encoders", "decode", "codebook", "melception", "vocoder")


def load_study_config(configfiles: Sequence[str | Path] = ()) -> dict[str, Any]:
    """config/config.yaml with the given files merged on top (as snakemake's --configfile), validated."""
    from i2a.spec.config import merge_config, validate_config

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for path in configfiles:
        config = merge_config(config, yaml.safe_load(Path(path).read_text()) or {})
    return validate_config(config, REPO / "workflow/schemas/config.schema.yaml")


def device_slug(device) -> str:
    """A file name for the device: the GPU's name ('nvidia-h200'), or 'cpu-<cores>core'."""
    import torch

    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cpu-{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}core"


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(fn: Callable[[], int], device, repeats: int, warmup: int = 1) -> float:
    """Items per second of `fn` (which returns how many items it did), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start, items = time.perf_counter(), 0
    for _ in range(repeats):
        items += fn()
    _sync(device)
    return items / max(time.perf_counter() - start, 1e-9)


# ------------------------------------------------------------------------------------------------ parts
def measure_startup() -> float:
    """Seconds a fresh Python takes to import torch and Lightning (every job pays them)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, lightning.pytorch"], check=True, capture_output=True)
    return time.perf_counter() - start


def _trained_specs(config: dict[str, Any]) -> list:
    from i2a.spec.runspec import RunSpec

    return [RunSpec.from_config(config, run) for run in config["runs"]]


def _shape(spec) -> dict[str, int]:
    m = spec.model
    return {"layers": m.layers, "heads": m.heads, "embed": m.embed, "block_size": m.block_size, "feat_dim": m.feat_dim}


def measure_training(spec, device, steps: int, warmup: int) -> dict[str, Any]:
    """Steady samples/s of `steps` optimizer steps of train_gpt itself on one device (random tokens and
    features at the run's shape), and what the end of an epoch adds (a one-batch validation, the checkpoints)."""
    import lightning.pytorch as pl

    from i2a.infra.precision import set_precision
    from i2a.training.gpt import GPTDataset, train_gpt

    train = dataclasses.replace(spec.train, gpus=1, max_epochs=1, early_stopping=False, accumulate=1,
                                base_lr=1e-6, scheduler="none")
    spec = dataclasses.replace(spec, train=train)
    rng = np.random.default_rng(0)
    n_tokens, S, D = spec.n_tokens, spec.feat_sample_size, spec.model.feat_dim

    def dataset(n: int) -> GPTDataset:
        tokens = rng.integers(0, spec.model.vocab_size, (n, n_tokens)).astype(np.int16)
        if spec.features == "none":
            return GPTDataset(tokens, None, S, random_feats_dim=D)
        return GPTDataset(tokens, rng.random((n, S, D), dtype=np.float32), S)

    times: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(device)
            times.append(time.perf_counter())

    stats = ({"mean": np.zeros(D, np.float32), "std": np.ones(D, np.float32)} if spec.feature_norm == "standard"
             else None)
    set_precision(train.precision)
    with tempfile.TemporaryDirectory(prefix="calibrate.") as tmp:
        train_gpt(spec, dataset(train.batch * (warmup + steps)), dataset(train.batch), tmp, feature_stats=stats,
                  accelerator="gpu" if device.type == "cuda" else "cpu", log_every=10**9, callbacks=[Clock()],
                  loader={"num_workers": 0})
        ended = time.perf_counter()
    rate = steps * train.batch / (times[-1] - times[warmup - 1])
    return {**_shape(spec), "batch": train.batch, "precision": train.precision, "samples_per_s": round(rate, 3),
            "epoch_end_s": round(ended - times[-1], 3)}


def measure_sampling(spec, config, device, repeats: int) -> dict[str, Any]:
    """Sequences/s of the KV sampler at the config's batch and precision, the run's shape, random weights."""
    import torch

    from i2a.infra.precision import autocast_dtype, set_precision
    from i2a.models.gpt import GPT, sample_tokens

    sampling = config["sampling"]
    batch, precision = sampling["batch_size"], sampling["precision"]
    set_precision(precision)
    torch.manual_seed(0)
    gpt = GPT(spec.model).to(device).eval()
    feats = torch.rand(batch, spec.model.feat_dim, spec.feat_sample_size, device=device)
    dtype = autocast_dtype(precision) or torch.float32

    def run() -> int:
        sample_tokens(gpt, feats, spec.n_tokens, top_k=sampling["top_k"], temperature=sampling["temperature"],
                      seeds=list(range(batch)), dtype=dtype)
        return batch

    rate = timed_rate(run, device, repeats)
    return {**_shape(spec), "batch": batch, "precision": precision, "seqs_per_s": round(rate, 3)}


def measure_encoder(name: str, config, device, repeats: int) -> float:
    """Frames/s of a backbone (random weights) on already cropped frames, one clip's frames per call."""
    from i2a.features.backbones import build_backbone
    from i2a.features.extract import extract_clip_features
    from i2a.infra.precision import set_precision

    settings = config["backbones"][name]
    precision = config["features"]["precision"]
    set_precision(precision)
    encoder = build_backbone(name, "none", image_size=settings.get("image_size"))
    crop = encoder.transform.crop
    frames = np.random.default_rng(0).integers(0, 255, (config["video"]["feat_crop"], crop, crop, 3), dtype=np.uint8)

    def run() -> int:
        extract_clip_features(encoder, frames, batch_size=settings["batch_size"], device=device, precision=precision,
                              cropped=True)
        return len(frames)

    return round(timed_rate(run, device, repeats), 2)


def measure_decode(config, repeats: int) -> float:
    """Frames/s of one decoding thread reading a clip as the extraction does (at the features' frame rate);
    a synthetic clip at the config's source size (VAS: 480 x 360)."""
    from i2a.data import media
    from i2a.data.synthetic import write_mp4

    synthetic = config.get("synthetic") or {}
    h, w = ((synthetic.get("height", 96), synthetic.get("width", 128)) if config["dataset"] == "synthetic"
            else (360, 480))
    fps, seconds = 25.0, float(config["audio"]["seconds"])
    n = int(fps * seconds)
    ramp = np.linspace(0, 255, w, dtype=np.float32)
    frames = np.stack([np.broadcast_to(((ramp + 3 * i) % 256).astype(np.uint8)[None, :, None], (h, w, 3))
                       for i in range(n)])
    with tempfile.TemporaryDirectory(prefix="calibrate.") as tmp:
        clip = Path(tmp) / "clip.mp4"
        write_mp4(clip, frames, np.zeros(int(22050 * seconds), np.float32), fps, 22050)

        def run() -> int:
            return len(media.read_video_frames(clip, fps=config["video"]["fps"]))

        return round(timed_rate(run, _cpu(), repeats), 1)


def _cpu():
    import torch

    return torch.device("cpu")


def _mels(config, n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 80, config["audio"]["crop_frames"]), dtype=np.float32)


def measure_codebook(config, device, repeats: int) -> dict[str, float]:
    """Clips/s of the codebook (the config's architecture, random weights): encoding mels to tokens, and
    decoding tokens to mels, in batches of 32 as the jobs do."""
    import torch

    from i2a.models.codebook import VQGANConfig, VQModel, decode_tokens, encode_mels

    torch.manual_seed(0)
    cfg = VQGANConfig(**config["codebook"]["model"], resolution=config["audio"]["crop_frames"])
    model = VQModel(cfg).to(device).eval()
    mels = _mels(config, 32)
    tokens = encode_mels(model, mels)
    encode = timed_rate(lambda: len(encode_mels(model, mels)), device, repeats)
    decode = timed_rate(lambda: len(decode_tokens(model, tokens, progress=False)), device, repeats)
    return {"encode_clips_per_s": round(encode, 3), "decode_clips_per_s": round(decode, 3)}


def measure_melception(config, device, repeats: int) -> dict[str, float]:
    """Spectrograms/s of Melception (full width as released, random weights), batch 16 as the scoring does."""
    import torch

    from i2a.models.melception import Melception, MelceptionConfig, melception_outputs

    torch.manual_seed(0)
    width = config["melception"]["train"]["width"] if config["melception"]["source"] == "train" else 1.0
    model = Melception(MelceptionConfig(width=width)).to(device).eval()
    mels = _mels(config, 16)
    stats = np.stack([np.zeros(80), np.ones(80)], axis=1).astype(np.float32)
    with torch.inference_mode():
        rate = timed_rate(lambda: len(melception_outputs(model, mels, stats)["logits"]), device, repeats)
    return {"spectrograms_per_s": round(rate, 3)}


def measure_vocoder(config, device, repeats: int) -> dict[str, Any]:
    """Spectrograms/s of the config's vocoder: MelGAN (random weights) or Griffin-Lim."""
    import torch

    from i2a.data.mel import MelSpec
    from i2a.models.vocoder import Generator, MelGANConfig, griffin_lim, vocode

    kind = config["vocoder"]["kind"]
    mels = _mels(config, 4)
    if kind == "melgan":
        torch.manual_seed(0)
        generator = Generator(MelGANConfig()).to(device)
        with torch.inference_mode():
            rate = timed_rate(lambda: len(vocode(generator, mels)), device, repeats)
    else:
        spec = MelSpec(sample_rate=config["audio"]["sample_rate"])
        rate = timed_rate(lambda: len([griffin_lim(m, spec) for m in mels]), _cpu(), repeats)
    return {"kind": kind, "spectrograms_per_s": round(rate, 3)}


# ------------------------------------------------------------------------------------------------ the file
def calibrate(config: dict[str, Any], device=None, parts: Sequence[str] = PARTS, steps: int = 5, warmup: int = 2,
              repeats: int = 3) -> dict[str, Any]:
    """Every figure of a calibration file for this machine (the parts asked for)."""
    import torch

    from i2a.infra.device import pick_device

    device = pick_device(device)
    out: dict[str, Any] = {"device": device_name(device), "torch": str(torch.__version__),
                           "date": datetime.date.today().isoformat(),
                           "how": (f"i2a calibrate on {platform.node() or 'this machine'}, device {device}: random "
                                   f"weights at the config's shapes, {warmup} warm-up then {steps} training steps, "
                                   f"{repeats} repeats of the other measurements"), "parts": list(parts)}
    specs = _trained_specs(config)
    if "startup" in parts:
        out["startup_s"] = round(measure_startup(), 2)
    if "training" in parts:
        seen, entries = set(), []
        for spec in specs:
            if spec.source != "train":
                continue
            key = (tuple(_shape(spec).values()), spec.train.batch, spec.train.precision)
            if key not in seen:
                seen.add(key)
                log.info("training %s: %s batch %d %s", spec.name, _shape(spec), spec.train.batch, spec.train.precision)
                entries.append(measure_training(spec, device, steps, warmup))
        out["training"] = entries
        if entries:
            out["epoch_overhead_s"] = max(e.pop("epoch_end_s") for e in entries)
    if "sampling" in parts:
        seen, entries = set(), []
        for spec in specs:
            key = tuple(_shape(spec).values())
            if key not in seen:
                seen.add(key)
                log.info("sampling %s: %s", spec.name, _shape(spec))
                entries.append(measure_sampling(spec, config, device, max(1, repeats // 2)))
        out["sampling"] = entries
    if "encoders" in parts:
        precision = config["features"]["precision"]
        backbones = sorted({s.features for s in specs if s.features != "none"})
        out["encoders"] = {name: {precision: measure_encoder(name, config, device, repeats)} for name in backbones}
    if "decode" in parts:
        out["decode_frames_per_s_per_thread"] = measure_decode(config, repeats)
    if "codebook" in parts:
        out["codebook"] = measure_codebook(config, device, repeats)
    if "melception" in parts:
        out["melception"] = measure_melception(config, device, repeats)
    if "vocoder" in parts:
        out["vocoder"] = measure_vocoder(config, device, repeats)
    return out


def write_calibration(figures: dict[str, Any], path: str | Path) -> Path:
    from i2a.infra.atomic import write_text

    header = ("# Written by `i2a calibrate` (src/i2a/pipeline/calibrate.py); read by i2a.pipeline.sizing for `i2a plan` and the rules'\n"
              "# time limits (docs/cluster.md). Rates are per GPU (or per machine on a CPU).\n")
    plain = json.loads(json.dumps(figures, default=float))  # numpy scalars as plain numbers
    return write_text(path, header + yaml.safe_dump(plain, sort_keys=False, width=120))


def main(argv: Sequence[str] | None = None) -> int:
    from i2a.pipeline.sizing import CALIBRATION_DIR

    parser = argparse.ArgumentParser(prog="i2a calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", action="append", default=[], help="merged on config/config.yaml")
    parser.add_argument("--device", default=None, help="cuda, cpu, cuda:1 (default: the GPU when there is one)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: profiles/slurm/calibration/<device>.yaml")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per shape (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="training steps before timing (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of the other measurements (default 3)")
    opts = parser.parse_args(argv)
    parts = [p.strip() for p in opts.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or opts.steps < 1 or opts.warmup < 1 or opts.repeats < 1:
        parser.error(f"unknown parts {unknown}" if unknown else "--steps, --warmup and --repeats must be >= 1")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    config = load_study_config(opts.configfile)
    start = time.perf_counter()
    figures = calibrate(config, opts.device, parts, opts.steps, opts.warmup, opts.repeats)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    figures["config"] = ["config/config.yaml", *map(str, opts.configfile)]
    from i2a.infra.device import pick_device

    out = opts.out or CALIBRATION_DIR / f"{device_slug(pick_device(opts.device))}.yaml"
    write_calibration(figures, out)
    print(f"calibration of {figures['device']} in {figures['seconds']:.0f} s written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
