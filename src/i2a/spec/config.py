"""The workflow's config: schema validation with defaults, and errors a researcher can act on.

The JSON schema (workflow/schemas/config.schema.yaml) does the type, range and enum checks and fills in the
defaults; the allowed backbones and released models are not written in it but taken from the registries
(`i2a.spec.backbones`, `i2a.spec.released`), so a new backbone is one registry entry. Every error is one
line naming the key, the bad value and what is allowed; `check_config_semantics` adds the checks a schema cannot
express. Torch-free: this runs on every `snakemake` invocation, the dry runs included.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import yaml

from i2a import SOURCE_CHECKOUT
from i2a.spec.backbones import BACKBONES, FEATURE_CHOICES, resolve_weights, weights_file
from i2a.spec.frames import check_sample_size
from i2a.spec.released import RELEASED, TRANSFORMERS, VOCODERS, released
from i2a.spec.runspec import (RESERVED_RUN_NAMES, GPTConfig, RunSpec, SamplingSettings, TrainSettings,
                              codebook_downsampling, codebook_size)


class ConfigError(ValueError):
    pass


# the lowest sampling temperature: below it the logits / temperature overflow and one code is sampled every time
MIN_TEMPERATURE = 1e-3
SEED_LIMIT = 2 ** 32  # seeds are whole numbers in [0, 2**32): numpy's and Lightning's range (the schema's $defs/seed)


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
    if validator == "type" and isinstance(error.instance, str) and "number" in str(error.validator_value):
        return (f"config key {where}: {error.instance!r} is text, not a number (YAML reads 2e-4 as text: write "
                "2.0e-4)")
    return f"config key {where}: {error.message}"


def load_schema(path: str | Path) -> dict[str, Any]:
    """The schema file with the registries' names filled in where it says which backbones and released models
    exist."""
    schema = yaml.safe_load(Path(path).read_text())
    defs = schema["$defs"]
    defs["run"]["properties"]["features"]["enum"] = list(FEATURE_CHOICES)
    defs["run"]["properties"]["released"]["enum"] = list(TRANSFORMERS)
    schema["properties"]["vocoder"]["properties"]["released"]["enum"] = list(VOCODERS)
    schema["properties"]["backbones"]["properties"] = {
        name: {"$ref": "#/$defs/backbone", "default": {}} for name in BACKBONES}
    schema["properties"]["checkpoints"]["propertyNames"] = {"enum": list(RELEASED)}
    schema["properties"]["sampling"]["properties"]["temperature"]["minimum"] = MIN_TEMPERATURE
    defs["seed"]["maximum"] = SEED_LIMIT - 1
    # one default per setting, the typed description's: a run's keys from RunSpec, GPTConfig and TrainSettings,
    # the sampler's from SamplingSettings (the schema names none of them)
    run = defs["run"]["properties"]
    for cls in (RunSpec, GPTConfig, TrainSettings):
        for setting in dataclasses.fields(cls):
            if setting.name in run and setting.default not in (dataclasses.MISSING, None):  # released: no default
                run[setting.name]["default"] = setting.default
    sampling = schema["properties"]["sampling"]["properties"]
    for setting in dataclasses.fields(SamplingSettings):
        sampling[setting.name]["default"] = setting.default
    return schema


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _validator(schema: dict[str, Any]):
    """Draft 2020-12 with defaults filled in (as snakemake's validate) and numbers that YAML read as text
    (`2e-4`: YAML 1.1 wants a dot) taken as the numbers they spell."""
    from jsonschema import Draft202012Validator, validators

    base_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties(validator, props, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in props.items():
                if "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
                types = prop.get("type", [])
                types = [types] if isinstance(types, str) else types
                value = instance.get(name)
                if "number" in types and isinstance(value, str) and _NUMBER.match(value.strip()):
                    instance[name] = float(value)
        yield from base_properties(validator, props, instance, subschema)

    return validators.extend(Draft202012Validator, {"properties": properties})(schema)


def validate_config(config: dict[str, Any], schema_path: str | Path) -> dict[str, Any]:
    """Fill in defaults and check `config` in place; raises ConfigError with one line naming the first bad key."""
    import jsonschema

    validator = _validator(load_schema(schema_path))
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError("invalid config: " + describe(jsonschema.exceptions.best_match(errors)))
    for path, value in _numbers(config):
        if not math.isfinite(value):  # NaN passes every range check (it compares false)
            raise ConfigError(f"invalid config: config key {key_path(path)}: {value} is not a finite number")
    try:
        check_config_semantics(config)
    except ConfigError as error:
        raise ConfigError(f"invalid config: {error}") from None
    return config


def _numbers(value, path=()):
    """(key path, number) of every float in a config."""
    if isinstance(value, float):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _numbers(item, (*path, index))


def _looks_like_weights(path: Path) -> str | None:
    """None when the file is a torch checkpoint (a zip archive, or a legacy pickle) or safetensors; else why not.
    Read from the first bytes, without torch."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04") or head[:2] == b"\x80\x02":
        return None
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        return None
    return "it is not a checkpoint (neither a torch.save archive nor a safetensors file)"


def _check_weights(where: str, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config key {where}: the file {path} does not exist")
    problem = _looks_like_weights(path)
    if problem:
        raise ConfigError(f"config key {where}: {path}: {problem}")


def check_config_semantics(config: dict[str, Any]) -> None:
    """Cross-key checks the schema cannot express; raises ConfigError naming the key."""
    for key in ("results", "logs"):
        folder = config[key]
        if not folder.strip() or Path(folder).resolve() == Path(folder).resolve().parent:
            raise ConfigError(f"config key {key}: {folder!r} is empty or the filesystem root, where the workflow's "
                              f"files would go ({key}/table.csv would be /table.csv); name a folder")
    names = [run["name"] for run in config["runs"]]
    for i, name in enumerate(names):
        if name in RESERVED_RUN_NAMES:
            raise ConfigError(f"config key runs[{i}].name: {name!r} is the name of the table's codebook ceiling row; "
                              f"name the run otherwise (reserved: {', '.join(RESERVED_RUN_NAMES)})")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"config key runs: run names must be unique; repeated: {', '.join(dupes)}")
    audio, video = config["audio"], config["video"]
    if config["codebook"]["member"] is not None:
        try:
            released(COMPONENTS["codebook"][2]).member_path(config["codebook"]["member"])
        except ValueError as error:
            raise ConfigError(f"config key codebook.member: {error}") from None
    if config["codebook"]["source"] == "released" and not config["codebook"]["path"]:
        from i2a.spec.released import VAS_CODES

        if config["codebook"]["model"]["n_embed"] != VAS_CODES:  # the runs' vocabulary is read from this key
            raise ConfigError(f"config key codebook.model.n_embed: {config['codebook']['model']['n_embed']}, but the "
                              f"released VAS codebook (codebook.source: released) has {VAS_CODES} codes")
    if audio["crop_frames"] > audio["keep_frames"]:
        raise ConfigError(f"config key audio.crop_frames: {audio['crop_frames']} > audio.keep_frames {audio['keep_frames']}")
    if audio["fmax"] > audio["sample_rate"] / 2:
        raise ConfigError(f"config key audio.fmax: {audio['fmax']} Hz is above the Nyquist frequency of "
                          f"audio.sample_rate {audio['sample_rate']} Hz")
    if audio["n_mels"] % codebook_downsampling(config):
        raise ConfigError(f"config key audio.n_mels: {audio['n_mels']} is not a multiple of the codebook's "
                          f"downsampling {codebook_downsampling(config)}")
    if video["feat_crop"] > video["feat_frames"]:
        raise ConfigError(f"config key video.feat_crop: {video['feat_crop']} > video.feat_frames {video['feat_frames']}")
    if config["dataset"] == "vas" and config["vas"]["source"] == "local":
        local_dir = config["vas"]["local_dir"]
        if not local_dir:
            raise ConfigError("config key vas.local_dir: required when vas.source is local (a folder of <class>/<clip>.mp4)")
        if not Path(local_dir).is_dir():
            raise ConfigError(f"config key vas.local_dir: {local_dir} is not a folder (expected <class>/<clip>.mp4 "
                              "inside; or set vas.source: download)")
    if config["dataset"] == "synthetic":
        synthetic = config["synthetic"]
        per_split = {"train": synthetic["classes"] * (synthetic["clips_per_class"] - synthetic["valid_per_class"]),
                     "valid": synthetic["classes"] * synthetic["valid_per_class"]}
        for split, clips in per_split.items():
            if config["shards"][split] > clips:
                raise ConfigError(f"config key shards.{split}: {config['shards'][split]} shards for {clips} {split} "
                                  "clips would leave shards empty; use at most one shard per clip")
    for name, settings in config["backbones"].items():
        try:
            weights = resolve_weights(name, settings["weights"])
        except ValueError as error:
            raise ConfigError(f"config key backbones.{name}.weights: {error}") from None
        if weights not in ("none", *BACKBONES[name].weights):  # a path: it must exist and be a checkpoint
            _check_weights(f"backbones.{name}.weights", weights_file(name, weights))
        size, patch = settings["image_size"], BACKBONES[name].patch
        if size is not None and patch and size % patch:
            raise ConfigError(f"config key backbones.{name}.image_size: {size} is not a multiple of the model's "
                              f"{patch}-pixel patches")
    check_sampling_values(config["sampling"], n_codes=codebook_size(config))
    for section in ("codebook", "vocoder", "melception"):
        if config[section].get("path"):
            _check_weights(f"{section}.path", config[section]["path"])
    for i, run in enumerate(config["runs"]):
        where = f"runs[{i}] ({run['name']})"
        if run["embed"] % run["heads"]:
            raise ConfigError(f"config key {where}.embed: {run['embed']} is not divisible by heads={run['heads']}")
        try:
            check_sample_size(run["feat_sample_size"], video["feat_crop"])
        except ValueError as err:
            raise ConfigError(f"config key {where}.feat_sample_size: {err}") from None
        if run["features"] == "none" and run["feature_norm"] != "raw":
            raise ConfigError(f"config key {where}.feature_norm: the no-feats baseline's random features have no "
                              "statistics to standardise with; use raw")
        if run["features"] == "none" and run["feat_sample_size"] != 1:
            raise ConfigError(f"config key {where}.feat_sample_size: the no-feats baseline takes S = 1 (random "
                              f"features), not {run['feat_sample_size']}")
        if run["source"] == "released":
            check_released_run(config, run, where)
        if run["base_lr"] == "auto" and not run["lr_find"]:
            raise ConfigError(f"config key {where}.base_lr: auto takes the LR finder's suggestion; set lr_find: true "
                              "on the run (or give a number)")
    check_authors_inputs(config)
    baseline = config["baseline"]
    if baseline is not None and baseline not in names:
        raise ConfigError(f"config key baseline: {baseline!r} is not a run; runs: {', '.join(names)}")
    melception = config["melception"]
    if (melception["source"] == "released" or melception["path"]) and not melception["stats"] \
            and "melception_stats" not in RELEASED:
        raise ConfigError("config key melception.stats: the released Melception needs its per-mel-bin statistics")




def _sampling_key(key: str) -> str:
    return f"config key sampling.{key}"


def check_sampling_values(values: dict[str, Any], n_codes: int | None = None, label=_sampling_key) -> None:
    """The sampler's temperature, top_k and seed, wherever they come from (the config's `sampling:`, `i2a
    generate`'s options): one check, so the CLI refuses what the config refuses. NaN passes every range check of
    the schema, hence the explicit finite test. `label(key)` names the value in the error."""
    import math
    import numbers

    temperature = values.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature):
            raise ConfigError(f"{label('temperature')}: {temperature!r} is not a finite number")
        if temperature < MIN_TEMPERATURE:
            raise ConfigError(f"{label('temperature')}: {temperature!r} is below {MIN_TEMPERATURE} (the logits "
                              "would underflow to one code); for the most likely codes use top_k: 1")
    top_k = values.get("top_k")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
            raise ConfigError(f"{label('top_k')}: {top_k!r} is not a whole number >= 1")
        if n_codes is not None and top_k > n_codes:
            raise ConfigError(f"{label('top_k')}: {top_k} is larger than the codebook ({n_codes} codes)")
    seed = values.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or not 0 <= seed < SEED_LIMIT):
        raise ConfigError(f"{label('seed')}: {seed!r} is not a whole number from 0 to {SEED_LIMIT - 1}")


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's `--configfile` merge: dicts key by key, anything else (the runs list) replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = merge_config(base[key], value)
        else:
            merged[key] = value
    return merged


# a component the workflow trains or fetches: its config section, where training writes it (under the results
# folder) and its released name (the section's `released` key may name another of the same kind)
COMPONENTS = {"codebook": ("codebook", "codebook/codebook.ckpt", "vas_codebook"),
              "melgan": ("vocoder", "vocoder/melgan.ckpt", "melgan"),
              "melception": ("melception", "eval/melception.ckpt", "melception")}


def component_checkpoint(config: dict[str, Any], component: str) -> str:
    """The file a component is read from: the config's `path`, the one trained in this workflow, or the released
    one (the section's `released` file, and of an archive of several checkpoints its `member`)."""
    section, trained, released_name = COMPONENTS[component]
    settings = config[section]
    if settings.get("path"):
        return str(settings["path"])
    if settings["source"] == "train":
        return f"{config['results']}/{trained}"
    return released(settings.get("released") or released_name).member_path(settings.get("member"))


def baseline_run(config: dict[str, Any]) -> str | None:
    """The run every row is compared with: `baseline:`, else the only run without features (None if not one)."""
    if config["baseline"] is not None:
        return config["baseline"]
    featureless = [run["name"] for run in config["runs"] if run["features"] == "none"]
    return featureless[0] if len(featureless) == 1 else None


def check_authors_inputs(config: dict[str, Any]) -> None:
    """`vas.source: authors` brings the authors' mels and ResNet50 features, no sounds: nothing may need the clips'
    wav files. A run on another backbone has its features extracted here from the VAS videos (vas.local_dir, else
    RegNet's VAS.zip), clip for clip the authors' mels."""
    if config["dataset"] != "vas" or config["vas"]["source"] != "authors":
        return
    local_dir = config["vas"]["local_dir"]
    if local_dir and not Path(local_dir).is_dir():
        raise ConfigError(f"config key vas.local_dir: {local_dir} is not a folder (with vas.source authors: the VAS "
                          "videos as <class>/<clip>.mp4, for the backbones the authors published no features of; "
                          "or null to download RegNet's VAS.zip)")
    vocoder = config["vocoder"]
    if vocoder["kind"] == "melgan" and vocoder["source"] == "train" and not vocoder["path"]:
        raise ConfigError("config key vocoder.source: training a MelGAN needs the clips' sounds, which vas.source "
                          "authors does not have; use the released MelGAN (vocoder.source: released)")


def check_released_run(config: dict[str, Any], run: dict[str, Any], where: str) -> None:
    """A run that evaluates a released transformer must describe it as it was trained (design.md §10)."""
    name = run.get("released")
    if name is None:
        raise ConfigError(f"config key {where}.released: required with source released; allowed values: "
                          f"{', '.join(TRANSFORMERS)}")
    model = released(name)
    # what the fetched checkpoint says it is (fetch_checkpoint checked it against the registry), else the registry
    expected = model.shape()
    differences = [f"{key}: the run says {run[key]}, the checkpoint has {value}" for key, value in expected.items()
                   if run[key] != value]
    if differences:
        raise ConfigError(f"config key {where}: the released transformer {name} does not match the run: "
                          + "; ".join(differences))
    if config["codebook"]["source"] != "released" and not config["codebook"]["path"]:
        raise ConfigError(f"config key codebook.source: a released transformer ({where}) needs the released VAS "
                          "codebook (codebook.source: released)")


SCHEMA = Path("workflow/schemas/config.schema.yaml")


def read_merged(path: str | Path) -> dict[str, Any]:
    """A config file merged over the config.yaml beside it, as `snakemake --configfile` merges it over
    config/config.yaml, as read (no validation, no defaults)."""
    path = Path(path)
    config = yaml.safe_load(path.read_text()) or {}
    base = path.resolve().with_name("config.yaml")
    if base != path.resolve() and base.is_file():
        config = merge_config(yaml.safe_load(base.read_text()) or {}, config)
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    """The config the workflow runs with: `path` merged over the config.yaml beside it, validated, defaults in.
    The schema is the workflow's in the current folder, else the one beside this package's source."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: give the one the models were made with, e.g. "
                          "--config config/demo.yaml")
    schema = next((p for p in (SCHEMA, SOURCE_CHECKOUT / SCHEMA) if p.is_file()), None)
    if schema is None:
        raise ConfigError(f"{SCHEMA} not found: run this in the workflow's folder (where config/ and workflow/ are)")
    try:
        return validate_config(read_merged(path), schema)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
