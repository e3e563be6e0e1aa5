"""Config loading and validation, paths, and the input functions every stage uses.

Jobs import the workflow's package `i2a` (src/i2a) as an installed package: `uv sync` installs it into .venv,
and the conda environments install it after they are made (workflow/envs/*.post-deploy.sh).
"""

import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from i2a.config import ConfigError, validate_config
from i2a.features.registry import BACKBONES, WEIGHTS_FILES, weights_file
from i2a.models.released import RELEASED, released
from i2a.runspec import RunSpec

min_version("9.0")


configfile: "config/config.yaml"


try:
    validate_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as error:
    raise WorkflowError(str(error)) from None

R = config["results"]
LOGS = config["logs"]
SPLITS = ["train", "valid"]
RUNS = {run["name"]: run for run in config["runs"]}
RUN_SPECS = {name: RunSpec.from_config(config, run) for name, run in RUNS.items()}
CPU_ENV = "../envs/data.yaml"
TORCH_ENV = "../envs/torch.yaml"
GPU = 1 if config["gpu"] else 0
THREADS = config["threads"]


wildcard_constraints:
    split="train|valid",
    shard=r"\d{3}",
    run="|".join(RUNS),
    backbone="|".join(BACKBONES),


def by_attempt(amount):
    """A runtime or memory request that grows when SLURM killed the previous attempt for exceeding it."""
    return lambda wildcards, attempt: amount * attempt


def shard_ids(split):
    return [f"{k:03d}" for k in range(config["shards"][split])]


def shard_paths(pattern, split, **kw):
    return expand(pattern, split=split, shard=shard_ids(split), allow_missing=True, **kw)


# ---------------------------------------------------------------- data
def raw_videos():
    """Folder of <class>/<clip>.mp4 the data stage starts from."""
    if config["dataset"] == "synthetic":
        return f"{R}/raw"
    if config["vas"]["source"] == "local":
        return config["vas"]["local_dir"]
    return "resources/vas/raw"


def data_params():
    """Everything that changes a preprocessed clip (not the model's crop, not the frame rate features use)."""
    audio = {k: v for k, v in config["audio"].items() if k != "crop_frames"}
    return {"dataset": config["dataset"], "audio": audio}


def data_shards(split):
    return shard_paths(f"{R}/data/{{split}}/shard{{shard}}", split)


# ---------------------------------------------------------------- features
def backbone_settings(backbone):
    return config["backbones"][backbone]


def used_backbones():
    return sorted({run["features"] for run in RUNS.values() if run["features"] != "none"})


def weight_file(backbone):
    """The weights file a backbone needs, or None (random init)."""
    return weights_file(backbone, backbone_settings(backbone)["weights"], cache_dir="resources/weights")


def feature_files(backbone, split):
    return shard_paths(f"{R}/features/{{backbone}}/{{split}}/shard{{shard}}.npy", split, backbone=backbone)


# ---------------------------------------------------------------- checkpoints
def released_checkpoint(name):
    return released(name).local_path


def component_checkpoint(section, trained_path, released_name):
    """A local path from the config, the released checkpoint, or the one trained in this workflow."""
    cfg = config[section]
    if cfg.get("path"):
        return cfg["path"]
    return trained_path if cfg["source"] == "train" else released_checkpoint(released_name)


def codebook_checkpoint():
    return component_checkpoint("codebook", f"{R}/codebook/codebook.ckpt", "vas_codebook")


def melgan_checkpoint():
    return component_checkpoint("vocoder", f"{R}/vocoder/melgan.ckpt", "melgan")


def melception_checkpoint():
    return component_checkpoint("melception", f"{R}/eval/melception.ckpt", "melception")


def melception_stats():
    """The released Melception's per-mel-bin mean/std (fetched with it); a trained one keeps its own."""
    cfg = config["melception"]
    if cfg["stats"]:
        return [cfg["stats"]]
    if cfg["source"] == "released" or cfg["path"]:
        return [released_checkpoint("melception_stats")]
    return []


def token_files(split):
    return shard_paths(f"{R}/codebook/tokens/{{split}}/shard{{shard}}.npy", split)


# ---------------------------------------------------------------- runs
def transformer_checkpoint(wildcards):
    spec = RUN_SPECS[wildcards.run]
    if spec.source == "released":
        return released_checkpoint(spec.released)
    return f"{R}/runs/{wildcards.run}/best.ckpt"


def run_features(split):
    """Input function: the run's feature shards of a split (nothing for the no-feats baseline)."""

    def inputs(wildcards):
        backbone = RUN_SPECS[wildcards.run].features
        return [] if backbone == "none" else feature_files(backbone, split)

    return inputs


def gpu_runtime_minutes(spec):
    """SLURM time request for a training job: the full-size model on VAS, scaled by epochs."""
    return 60 + 20 * spec.train.max_epochs


# ---------------------------------------------------------------- input functions of single rules
def feature_weights(wildcards):
    path = weight_file(wildcards.backbone)
    return [] if path is None else [path]


def vocoder_input(wildcards):
    return [melgan_checkpoint()] if config["vocoder"]["kind"] == "melgan" else []


def table_inputs(wildcards):
    inputs = {"scores": expand(f"{R}/runs/{{run}}/scores.json", run=RUNS)}
    inputs["training"] = [f"{R}/runs/{name}/train.json" for name, spec in RUN_SPECS.items() if spec.source == "train"]
    return inputs
