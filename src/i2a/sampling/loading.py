"""A model for `i2a generate`, `i2a app` and the Python API (`load(...)` then `.generate(image)`): a run's best
checkpoint or a released SpecVQGAN transformer, with its codebook, backbone and vocoder (design.md §5).

The model is what its checkpoint says it is: a trained run's checkpoint names its backbone, S, shape and the
codebook it was trained on, and is refused with another codebook or backbone; a released transformer's shape comes
from the registry of released files and the codebook it is paired with."""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from i2a.data.clips import mel_spec_from_config
from i2a.features.backbones import build_backbone
from i2a.infra.device import pick_device
from i2a.infra.precision import describe
from i2a.models.codebook import check_codebook, load_codebook
from i2a.models.transformer import LoadedTransformer, load_released_transformer, load_transformer
from i2a.models.vocoder import load_vocoder
from i2a.sampling.errors import ModelError
from i2a.sampling.inputs import prepare_any
from i2a.sampling.loop import _draw, check_sampling, rows_per_batch, sample_seeds_for_inputs, vocode
from i2a.spec.backbones import weights_file
from i2a.spec.config import component_checkpoint, load_config
from i2a.spec.frames import check_sample_size
from i2a.spec.released import TRANSFORMERS, released
from i2a.spec.runspec import RunSpec

log = logging.getLogger(__name__)


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
    transformer: LoadedTransformer  # with its spec: backbone, S, feature normalisation
    codebook: Any  # i2a.models.codebook.VQModel
    encoder: Any | None  # i2a.features.backbones.FrameEncoder; None for the no-feats baseline
    vocoder: Callable[[np.ndarray], np.ndarray]
    mel: Any  # i2a.data.mel.MelSpec
    seconds: float
    fps: float
    feat_frames: int
    feat_crop: int
    device: Any
    precision: str  # the backbone's, as the workflow's extract_features runs it (features.precision)
    sampling: dict[str, Any]  # the config's sampling: (seed, top_k, ...), validated: the defaults here

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    def generate(self, image, samples: int | None = None, seed: int | None = None, top_k: int | None = None,
                 temperature: float | None = None, batch_size: int | None = None) -> np.ndarray:
        """The sound of a picture as float32 samples at `sample_rate`: one waveform (n,), or (samples, n) when
        `samples` is given. `image`: a path (an image or a video, as the CLI reads it), a PIL image or an
        (H, W, 3) uint8 array. Sample k is the CLI's `<stem>_sampleNN.wav` for the same seed (before its 16-bit
        rounding); the defaults are the config's `sampling:` values, checked as the config checks them."""
        settings = {k: self.sampling[k] for k in ("seed", "top_k", "temperature", "batch_size")}
        given = {"seed": seed, "top_k": top_k, "temperature": temperature, "batch_size": batch_size}
        settings.update({k: v for k, v in given.items() if v is not None})
        count = 1 if samples is None else samples
        settings["batch_size"] = rows_per_batch(self, settings["batch_size"], count)
        check_sampling(count, **settings, n_codes=self.vocab_size)
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
    def spec(self) -> RunSpec:
        return self.transformer.spec

    @property
    def S(self) -> int:
        return self.transformer.S

    @property
    def n_tokens(self) -> int:
        return self.transformer.n_tokens

    @property
    def vocab_size(self) -> int:
        return self.transformer.gpt.config.vocab_size

    @property
    def feat_dim(self) -> int:
        return self.transformer.gpt.config.feat_dim

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
    if features == "none":
        return None
    path = weights_file(features, config["backbones"][features]["weights"], cache_dir="resources/weights")
    return None if path is None else Path(path)


def _build_encoder(config: dict[str, Any], features: str, feat_dim: int, device):
    """The run's backbone with the config's weights and transforms; its features must be as deep as the
    transformer's input."""
    if features == "none":
        return None
    settings = config["backbones"][features]
    encoder = build_backbone(features, weights=settings["weights"], cache_dir="resources/weights",
                             image_size=settings["image_size"])
    if encoder.feat_dim != feat_dim:
        raise ModelError(f"backbone {features} gives {encoder.feat_dim}-d features, the transformer reads {feat_dim}-d")
    encoder.model.to(device)
    return encoder


def _clip_geometry(config: dict[str, Any]) -> dict[str, Any]:
    video = config["video"]
    return {"mel": mel_spec_from_config(config["audio"]), "seconds": float(config["audio"]["seconds"]),
            "fps": float(video["fps"]), "feat_frames": int(video["feat_frames"]), "feat_crop": int(video["feat_crop"])}


def _sound_model(name: str, transformer: LoadedTransformer, codebook, config: dict[str, Any],
                 vocoder_file: Path | None, device) -> SoundModel:
    """A checked transformer and codebook with the run's backbone, the vocoder and the config's clip geometry."""
    geometry = _clip_geometry(config)
    encoder = _build_encoder(config, transformer.spec.features, transformer.gpt.config.feat_dim, device)
    vocoder = load_vocoder(config["vocoder"]["kind"], geometry["mel"], vocoder_file, device=device)
    log.info("%s: features %s; sampling %s", name, describe(config["features"]["precision"]),
             describe(config["sampling"]["precision"]))
    return SoundModel(name=name, transformer=transformer, codebook=codebook, encoder=encoder, vocoder=vocoder, device=device,
                      precision=config["features"]["precision"], sampling=dict(config["sampling"]), **geometry)


def _check_fits(name: str, transformer: LoadedTransformer, codebook, config: dict[str, Any], where: str) -> None:
    """The transformer's tokens must fill the codebook's grid for the config's mels, and its S frames must fit in
    the config's feature crop."""
    cfg = codebook.cfg
    rows = config["audio"]["n_mels"] // cfg.downsample_factor
    grid = rows * cfg.latent_width
    if transformer.n_tokens != grid:
        raise ModelError(f"{name} draws {transformer.n_tokens} tokens, the codebook's grid for "
                         f"{config['audio']['n_mels']} mels is {rows} x {cfg.latent_width} = {grid}: {where}")
    if config["audio"]["crop_frames"] != cfg.resolution:
        raise ModelError(f"the codebook decodes {cfg.resolution} mel frames, the config's audio.crop_frames is "
                         f"{config['audio']['crop_frames']}: {where}")
    try:
        check_sample_size(transformer.S, config["video"]["feat_crop"])
    except ValueError as err:
        raise ModelError(f"{name}: {err}: {where}") from None


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
    transformer = load_transformer(ckpt, map_location=device)
    spec = transformer.spec
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
        check_codebook(transformer.codebook_fingerprint, codebook_file, codebook.cfg, transformer=str(ckpt))
    except ValueError as err:
        raise ModelError(str(err)) from None
    _check_fits(run, transformer, codebook, config, "the config is not the one the run was trained with")
    return _sound_model(run, transformer, codebook, config, vocoder_file, device)


def load_released_model(config: dict[str, Any], name: str, device=None,
                        config_file: str | Path | None = None) -> SoundModel:
    """One of the authors' VAS transformers with their VAS codebook (both fetched by the workflow's
    fetch_checkpoint rule), the config's backbone weights and vocoder. The config's clip geometry must be the
    study's (10 s, 848 mel frames, 212 feature frames), as in config/config.yaml."""
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
        transformer = load_released_transformer(name, vocab_size=cfg.n_embed, n_tokens=n_tokens,
                                                path=transformer_file, map_location=device)
    except ValueError as err:
        raise ModelError(str(err)) from None
    _check_fits(name, transformer, codebook, config, "the released models need the study's 10 s clips: use --config "
                "config/config.yaml")
    return _sound_model(name, transformer, codebook, config, vocoder_file, device)


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
