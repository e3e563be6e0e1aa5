"""Config errors a researcher can act on: the key, the bad value, the allowed values.

The JSON schema (workflow/schemas/config.schema.yaml) does the type/range/enum checks and fills defaults; this
module turns its errors into one readable line and adds the checks a schema cannot express.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    pass


def key_path(path) -> str:
    """('runs', 2, 'dropout') -> 'runs[2].dropout'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def describe(error) -> str:
    """One line for a jsonschema ValidationError."""
    validator, where = error.validator, key_path(error.absolute_path)
    if validator == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)
        return f"config key {where}: {error.instance!r} is not allowed; allowed values: {allowed}"
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"config key {where}: missing required key '{missing}'"
    if validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"config key {where}: {error.message}; allowed keys: {allowed}"
    if validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
        return f"config key {where}: {error.instance!r} violates {validator} {error.validator_value}"
    return f"config key {where}: {error.message}"


def explain_validation_error(error: Exception) -> str:
    """Message for Snakemake's validate() failure, naming the key and the allowed values."""
    import jsonschema

    inner, seen = error, 0
    while inner is not None and not isinstance(inner, jsonschema.ValidationError) and seen < 5:
        inner = next((a for a in getattr(inner, "args", ()) if isinstance(a, jsonschema.ValidationError)),
                     inner.__cause__ or inner.__context__)
        seen += 1
    if not isinstance(inner, jsonschema.ValidationError):
        return f"invalid config: {error}"
    # the most specific error inside anyOf/oneOf branches
    best = jsonschema.exceptions.best_match([inner])
    return "invalid config: " + describe(best)


RELEASED_TRANSFORMERS = {  # released VAS transformers (SPEC section 10): features and S they were trained with
    "resnet50_1feat": ("resnet50", 1),
    "resnet50_5feat": ("resnet50", 5),
    "resnet50_212feat": ("resnet50", 212),
    "no_feats": ("none", 1),
}


def check_config_semantics(config: dict[str, Any]) -> None:
    """Cross-key checks the schema cannot express; raises ConfigError naming the key."""
    names = [run["name"] for run in config["runs"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"config key runs: run names must be unique; repeated: {', '.join(dupes)}")
    audio, video = config["audio"], config["video"]
    if audio["crop_frames"] > audio["keep_frames"]:
        raise ConfigError(f"config key audio.crop_frames: {audio['crop_frames']} > audio.keep_frames {audio['keep_frames']}")
    if video["feat_crop"] > video["feat_frames"]:
        raise ConfigError(f"config key video.feat_crop: {video['feat_crop']} > video.feat_frames {video['feat_frames']}")
    if config["dataset"] == "vas" and config["vas"]["source"] == "local":
        local_dir = config["vas"]["local_dir"]
        if not local_dir:
            raise ConfigError("config key vas.local_dir: required when vas.source is local (a folder of <class>/<clip>.mp4)")
        if not Path(local_dir).is_dir():
            raise ConfigError(f"config key vas.local_dir: {local_dir} is not a folder (expected <class>/<clip>.mp4 "
                              "inside; or set vas.source: download)")
    for i, run in enumerate(config["runs"]):
        where = f"runs[{i}] ({run['name']})"
        if run["embed"] % run["heads"]:
            raise ConfigError(f"config key {where}.embed: {run['embed']} is not divisible by heads={run['heads']}")
        if run["feat_sample_size"] > video["feat_crop"]:
            raise ConfigError(
                f"config key {where}.feat_sample_size: {run['feat_sample_size']} > video.feat_crop {video['feat_crop']}")
        if run["source"] == "released":
            released = run.get("released")
            if released is None:
                allowed = ", ".join(RELEASED_TRANSFORMERS)
                raise ConfigError(f"config key {where}.released: required with source released; allowed values: {allowed}")
            features, size = RELEASED_TRANSFORMERS[released]
            if (run["features"], run["feat_sample_size"]) != (features, size):
                raise ConfigError(
                    f"config key {where}: the released transformer {released} was trained on features={features} "
                    f"with feat_sample_size={size}; the run says {run['features']} and {run['feat_sample_size']}")
            if config["codebook"]["source"] != "released" and not config["codebook"]["path"]:
                raise ConfigError(f"config key codebook.source: a released transformer ({where}) needs the released "
                                  "VAS codebook (codebook.source: released)")
            if released not in config["checkpoints"]:
                raise ConfigError(f"config key checkpoints.{released}: missing (url and md5 of the released model)")
    melception = config["melception"]
    if (melception["source"] == "released" or melception["path"]) and not melception["stats"] \
            and "melception_stats" not in config["checkpoints"]:
        raise ConfigError("config key melception.stats: the released Melception needs its per-mel-bin statistics; "
                          "set it to a train_means_stds_melspec_10s_22050hz.txt or add checkpoints.melception_stats")
    for section, name in (("codebook", "vas_codebook"), ("vocoder", "melgan"), ("melception", "melception")):
        cfg = config[section]
        if cfg["source"] == "released" and not cfg.get("path") and name not in config["checkpoints"]:
            raise ConfigError(f"config key checkpoints.{name}: missing, needed by {section}.source: released")
