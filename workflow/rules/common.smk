"""Config loading and validation, paths, and the input functions every stage uses.

Jobs import the workflow's package `i2a` (src/i2a) as an installed package: `uv sync` installs it into .venv,
and the conda environments install it after they are made (workflow/envs/*.post-deploy.sh).
"""

import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError

from i2a.infra.checksum import listing_digest
from i2a.spec.config import ConfigError, baseline_run, component_checkpoint, validate_config
from i2a.pipeline.lock import AnotherRunError, guard
from i2a.data import authors
from i2a.spec.backbones import BACKBONES, WEIGHTS_FILES, weights_file
from i2a.spec.released import RELEASED, released
from i2a.spec.runspec import CEILING_ROW, CONTROL_SUFFIX, RunSpec
from i2a.pipeline import sizing

try:
    validate_config(config, Path(workflow.basedir) / "schemas/config.schema.yaml")
except ConfigError as error:
    raise WorkflowError(str(error)) from None

# one executing instance per folder: a second one would delete the first one's locks when it ends (i2a.pipeline.lock)
if workflow.is_main_process:
    try:
        guard()
    except AnotherRunError as error:
        raise WorkflowError(str(error)) from None

R = config["results"]
LOGS = config["logs"]
SPLITS = ["train", "valid"]
RUNS = {run["name"]: run for run in config["runs"]}
RUN_SPECS = {name: RunSpec.from_config(config, run) for name, run in RUNS.items()}
TRAINED_RUNS = [name for name, spec in RUN_SPECS.items() if spec.source == "train"]
BASELINE = baseline_run(config)
# every row of the table and the folder its samples are in: the runs, their shuffled-features controls, and the
# codebook's reconstructions of the real clips (the ceiling)
CONDITIONED = [name for name, spec in RUN_SPECS.items() if spec.features != "none"]
CONTROLLED = CONDITIONED if config["controls"]["shuffled"] else []
ROWS = {name: f"runs/{name}/samples" for name in RUNS}
ROWS |= {f"{name}{CONTROL_SUFFIX}": f"runs/{name}/shuffled" for name in CONTROLLED}
ROWS[CEILING_ROW] = "reconstruction/samples"
ROW_OF = {folder: name for name, folder in ROWS.items()}
# the conditioned runs compared paired with the best of them (lowest MKL), when there are two or more
COMPARED_WITH_BEST = CONDITIONED if len(CONDITIONED) > 1 else []
# the sampling precision control: each conditioned run also sampled in the other precision (bf16, or fp32 when
# sampling is bf16), scored, and compared paired with its own samples (not a row of the table: a comparison)
SAMPLING_PRECISION = config["sampling"]["precision"]
OTHER_PRECISION = "fp32" if SAMPLING_PRECISION == "bf16" else "bf16"
PRECISION_CONTROLLED = CONDITIONED if config["controls"]["precision"] else []
PRECISION_SETS = {f"{name}+{OTHER_PRECISION}": f"runs/{name}/{OTHER_PRECISION}" for name in PRECISION_CONTROLLED}
CPU_ENV = "../envs/data.yaml"
TORCH_ENV = "../envs/torch.yaml"
GPU = 1 if config["gpu"] else 0
THREADS = config["threads"]


wildcard_constraints:
    split="train|valid",
    shard=r"\d{3}",
    run="|".join(RUNS),
    backbone="|".join(BACKBONES),
    sampleset="|".join(re.escape(folder) for folder in [*ROWS.values(), *PRECISION_SETS.values()]),


def by_attempt(amount):
    """A runtime or memory request that grows when SLURM killed the previous attempt for exceeding it."""
    return lambda wildcards, attempt: amount * attempt


def fixed_runtime(minutes):
    """The time limit of rules the calibration does not size (their own minutes x attempt), at most max_runtime
    (a longer job could never start on a partition with that limit)."""
    cap = int(config["cluster"]["max_runtime_hours"] * 60)
    return lambda wildcards, attempt: min(minutes * attempt, cap)


def shard_ids(split):
    return [f"{k:03d}" for k in range(config["shards"][split])]


def shard_paths(pattern, split, **kw):
    return expand(pattern, split=split, shard=shard_ids(split), allow_missing=True, **kw)


# ---------------------------------------------------------------- data
def local_videos():
    """The VAS folder of <class>/<clip>.mp4 the config names (vas.local_dir: the clips of vas.source local, the
    videos of vas.source authors), or None: RegNet's VAS.zip is downloaded."""
    vas = config["vas"]
    if config["dataset"] == "vas" and vas["source"] in ("local", "authors") and vas["local_dir"]:
        return vas["local_dir"]
    return None


def raw_videos():
    """Folder of <class>/<clip>.mp4 the data stage starts from (with the authors' inputs: where the videos of the
    backbones they published no features of come from)."""
    if config["dataset"] == "synthetic":
        return f"{R}/raw"
    return local_videos() or "resources/vas/raw"


def raw_listing():
    """For a local VAS folder: a digest of every file's name, size and mtime under it, so that a clip added,
    removed or replaced re-lists the clips (Snakemake itself sees only the top folder's mtime)."""
    return listing_digest(local_videos()) if local_videos() else ""


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


def probe_files():
    return [f"{R}/features/{backbone}/probe.json" for backbone in used_backbones()]


def feature_files(backbone, split):
    return shard_paths(f"{R}/features/{{backbone}}/{{split}}/shard{{shard}}.npy", split, backbone=backbone)


def feature_index_files(backbone, split):
    return shard_paths(f"{R}/features/{{backbone}}/{{split}}/shard{{shard}}.tsv", split, backbone=backbone)


# ---------------------------------------------------------------- checkpoints
# the checkpoints a released archive holds besides its own (fetched as resources/checkpoints/<name>.<member>)
ARCHIVE_MEMBERS = sorted({re.escape(m) for f in RELEASED.values() for m in f.members})


def released_checkpoint(name):
    return released(name).local_path


def codebook_checkpoint():
    return component_checkpoint(config, "codebook")


def trained_codebook():
    """Whether the codebook is trained here (not a released or given file): the report then shows its curves."""
    return codebook_checkpoint() == f"{R}/codebook/codebook.ckpt"


def melgan_checkpoint():
    return component_checkpoint(config, "melgan")


def melception_checkpoint():
    return component_checkpoint(config, "melception")


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


def run_feature_stats(wildcards):
    """The training split's feature statistics, for a run that standardises its features."""
    spec = RUN_SPECS[wildcards.run]
    return [f"{R}/features/{spec.features}/stats.npz"] if spec.feature_norm == "standard" else []


# ---------------------------------------------------------------- what jobs ask SLURM for (i2a.pipeline.sizing, docs/cluster.md)
CLUSTER = config["cluster"]
try:
    sizing.load_calibration(CLUSTER["calibration"])
except sizing.CalibrationError as error:
    raise WorkflowError(f"config key cluster.calibration: {error}") from None


def run_spec(wildcards):
    return RUN_SPECS[wildcards.run]


def calibrated_runtime(rule, fallback_min, spec_of=None):
    """A rule's time limit (minutes) from the calibration: expected x margin + start-up, at most max_runtime;
    `fallback_min` where the calibration has no figure for its work. `i2a plan` shows the same numbers."""
    return sizing.runtime(rule, config, fallback_min, spec_of, THREADS)


def uncalibrated_training_minutes(spec):
    """A training job's limit without a training figure in the calibration: the full-size model on VAS."""
    return 60 + 20 * spec.train.max_epochs


def training_cpus(spec):
    """CPUs of a training job: cpus_per_gpu per GPU (one process and its loader workers each) on a GPU node."""
    return spec.train.gpus * CLUSTER["cpus_per_gpu"] if GPU else THREADS


def training_runtime(wildcards, attempt):
    spec = RUN_SPECS[wildcards.run]
    return sizing.runtime(
        "train_gpt", config, uncalibrated_training_minutes(spec), lambda w: spec, training_cpus(spec)
    )(wildcards, attempt)


def training_segments(run):
    spec = RUN_SPECS[run]
    time = sizing.job_minutes(
        "train_gpt", config, {"run": run}, spec, training_cpus(spec), uncalibrated_training_minutes(spec)
    )
    return sizing.segments_needed(time, CLUSTER)


def uses_cluster_names():
    """Whether this run went through the SLURM profile (its set-resources read the I2A_SLURM_* variables)."""
    for resources in workflow.resource_settings.overwrite_resources.values():
        values = resources.values() if hasattr(resources, "values") else []
        if any("I2A_SLURM" in str(getattr(value, "raw", value)) for value in values):
            return True
    return False


# through the SLURM profile (a dry run included), say which cluster names are still the profile's defaults
if workflow.is_main_process and uses_cluster_names():
    from snakemake.logging import logger
    from i2a.pipeline.plan import PROFILE_VARIABLES

    for name, meaning in PROFILE_VARIABLES.items():
        if not os.environ.get(name):
            logger.warning(f"SLURM profile: {name} is not set: {meaning} (profiles/slurm/README.md)")

# a run longer than max_runtime trains in segments: one retry per segment, and one for a failure
TRAIN_SEGMENTS = max([training_segments(run) for run in TRAINED_RUNS], default=1)
TRAIN_RETRIES = TRAIN_SEGMENTS if TRAIN_SEGMENTS > 1 else None


# ---------------------------------------------------------------- input functions of single rules
def feature_weights(wildcards):
    path = weight_file(wildcards.backbone)
    return [] if path is None else [path]


def vocoder_input(wildcards):
    return [melgan_checkpoint()] if config["vocoder"]["kind"] == "melgan" else []


def sampled_spec(wildcards):
    """The run's settings as its sample set `kind` is sampled: the precision control in the other precision."""
    spec = RUN_SPECS[wildcards.run]
    return spec.with_sampling(precision=OTHER_PRECISION) if wildcards.kind == OTHER_PRECISION else spec


def precision_comparison(run):
    return f"{R}/runs/{run}/{OTHER_PRECISION}/vs_{SAMPLING_PRECISION}.json"


def samples_per_video_set(sampleset):
    """Sampling seeds a scored folder holds (the reconstructions: one "sample" per video)."""
    return 1 if sampleset.startswith("reconstruction") else config["sampling"]["seeds"]


def table_inputs(wildcards):
    """Every row's scores, and every paired comparison (comparisons.csv): each row against the baseline, each
    conditioned run against the best one and, with controls.precision, against itself sampled in the other
    precision."""
    inputs = {"scores": [f"{R}/{folder}/scores.json" for folder in ROWS.values()]}
    inputs["comparisons"] = [
        f"{R}/{folder}/comparison.json" for row, folder in ROWS.items() if BASELINE not in (None, row)
    ] + [f"{R}/{ROWS[name]}/vs_best.json" for name in COMPARED_WITH_BEST]
    inputs["comparisons"] += [precision_comparison(name) for name in PRECISION_CONTROLLED]
    inputs["metrics"] = [f"{R}/runs/{name}/metrics.csv" for name in TRAINED_RUNS]
    inputs["probes"] = probe_files()
    return inputs


# ---------------------------------------------------------------- the authors' inputs (vas.source: authors)


def final_targets():
    """The workflow's final targets: the table and every file the report shows, so a finished run has its report
    ready to build (`snakemake --report`)."""
    files = [
        f"{R}/table.csv",
        f"{R}/report/landing.rst",
        f"{R}/report/method.html",
        f"{R}/report/table.html",
        f"{R}/report/scores.svg",
    ]
    if trained_codebook():  # its curves
        files.append(f"{R}/report/codebook.svg")
    files += expand(f"{R}/report/gallery/{{run}}.html", run=RUNS)
    files += expand(f"{R}/report/lr_find/{{run}}.svg", run=[name for name, run in RUNS.items() if run["lr_find"]])
    if TRAINED_RUNS:
        files += [f"{R}/report/validation_loss.svg", f"{R}/report/learning_rate.svg"]
        files += expand(f"{R}/report/loss/{{run}}.svg", run=TRAINED_RUNS)
    return files


# SpecVQGAN's own inputs (vas.source: authors; the globals AUTHORS_* are in authors.smk)


def authors_file(name):
    """Where a file of the authors' source is downloaded to (shared by every results folder)."""
    return f"resources/vas/authors/{name}"


def authors_tars(kind):
    """The per-class tar files of one kind (mels or ResNet50 features) of the classes in the checksum list."""
    return [authors_file(authors.tar_name(c, kind)) for c in authors.classes(AUTHORS_SUMS)]


def authors_videos(wildcards):
    """With the authors' inputs, a backbone they published no features of reads the videos of their clips
    (preprocess_authors_videos); otherwise the data shard holds the videos."""
    return [f"{R}/videos/{wildcards.split}/shard{wildcards.shard}"] if AUTHORS_INPUTS else []


def row_inputs():
    """The table's `inputs` column: derived here, or per row the authors' (mels, and their features or none) or
    the authors' mels with features derived here."""
    if not AUTHORS_INPUTS:
        return "derived"
    return {CEILING_ROW: "authors"} | {name: authors.inputs_of(run["features"]) for name, run in RUNS.items()}
