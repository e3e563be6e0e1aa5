"""`i2a generate`: sound for your own pictures and videos, from a run of the study or a released SpecVQGAN model.

    i2a generate --config config/demo.yaml --run clip-s5 --out generated/ photo.jpg clip.mp4 folder/

An input is conditioned the way the workflow conditions a validation video. A video goes through the training
chain (`i2a.data.media`: cut to the config's audio.seconds, frames picked at video.fps, tiled and centre-cropped
to video.feat_frames / feat_crop); an image is a still video, the same frame at every step. The S frames the
transformer reads are encoded by its backbone with the config's weights and transforms, standardised with the
statistics the run trained with, and sampled, decoded by the codebook and vocoded by the same library functions
as the workflow's sample_tokens and vocode jobs.

The model is what its checkpoint says it is: a trained run's checkpoint names its backbone, S, shape and the
codebook it was trained on, and is refused with another codebook or backbone; a released transformer's shape
comes from the registry of released files and the codebook it is paired with.

An input's samples depend only on it, the seed and the model, not on the other inputs or on batching: sample k
of every input draws with the seed the workflow gives sample k of its first validation video.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import yaml

from i2a.config import component_checkpoint, merge_config
from i2a.precision import autocast_dtype, describe, set_precision

log = logging.getLogger("i2a.generate")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SCHEMA = Path("workflow/schemas/config.schema.yaml")
EXIT_INPUT_ERRORS = 1  # some inputs could not be used; the others were generated
EXIT_MODEL_ERROR = 2  # nothing was generated: the config, the model or the arguments are wrong


class InputError(ValueError):
    """An input that cannot be used; the message says why and what to give instead."""


class ModelError(ValueError):
    """The model cannot be loaded as asked; the message says which file and how to get it."""


# ------------------------------------------------------------------------------------------------------ config

def _schema_path() -> Path:
    """The workflow's schema: in the current folder (the workflow's), else beside this package's source."""
    for path in (SCHEMA, Path(__file__).resolve().parents[2] / SCHEMA):
        if path.is_file():
            return path
    raise ModelError(f"{SCHEMA} not found: run i2a generate in the workflow's folder (where config/ and workflow/ are)")


def read_merged(path: Path) -> dict[str, Any]:
    """The config file merged over the config.yaml beside it, as read (no validation, no defaults)."""
    config = yaml.safe_load(path.read_text()) or {}
    base = path.resolve().with_name("config.yaml")
    if base != path.resolve() and base.is_file():
        config = merge_config(yaml.safe_load(base.read_text()) or {}, config)
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    """The config the workflow runs with: `path` merged over the config.yaml beside it, validated, defaults in."""
    from i2a.config import ConfigError, validate_config

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"config file {path} not found: give the one the models were made with, e.g. "
                         "--config config/demo.yaml")
    config = read_merged(path)
    try:
        return validate_config(config, _schema_path())
    except ConfigError as err:
        raise ModelError(f"{path}: {err}") from None


def codebook_path(config: dict[str, Any]) -> Path:
    return Path(component_checkpoint(config, "codebook"))


def melgan_path(config: dict[str, Any]) -> Path:
    return Path(component_checkpoint(config, "melgan"))


# ------------------------------------------------------------------------------------------------------ the model

@dataclass
class SoundModel:
    """Everything between a picture and a sound, loaded once: the transformer (which describes itself), its
    codebook, backbone and vocoder, and the config's clip geometry."""

    name: str
    gpt: Any  # i2a.models.gpt.GPT, with run_spec set
    codebook: Any  # i2a.models.codebook.VQModel
    encoder: Any | None  # i2a.features.backbones.FrameEncoder; None for the no-feats baseline
    vocoder: Callable[[np.ndarray], np.ndarray]
    mel: Any  # i2a.data.mel.MelSpec
    seconds: float
    fps: float
    feat_frames: int
    feat_crop: int
    device: Any
    precision: str = "fp32"  # the backbone's, as the workflow's extract_features runs it (features.precision)
    sampling: dict[str, Any] = field(default_factory=dict)  # the config's sampling: (seed, top_k, ...): defaults

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    def generate(self, image, samples: int | None = None, seed: int | None = None, top_k: int | None = None,
                 temperature: float | None = None, batch_size: int | None = None) -> np.ndarray:
        """The sound of a picture as float32 samples at `sample_rate`: one waveform (n,), or (samples, n) when
        `samples` is given. `image`: a path (an image or a video, as the CLI reads it), a PIL image or an
        (H, W, 3) uint8 array. Sample k is the CLI's `<stem>_sampleNN.wav` for the same seed (before its 16-bit
        rounding); the defaults are the config's `sampling:` values, checked as the config checks them."""
        settings = {"seed": 0, "top_k": self.spec.sampling.top_k, "temperature": 1.0, "batch_size": 64,
                    **{k: v for k, v in self.sampling.items() if k in ("seed", "top_k", "temperature", "batch_size")}}
        given = {"seed": seed, "top_k": top_k, "temperature": temperature, "batch_size": batch_size}
        settings.update({k: v for k, v in given.items() if v is not None})
        count = 1 if samples is None else samples
        settings["batch_size"] = rows_per_batch(self, settings["batch_size"], count)
        check_sampling(count, **settings, n_codes=self.gpt.config.vocab_size)
        with tempfile.TemporaryDirectory(prefix="i2a-generate-") as tmp:
            prepared = prepare_any(image, self, Path(tmp))
            seeds = sample_seeds_for_inputs(settings["seed"], count)
            waves = []
            for start in range(0, count, settings["batch_size"]):
                chunk = seeds[start:start + settings["batch_size"]]
                mels = _draw(self, [prepared.feats] * len(chunk), chunk, settings["top_k"], settings["temperature"])
                waves += [vocode(self, mel) for mel in mels]
        return np.stack(waves) if samples is not None else waves[0]

    @property
    def spec(self):
        return self.gpt.run_spec

    @property
    def S(self) -> int:
        return self.spec.feat_sample_size

    @property
    def n_tokens(self) -> int:
        return self.gpt.block_size - self.S

    @property
    def min_image_size(self) -> int:
        """The backbone's input side: a picture must reach it at least along its longer side."""
        return 0 if self.encoder is None else self.encoder.transform.crop


def _missing(paths: Iterable[Path | str | None]) -> list[str]:
    return [str(p) for p in paths if p is not None and not Path(p).is_file()]


def _fetch_or_make(missing: list[str], config_file: str | Path | None) -> str:
    """The snakemake command that makes (trains, or fetches with MD5 checks) the files a model lacks."""
    config = f" --configfile {config_file}" if config_file else ""
    return f"snakemake --cores {2 if config_file else 1}{config} {' '.join(missing)}"


def _backbone_weights(config: dict[str, Any], features: str) -> Path | None:
    from i2a.features.registry import weights_file

    if features == "none":
        return None
    path = weights_file(features, config["backbones"][features]["weights"], cache_dir="resources/weights")
    return None if path is None else Path(path)


def _build_encoder(config: dict[str, Any], features: str, feat_dim: int, device):
    """The run's backbone with the config's weights and transforms; its features must be as deep as the
    transformer's input."""
    if features == "none":
        return None
    from i2a.features.backbones import build_backbone

    settings = config["backbones"][features]
    encoder = build_backbone(features, weights=settings["weights"], cache_dir="resources/weights",
                             image_size=settings["image_size"])
    if encoder.feat_dim != feat_dim:
        raise ModelError(f"backbone {features} gives {encoder.feat_dim}-d features, the transformer reads {feat_dim}-d")
    encoder.model.to(device)
    return encoder


def _clip_geometry(config: dict[str, Any]) -> dict[str, Any]:
    from i2a.data.clips import mel_spec_from_config

    video = config["video"]
    return {"mel": mel_spec_from_config(config["audio"]), "seconds": float(config["audio"]["seconds"]),
            "fps": float(video["fps"]), "feat_frames": int(video["feat_frames"]), "feat_crop": int(video["feat_crop"])}


def _sound_model(name: str, gpt, codebook, config: dict[str, Any], vocoder_file: Path | None, device) -> SoundModel:
    """A checked transformer and codebook with the run's backbone, the vocoder and the config's clip geometry."""
    from i2a.models.vocoder import load_vocoder

    geometry = _clip_geometry(config)
    encoder = _build_encoder(config, gpt.run_spec.features, gpt.config.feat_dim, device)
    vocoder = load_vocoder(config["vocoder"]["kind"], geometry["mel"], vocoder_file, device=device)
    log.info("%s: features %s; sampling %s", name, describe(config["features"]["precision"]),
             describe(config["sampling"]["precision"]))
    return SoundModel(name=name, gpt=gpt, codebook=codebook, encoder=encoder, vocoder=vocoder, device=device,
                      precision=config["features"]["precision"], sampling=dict(config["sampling"]), **geometry)


def _check_fits(name: str, gpt, codebook, config: dict[str, Any], where: str) -> None:
    """The transformer's tokens must fill the codebook's grid for the config's mels, and its S frames must fit in
    the config's feature crop."""
    cfg = codebook.cfg
    rows = config["audio"]["n_mels"] // cfg.downsample_factor
    grid = rows * cfg.latent_width
    S = gpt.run_spec.feat_sample_size
    if gpt.block_size - S != grid:
        raise ModelError(f"{name} draws {gpt.block_size - S} tokens, the codebook's grid for "
                         f"{config['audio']['n_mels']} mels is {rows} x {cfg.latent_width} = {grid}: {where}")
    if config["audio"]["crop_frames"] != cfg.resolution:
        raise ModelError(f"the codebook decodes {cfg.resolution} mel frames, the config's audio.crop_frames is "
                         f"{config['audio']['crop_frames']}: {where}")
    if S > config["video"]["feat_crop"]:
        raise ModelError(f"{name} reads S = {S} feature frames, more than the config's video.feat_crop "
                         f"{config['video']['feat_crop']}: {where}")


def _changed(expected: dict[str, Any], found: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys (dotted) whose values differ between two nested dicts."""
    keys = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(prefix + key)
    return keys


def load_run_model(config: dict[str, Any], run: str, device=None, config_file: str | Path | None = None) -> SoundModel:
    """A run of the config: its best checkpoint (or, for a released run, the authors' transformer), the config's
    codebook, backbone settings and vocoder. The checkpoint's own description decides S, the backbone and the
    shape; a checkpoint trained with another codebook or backbone than the config gives is refused."""
    from i2a.device import pick_device
    from i2a.models.codebook import check_codebook, load_codebook
    from i2a.models.gpt import load_transformer
    from i2a.runspec import RunSpec

    runs = {entry["name"]: entry for entry in config["runs"]}
    if run not in runs:
        raise ModelError(f"no run {run!r} in the config; its runs: {', '.join(runs)}")
    entry = runs[run]
    if entry["source"] == "released":
        return load_released_model(config, entry["released"], device, config_file)
    device = pick_device(device)
    ckpt = Path(config["results"]) / "runs" / run / "best.ckpt"
    codebook_file = codebook_path(config)
    vocoder_file = melgan_path(config) if config["vocoder"]["kind"] == "melgan" else None

    def check_present(features: str) -> None:
        missing = _missing([ckpt, codebook_file, vocoder_file, _backbone_weights(config, features)])
        if missing:
            raise ModelError(f"run {run} needs {', '.join(missing)}, which are not there (paths are relative to the "
                             f"workflow's folder): make them with\n    {_fetch_or_make(missing, config_file)}")

    if not ckpt.is_file():
        check_present(entry["features"])
    gpt = load_transformer(ckpt, map_location=device)
    spec = gpt.run_spec
    if spec is None:
        raise ModelError(f"{ckpt} does not describe itself (no RunSpec in it): retrain it with the workflow's "
                         "train_gpt rule, or use --released for the authors' transformers")
    if spec.features != entry["features"]:
        raise ModelError(f"{ckpt} was trained on {spec.features} features, the config's run {run} says "
                         f"{entry['features']}: retrain it (snakemake reruns train_gpt) or use the config it was "
                         "trained with")
    check_present(spec.features)
    changed = _changed(RunSpec.from_config(config, entry).training_view(), spec.training_view())
    if changed:
        log.warning("%s was trained with other %s than the config's run %s says: generating with the checkpoint as "
                    "it describes itself", ckpt, ", ".join(changed), run)
    codebook = load_codebook(codebook_file, map_location=device).to(device)
    try:
        check_codebook(gpt.codebook, codebook_file, codebook.cfg, transformer=str(ckpt))
    except ValueError as err:
        raise ModelError(str(err)) from None
    _check_fits(run, gpt, codebook, config, "the config is not the one the run was trained with")
    return _sound_model(run, gpt, codebook, config, vocoder_file, device)


def load_released_model(config: dict[str, Any], name: str, device=None,
                        config_file: str | Path | None = None) -> SoundModel:
    """One of the authors' VAS transformers with their VAS codebook (both fetched by the workflow's
    fetch_checkpoint rule), the config's backbone weights and vocoder. The config's clip geometry must be the
    study's (10 s, 848 mel frames, 212 feature frames), as in config/config.yaml."""
    from i2a.device import pick_device
    from i2a.models.codebook import load_codebook
    from i2a.models.gpt import load_released_transformer
    from i2a.models.released import TRANSFORMERS, released

    if name not in TRANSFORMERS:
        raise ModelError(f"no released transformer {name!r}; choose one of {', '.join(TRANSFORMERS)}")
    device = pick_device(device)
    entry = released(name)
    transformer_file = Path(entry.local_path)
    codebook_file = Path(released("vas_codebook").member_path(config["codebook"].get("member")))
    vocoder_file = melgan_path(config) if config["vocoder"]["kind"] == "melgan" else None
    features = entry.shape()["features"]
    missing = _missing([transformer_file, codebook_file, vocoder_file, _backbone_weights(config, features)])
    if missing:
        raise ModelError(f"the released model {name} needs {', '.join(missing)}, which are not there: fetch them "
                         f"(MD5 checked) with\n    {_fetch_or_make(missing, None)}")
    codebook = load_codebook(codebook_file, map_location=device).to(device)
    cfg = codebook.cfg
    n_tokens = (config["audio"]["n_mels"] // cfg.downsample_factor) * cfg.latent_width
    try:
        gpt = load_released_transformer(name, vocab_size=cfg.n_embed, n_tokens=n_tokens, path=transformer_file,
                                        map_location=device)
    except ValueError as err:
        raise ModelError(str(err)) from None
    _check_fits(name, gpt, codebook, config, "the released models need the study's 10 s clips: use --config "
                "config/config.yaml")
    return _sound_model(name, gpt, codebook, config, vocoder_file, device)


def load(config: str | Path = "config/config.yaml", run: str | None = None, released: str | None = None,
         device=None) -> SoundModel:
    """The Python API: a run of the workflow config (its best checkpoint) or one of the authors' released
    transformers, ready to `generate(image) -> waveform`. Paths in the config are relative to the current folder
    (the workflow's)."""
    if (run is None) == (released is None):
        raise ModelError("give run=NAME (a run of the config) or released=NAME (one of the authors' transformers)")
    loaded = load_config(config)
    if run is not None:
        return load_run_model(loaded, run, device, config_file=config)
    return load_released_model(loaded, released, device)


# ------------------------------------------------------------------------------------------------------ inputs

def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_video(path: Path) -> bool:
    from i2a.data.clips import VIDEO_SUFFIXES

    return path.suffix.lower() in VIDEO_SUFFIXES


def expand_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files, problems): the files in the order given, a folder replaced by the images and videos in it (by
    suffix, in name order, not its subfolders), each file once. A missing path or a folder with nothing to use
    is a problem (path, reason), reported like a bad file."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(p for p in given.iterdir() if p.is_file() and not p.name.startswith(".")
                           and (is_image(p) or is_video(p)))
            if not found:
                problems.append((given, f"no images ({', '.join(IMAGE_SUFFIXES)}) or videos in this folder"))
            files += found
        elif given.exists():
            files.append(given)
        else:
            problems.append((given, "no such file or folder"))
    first: dict[Path, Path] = {}
    for path in files:
        first.setdefault(path.resolve(), path)
    return list(first.values()), problems


def read_image(path: str | Path, min_size: int = 0) -> np.ndarray:
    """An image file as one RGB frame (1, H, W, 3) uint8, turned upright as its EXIF says; refused when it is not
    an image, or when even its longer side is below `min_size` (the backbone would see mostly interpolation)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            frame = np.array(image, dtype=np.uint8)  # a writable copy: torch warns about read-only arrays
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
        raise InputError(f"not a readable image ({type(err).__name__}: {err}): give a JPEG, PNG or WebP file") from None
    h, w = frame.shape[:2]
    if max(h, w) < min_size:
        raise InputError(f"{w} x {h} pixels is smaller than the backbone's {min_size} x {min_size} input: give a "
                         f"picture at least {min_size} pixels wide or high")
    return frame[None]


def read_video(path: str | Path, model: SoundModel, workdir: str | Path) -> tuple[np.ndarray | None, Path]:
    """(frames, the chain's cut clip): the video as the workflow's preprocess_clips job makes a training clip of it,
    then its frames at the config's fps as extract_features decodes them, already the backbone's (crop, crop, 3)
    input (`frame_reader`); no frames (None) for the no-feats baseline, which does not look at them."""
    from i2a.data.media import BadClip, preprocess_clip, video_head
    from i2a.features.extract import frame_reader

    workdir = Path(workdir)
    head, clip, wav = workdir / "head.mkv", workdir / "clip.mp4", workdir / "clip.wav"
    try:
        video_head(path, head, model.seconds)
        preprocess_clip(head, clip, wav, seconds=model.seconds, sample_rate=model.mel.sample_rate)
        frames = None if model.encoder is None else frame_reader(model.encoder.transform, model.fps)(clip)
    except BadClip as bad:
        raise InputError(f"{bad.reason}: give a video with a picture (anything ffmpeg reads: mp4, mkv, webm, avi, "
                         "mov, ...) or a JPEG, PNG or WebP image") from None
    finally:
        head.unlink(missing_ok=True)
        wav.unlink(missing_ok=True)
    return frames, clip


def condition_rows(n_frames: int, feat_frames: int, feat_crop: int, S: int) -> np.ndarray:
    """Which of a clip's n frames each of the transformer's S condition positions shows: the workflow's
    feature padding (tile to feat_frames, centre crop feat_crop), then SpecVQGAN's choice of S of those."""
    from i2a.features.extract import pad_and_crop_indices
    from i2a.models.gpt import sample_frame_indices

    return pad_and_crop_indices(n_frames, feat_frames, feat_crop)[sample_frame_indices(feat_crop, S)]


@dataclass
class Prepared:
    """An input read and encoded: its (D, S) features (None for the no-feats baseline) and, for a video, the
    chain's clip that --mux puts the generated sound on."""

    path: Path
    kind: str  # "image" | "video"
    feats: np.ndarray | None
    clip: Path | None = None


def prepare(path: Path, model: SoundModel, workdir: Path) -> Prepared:
    """Read an input and encode the frames its condition positions show (each distinct frame once)."""
    if not path.is_file():
        raise InputError("not a file")
    if is_image(path):
        return encode_frames(model, path, "image", read_image(path, model.min_image_size))
    workdir.mkdir(parents=True, exist_ok=True)
    frames, clip = read_video(path, model, workdir)
    return encode_frames(model, path, "video", frames, clip)


def prepare_any(image, model: SoundModel, workdir: Path) -> Prepared:
    """`prepare` for what the Python API takes: a path, a PIL image or an (H, W, 3) uint8 array."""
    if isinstance(image, (str, Path)):
        return prepare(Path(image), model, workdir)
    frame = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise InputError(f"an array of shape {frame.shape} and type {frame.dtype}: give an (H, W, 3) uint8 RGB "
                         "picture, a PIL image or a path")
    if max(frame.shape[:2]) < model.min_image_size:
        raise InputError(f"{frame.shape[1]} x {frame.shape[0]} pixels is smaller than the backbone's "
                         f"{model.min_image_size} x {model.min_image_size} input")
    return encode_frames(model, Path("<array>"), "image", np.ascontiguousarray(frame)[None])


def encode_frames(model: SoundModel, path: Path, kind: str, frames: np.ndarray | None,
                  clip: Path | None = None) -> Prepared:
    """The (D, S) features of the frames an input's condition positions show (each distinct frame encoded once)."""
    from i2a.features.extract import extract_clip_features

    if model.encoder is None:
        return Prepared(path, kind, None, clip)
    rows = condition_rows(len(frames), model.feat_frames, model.feat_crop, model.S)
    used, where = np.unique(rows, return_inverse=True)
    set_precision(model.precision)  # the backbone's arithmetic, as extract_features runs it
    feats = extract_clip_features(model.encoder, np.ascontiguousarray(frames[used]), device=model.device,
                                  precision=model.precision, cropped=kind == "video")
    return Prepared(path, kind, feats[where].T.astype(np.float32), clip)


# ------------------------------------------------------------------------------------------------------ generating

MANIFEST = ".i2a-generate.json"  # in an output folder: the files generate wrote there, name -> MD5
MAX_PANELS = 8  # samples shown in an input's spectrogram figure; the wavs hold them all


@dataclass
class Result:
    """What was made for one input (or why nothing was)."""

    path: Path
    kind: str = ""
    wavs: list[Path] = field(default_factory=list)
    spectrogram: Path | None = None
    videos: list[Path] = field(default_factory=list)
    mels: np.ndarray | None = None  # (samples, n_mels, T) in [0, 1], with keep_mels
    error: str | None = None


def sample_seeds_for_inputs(seed: int, samples: int) -> list[int]:
    """Sample k's seed, the same for every input: the workflow's seed of sample k of its first video."""
    from i2a.samples import sample_seeds

    return [int(s) for s in sample_seeds(seed, 1, samples)[0]]


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A file name stem per input: its own, with -2, -3, ... when an earlier input has taken it."""
    stems: list[str] = []
    for path in paths:
        stem, n = path.stem, 1
        while stem in stems:
            n += 1
            stem = f"{path.stem}-{n}"
        stems.append(stem)
    return stems


def spectrogram_figure(mels01: np.ndarray, seeds: Sequence[int], mel, title: str = ""):
    """An input's generated spectrograms, one labelled panel per sample with its seed: time in seconds, frequency
    in Hz at the mel bins' centres (low frequencies at the bottom), level in dB. A matplotlib Figure (no pyplot:
    safe in threads and without a display)."""
    import librosa
    from matplotlib.figure import Figure

    n, n_mels, frames = mels01.shape
    seconds = frames * mel.hop_length / mel.sample_rate
    centres = librosa.mel_frequencies(n_mels + 2, fmin=mel.fmin, fmax=mel.fmax)[1:-1]
    fig = Figure(figsize=(7, 1.2 + 1.6 * n), layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    ticks = np.linspace(0, n_mels - 1, 5).round().astype(int)
    for k, (ax, spectrogram, seed) in enumerate(zip(axes, mels01, seeds)):
        image = ax.imshow(spectrogram * 100 - 100, origin="lower", aspect="auto", cmap="magma", vmin=-100, vmax=0,
                          extent=(0, seconds, 0, n_mels), interpolation="nearest")
        ax.set_yticks(ticks + 0.5, [f"{centres[i]:.0f}" for i in ticks])
        ax.set_ylabel("frequency (Hz)")
        ax.set_title(f"sample {k}, seed {seed}", fontsize=9, loc="left")
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(image, ax=list(axes), label="level (dB)", shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def spectrograms_png(mels01: np.ndarray, seeds: Sequence[int], mel, path: Path, title: str = "") -> Path:
    """The labelled figure as a PNG, written atomically and without a timestamp (same sounds, same bytes)."""
    from i2a.atomic import atomic_path

    fig = spectrogram_figure(mels01, seeds, mel, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    return Path(path)


def check_sampling(samples: int, seed: int, top_k: int, temperature: float, batch_size: int, n_codes: int,
                   label: Callable[[str], str] = str) -> None:
    """The config's checks of the sampler's values (i2a.config.check_sampling_values), and positive counts."""
    from i2a.config import check_sampling_values

    for key, value in (("samples", samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label(key)}: {value!r} is not a whole number >= 1")
    check_sampling_values({"temperature": temperature, "top_k": top_k, "seed": seed}, n_codes=n_codes, label=label)


def check_output_folder(out_dir: str | Path, inputs: Sequence[str | Path]) -> None:
    """--out must be a folder (or not exist yet) and hold none of the inputs: outputs written beside them would
    overwrite the user's files and be read as inputs the next time."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"--out {out_dir} is a file, not a folder: give a folder for the outputs")
    target = out_dir.resolve()
    for given in map(Path, inputs):
        if not given.exists():
            continue
        if (given if given.is_dir() else given.parent).resolve() == target:
            raise ModelError(f"--out {out_dir} holds the inputs ({given}): the outputs would overwrite files there "
                             "and be read as inputs next time; give another folder")


class _Outputs:
    """An output folder's record of the files generate wrote (MANIFEST): a file of an output's name that is not in
    it, or was changed since, is the user's and is never overwritten."""

    def __init__(self, folder: Path):
        import json

        self.folder = folder
        path = folder / MANIFEST
        try:
            self.written = dict(json.loads(path.read_text())) if path.is_file() else {}
        except (ValueError, TypeError):
            log.warning("%s is unreadable: treating every file in %s as the user's", path, folder)
            self.written = {}

    def foreign(self, names: Iterable[str]) -> list[str]:
        from i2a.checksum import file_digest

        return [name for name in names if (self.folder / name).exists()
                and ((self.folder / name).is_dir() or self.written.get(name) != file_digest(self.folder / name))]

    def record(self, paths: Iterable[Path]) -> None:
        import json

        from i2a.atomic import write_text
        from i2a.checksum import file_digest

        self.written.update({p.name: file_digest(p) for p in paths})
        write_text(self.folder / MANIFEST, json.dumps(self.written, indent=0, sort_keys=True))


def _output_names(stem: str, samples: int, kind: str, mux: bool) -> list[str]:
    names = [f"{stem}_sample{k:02d}.wav" for k in range(samples)] + [f"{stem}_spectrogram.png"]
    if mux and kind == "video":
        names += [f"{stem}_sample{k:02d}.mp4" for k in range(samples)]
    return names


def rows_per_batch(model: SoundModel, batch_size: int | str, samples: int) -> int | str:
    """`sampling.batch_size: auto` as the workflow's sampler sizes it (i2a.samples.videos_per_batch: an input's
    samples are a video's); a number (or a bad value, for check_sampling to name) as it is."""
    if batch_size != "auto":
        return batch_size
    import torch

    from i2a.samples import videos_per_batch

    dtype = autocast_dtype(model.sampling.get("precision", "fp32")) or torch.float32
    return samples * videos_per_batch("auto", samples, model.gpt, model.S, model.n_tokens, dtype,
                                      torch.device(model.device))


def vocode(model: SoundModel, mel: np.ndarray) -> np.ndarray:
    """One spectrogram's waveform, vocoded alone: Griffin-Lim seeds its random phases per call, so a sound vocoded
    in a batch would depend on its place in it."""
    return np.asarray(model.vocoder(mel[None])[0], dtype=np.float32)


def _draw(model: SoundModel, feats: list[np.ndarray | None], seeds: list[int], top_k: int,
          temperature: float) -> np.ndarray:
    """(rows, n_mels, T) spectrograms, one per row: its input's (D, S) features and its sample's seed."""
    import torch

    from i2a.models import gpt as gpt_module
    from i2a.models.codebook import decode_tokens
    from i2a.samples import condition

    row_seeds = np.asarray(seeds, np.int64)
    if model.encoder is None:
        cond = condition("none", None, row_seeds, model.S, model.gpt.config.feat_dim)
    else:
        cond = torch.from_numpy(np.stack(feats))
    precision = model.sampling.get("precision", "fp32")  # the config's sampling.precision, as sample_tokens runs
    set_precision(precision)
    tokens = gpt_module.sample_tokens(model.gpt, cond.to(model.device), model.n_tokens, top_k=top_k,
                                      temperature=temperature, seeds=row_seeds.tolist(), cache=True,
                                      dtype=autocast_dtype(precision) or torch.float32)
    log.debug("sampled %d rows of %s (%s, S=%d)", len(row_seeds), model.name, model.spec.features, model.S)
    return decode_tokens(model.codebook, tokens.cpu().numpy(), progress=False)


@dataclass
class _Job:
    """An input being sampled: its spectrograms for the figure (the first MAX_PANELS) and, with keep_mels, all."""

    prepared: Prepared
    result: Result
    stem: str
    panels: list[np.ndarray] = field(default_factory=list)
    kept: list[np.ndarray] = field(default_factory=list)


def generate(model: SoundModel, inputs: Sequence[str | Path], out_dir: str | Path, samples: int = 1, seed: int = 0,
             top_k: int | None = None, temperature: float = 1.0, batch_size: int = 64, mux: bool = False,
             keep_mels: bool = False, progress: bool | None = None) -> list[Result]:
    """Generate `samples` sounds for every input (files or folders) into `out_dir`: per input
    `<stem>_sampleNN.wav` at the config's sample rate, `<stem>_spectrogram.png`, and with `mux` for a video
    `<stem>_sampleNN.mp4` (its clip with the generated sound). Inputs are read one by one and sampled together,
    never more than `batch_size` rows (input, sample) at a time, each written as soon as it is drawn: memory does not
    grow with `samples`. A bad input, or one whose outputs would overwrite a file generate did not write, gets its
    Result.error; the others go on. `progress`: a progress bar (None: when stderr is a terminal; otherwise one log
    line per input)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    # the config's sampling.top_k, as the workflow samples (a checkpoint's own spec keeps the default: sampling
    # settings do not retrain a run)
    top_k = top_k if top_k is not None else model.sampling.get("top_k", model.spec.sampling.top_k)
    batch_size = rows_per_batch(model, batch_size, samples)
    check_sampling(samples, seed, top_k, temperature, batch_size, model.gpt.config.vocab_size)
    check_output_folder(out_dir, inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = _Outputs(out_dir)
    files, problems = expand_inputs(inputs)
    results = [Result(path, error=reason) for path, reason in problems]
    for result in results:
        log.error("%s: %s", result.path, result.error)
    stems = dict(zip(files, output_stems(files)))
    seeds = sample_seeds_for_inputs(seed, samples)
    inputs_per_batch = max(1, batch_size // samples)
    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(files), desc=f"generating ({model.name})", unit="input", disable=not show_bar)
    pending: list[_Job] = []
    finished = 0

    def done(result: Result) -> None:
        nonlocal finished
        finished += 1
        bar.update(1)
        if result.error:
            log.error("%s: %s", result.path, result.error)
        elif not show_bar:
            log.info("[%d/%d] %s -> %s", finished, len(files), result.path,
                     ", ".join(p.name for p in [*result.wavs, result.spectrogram, *result.videos]))

    def finish(job: _Job) -> None:
        from i2a.data.media import mux_audio

        result = job.result
        if result.error is None:
            try:
                result.spectrogram = spectrograms_png(np.stack(job.panels), seeds[:MAX_PANELS], model.mel,
                                                      out_dir / f"{job.stem}_spectrogram.png",
                                                      f"{job.result.path.name}: {model.name}"
                                                      + (f" (first {MAX_PANELS} of {samples} samples)"
                                                         if samples > MAX_PANELS else ""))
                if mux and job.prepared.clip is not None:
                    for k, wav_path in enumerate(result.wavs):
                        result.videos.append(mux_audio(job.prepared.clip, wav_path,
                                                       out_dir / f"{job.stem}_sample{k:02d}.mp4"))
            except Exception as err:  # noqa: BLE001 - one input's failure (its mux, the disk) spares the others
                result.error = f"could not write its outputs ({type(err).__name__}: {err})"
            if keep_mels and result.error is None:
                result.mels = np.concatenate(job.kept)
        outputs.record(p for p in [*result.wavs, result.spectrogram, *result.videos] if p is not None)
        done(result)

    def flush() -> None:
        """Draw the pending inputs' rows, batch_size at a time, writing each row's wav as soon as it is drawn."""
        from i2a.models.vocoder import write_wav

        rows = [(job, k) for job in pending for k in range(samples)]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            mels = _draw(model, [job.prepared.feats for job, _ in chunk], [seeds[k] for _, k in chunk], top_k,
                         temperature)
            for (job, k), mel in zip(chunk, mels):
                if job.result.error is None:
                    try:
                        wav = out_dir / f"{job.stem}_sample{k:02d}.wav"
                        job.result.wavs.append(write_wav(wav, vocode(model, mel), sr=model.mel.sample_rate))
                    except Exception as err:  # noqa: BLE001 - the disk: this input fails, the others go on
                        job.result.error = f"could not write its outputs ({type(err).__name__}: {err})"
                    if k < MAX_PANELS:
                        job.panels.append(mel)
                    if keep_mels:
                        job.kept.append(mel[None])
                if k == samples - 1:
                    finish(job)
        pending.clear()

    with tempfile.TemporaryDirectory(prefix="i2a-generate-") as tmp, logging_redirect_tqdm():
        for i, path in enumerate(files):
            result = Result(path)
            results.append(result)
            bar.set_postfix_str(path.name, refresh=False)
            try:
                prepared = prepare(path, model, Path(tmp) / f"{i:05d}")
            except (InputError, FileNotFoundError) as err:
                result.error = str(err)
            except Exception as err:  # noqa: BLE001 - whatever else one file does, the others are still generated
                result.error = f"could not be read ({type(err).__name__}: {err})"
            if result.error is None:
                result.kind = prepared.kind
                foreign = outputs.foreign(_output_names(stems[path], samples, prepared.kind, mux))
                if foreign:
                    result.error = (f"would overwrite {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''} "
                                    f"in {out_dir}, which i2a generate did not write: move them or give another --out")
            if result.error:
                done(result)
                continue
            pending.append(_Job(prepared, result, stems[path]))
            if len(pending) >= inputs_per_batch:
                flush()
        flush()
    bar.close()
    return results


# ------------------------------------------------------------------------------------------------------ the CLI

def runs_epilog(config_file: str | Path) -> str:
    """--help's list of the config's runs, each with its backbone and whether it is trained here. Read as YAML only
    (no schema, no torch) so that --help stays fast."""
    path = Path(config_file)
    try:
        config = read_merged(path)
        runs = [entry for entry in config.get("runs") or [] if isinstance(entry, dict) and "name" in entry]
    except (OSError, yaml.YAMLError) as err:
        return f"The runs of {path} cannot be listed ({type(err).__name__}): give --config FILE before --help."
    lines = [f"runs of {path} (--run NAME):"]
    for entry in runs:
        name = entry["name"]
        if entry.get("source") == "released":
            lines.append(f"  {name:<20} the authors' released {entry.get('released')}")
            continue
        ckpt = Path(str(config.get("results", "results"))) / "runs" / name / "best.ckpt"
        state = "trained" if ckpt.is_file() else f"not trained here yet (no {ckpt})"
        features = entry.get("features", "?")
        lines.append(f"  {name:<20} {'no features (baseline)' if features == 'none' else features + ' features'}, "
                     f"{state}")
    lines.append("released models (--released NAME, with --config config/config.yaml): resnet50_1feat, "
                 "resnet50_5feat, resnet50_212feat, no_feats")
    return "\n".join(lines)


def _parser(epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2a", description="Image-to-audio with the study's models.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate", help="sound for your own images and videos", epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate sounds for images (JPEG, PNG, WebP) and videos with a run's best checkpoint or a "
                    "released SpecVQGAN transformer. Run it in the workflow's folder: the config's paths are "
                    "relative to it. Exit status 1 when some inputs could not be used (the others are generated), "
                    "2 when the model could not be loaded.")
    app = commands.add_parser(
        "app", help="a local web page to try a model", epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a page (http://127.0.0.1:PORT/) where you upload an image or a short video and hear, see "
                    "and download the sounds generated for it. Run it in the workflow's folder.")
    gen.add_argument("inputs", nargs="+", type=Path, help="images, videos, or folders of them")
    for sub in (gen, app):
        sub.add_argument("--config", default="config/config.yaml",
                         help="the workflow config the model was made with, merged over the config.yaml beside it "
                              "as snakemake --configfile merges over config/config.yaml (default: %(default)s)")
        model = sub.add_mutually_exclusive_group(required=True)
        model.add_argument("--run", help="a run of the config: its best checkpoint, the config's codebook and "
                                         "vocoder")
        model.add_argument("--released", metavar="NAME",
                           help="the authors' transformer and VAS codebook: resnet50_1feat, resnet50_5feat, "
                                "resnet50_212feat or no_feats")
        sub.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: a GPU when there is one)")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                                                          "only)")
    app.add_argument("--port", type=int, default=8000, help="(default: %(default)s; 0: any free port)")
    app.add_argument("--samples", type=int, default=2, help="sounds per upload offered (default: %(default)s)")
    app.add_argument("--max-upload-mb", type=float, default=50, help="largest upload taken (default: %(default)s)")
    gen.add_argument("--out", type=Path, default=Path("generated"), help="output folder (default: %(default)s)")
    gen.add_argument("--samples", type=int, default=1, help="sounds per input (default: %(default)s)")
    gen.add_argument("--seed", default=None, help="sampling seed (default: the config's sampling.seed)")
    gen.add_argument("--top-k", type=int, default=None, help="top-k sampling (default: the config's sampling.top_k)")
    gen.add_argument("--temperature", type=float, default=None,
                     help="sampling temperature (default: the config's sampling.temperature)")
    gen.add_argument("--batch-size", type=int, default=None,
                     help="sequences sampled at once (default: the config's sampling.batch_size)")
    gen.add_argument("--mux", action="store_true", help="also write each video input's clip with the generated "
                                                         "sound as an mp4")
    return parser


def _option(key: str) -> str:
    """A sampling value's name on the command line: top_k -> --top-k."""
    return "--" + key.replace("_", "-")


def _seed(text: str | None, default: int) -> int:
    """--seed as a whole number; text that is not one (1e23, 2.5) is named in the error, as the range check does."""
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        from i2a.config import SEED_LIMIT

        raise ModelError(f"--seed: {text!r} is not a whole number from 0 to {SEED_LIMIT - 1}") from None


def _serve(args: argparse.Namespace) -> int:
    """i2a app: load the model, then serve its page until interrupted."""
    from i2a.app import App, make_server

    try:
        config = load_config(args.config)
        if args.run is not None:
            model = load_run_model(config, args.run, args.device, config_file=args.config)
        else:
            model = load_released_model(config, args.released, args.device)
        server = make_server(App(model, samples=args.samples, seed=config["sampling"]["seed"],
                                 max_upload=int(args.max_upload_mb * 2 ** 20)), args.host, args.port)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        log.error("error: %s", err)
        return EXIT_MODEL_ERROR
    host, port = server.server_address[:2]
    log.info("i2a app: %s on http://%s:%d/ (Ctrl-C stops it)", model.name, host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    epilog = None
    if {"-h", "--help"} & set(argv):  # list the runs of the config given (or the default one)
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", default="config/config.yaml")
        epilog = runs_epilog(pre.parse_known_args(argv)[0].config)
    args = _parser(epilog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    logging.getLogger("i2a").setLevel(logging.INFO)  # our progress lines; the libraries' chatter stays out
    if args.command == "app":
        return _serve(args)
    try:
        config = load_config(args.config)
        sampling = config["sampling"]
        values = {"samples": args.samples, "seed": _seed(args.seed, sampling["seed"]),
                  "top_k": sampling["top_k"] if args.top_k is None else args.top_k,
                  "temperature": sampling["temperature"] if args.temperature is None else args.temperature,
                  "batch_size": sampling["batch_size"] if args.batch_size is None else args.batch_size}
        check_sampling(**values, n_codes=None, label=_option)  # before the model loads: fail fast
        check_output_folder(args.out, args.inputs)
        if args.run is not None:
            model = load_run_model(config, args.run, args.device, config_file=args.config)
        else:
            model = load_released_model(config, args.released, args.device)
        check_sampling(**values, n_codes=model.gpt.config.vocab_size, label=_option)  # top-k within its codebook
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # ModelError, ConfigError, and the loaders' own
        log.error("error: %s", err)
        return EXIT_MODEL_ERROR
    log.info("%s: %s features, S=%d, %d tokens; %s vocoder; %d sample(s) per input -> %s", model.name,
             model.spec.features, model.S, model.n_tokens, config["vocoder"]["kind"], args.samples, args.out)
    results = generate(model, args.inputs, args.out, mux=args.mux, **values)
    failed = [r for r in results if r.error]
    log.info("%d of %d inputs generated into %s%s", len(results) - len(failed), len(results), args.out,
             f"; {len(failed)} could not be used (see the errors above)" if failed else "")
    return EXIT_INPUT_ERRORS if failed else 0


if __name__ == "__main__":
    sys.exit(main())
