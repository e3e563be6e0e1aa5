"""Config loading and validation, paths, and the input functions every stage uses."""

import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

# Jobs (scripts, and the same Snakefile re-read on cluster nodes) import the project's package from src/.
_SRC = str(Path(workflow.basedir) / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
if _SRC not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p))


configfile: "config/config.yaml"


from i2a.configcheck import ConfigError, check_config_semantics, explain_validation_error

try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as error:
    raise WorkflowError(explain_validation_error(error)) from None
try:
    check_config_semantics(config)
except ConfigError as error:
    raise WorkflowError(f"invalid config: {error}") from None

R = config["results"]
LOGS = config["logs"]
SPLITS = ["train", "valid"]
RUNS = {run["name"]: run for run in config["runs"]}
CPU_ENV = "../envs/data.yaml"
TORCH_ENV = "../envs/torch.yaml"
GPU = 1 if config["gpu"] else 0
THREADS = config["threads"]


wildcard_constraints:
    split="train|valid",
    shard=r"\d{3}",
    run="|".join(RUNS),
    backbone="resnet18|resnet50|efficientnet_v2_s|efficientnet_v2_m|efficientnet_v2_l|clip_vit_b32",


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
    from i2a.weights import weights_file_for

    settings = backbone_settings(backbone)
    return weights_file_for(backbone, settings["weights"], cache_dir="resources/weights")


def feature_files(backbone, split):
    return shard_paths(f"{R}/features/{{backbone}}/{{split}}/shard{{shard}}.npy", split, backbone=backbone)


# ---------------------------------------------------------------- checkpoints
def released_checkpoint(name):
    return f"resources/checkpoints/{name}.ckpt"


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
        return ["resources/checkpoints/melception_stats.txt"]
    return []


def token_files(split):
    return shard_paths(f"{R}/codebook/tokens/{{split}}/shard{{shard}}.npy", split)


# ---------------------------------------------------------------- runs
def run_hparams(run):
    """The run's hyperparameters: the params of its jobs, so editing one run reruns only that run."""
    return {k: v for k, v in RUNS[run].items() if k != "name"}


def transformer_checkpoint(wildcards):
    run = RUNS[wildcards.run]
    if run["source"] == "released":
        return released_checkpoint(run["released"])
    return f"{R}/runs/{wildcards.run}/best.ckpt"


def run_features(split):
    """Input function: the run's feature shards of a split (nothing for the no-feats baseline)."""

    def inputs(wildcards):
        backbone = RUNS[wildcards.run]["features"]
        return [] if backbone == "none" else feature_files(backbone, split)

    return inputs


def gpu_runtime_minutes(run):
    """SLURM time request for a training job: the full-size model on VAS, scaled by epochs."""
    return 60 + 20 * run["max_epochs"]


# ---------------------------------------------------------------- input functions of single rules
def feature_weights(wildcards):
    path = weight_file(wildcards.backbone)
    return [] if path is None else [path]


def vocoder_input(wildcards):
    return [melgan_checkpoint()] if config["vocoder"]["kind"] == "melgan" else []


def table_inputs(wildcards):
    inputs = {"scores": expand(f"{R}/runs/{{run}}/scores.json", run=RUNS)}
    inputs["training"] = [f"{R}/runs/{run}/train.json" for run, cfg in RUNS.items() if cfg["source"] == "train"]
    return inputs
