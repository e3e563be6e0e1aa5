"""Train one run's GPT (design.md §5); a killed job resumes from its state folder. In a SLURM job, a run longer
than the job's time limit (`resources.runtime`) stops before it, keeps last.ckpt and exits with SEGMENT_EXIT:
Snakemake's retry of the rule trains the next segment (docs/cluster.md). Elsewhere there is no limit."""
import os
import sys
import time
from pathlib import Path

started = time.time()

from i2a.pipeline.jobs import start_job  # noqa: E402
from i2a.spec.runspec import RunSpec  # noqa: E402
from i2a.training.gpt import train_run  # noqa: E402
from i2a.training.segments import SEGMENT_EXIT, SegmentDone, deadline_from_runtime  # noqa: E402

spec = RunSpec.from_dict(snakemake.params.run)
log = start_job(snakemake, precision=spec.train.precision)
if spec.train.gpus > 1:  # the job's CPUs are shared by one training process per GPU
    import torch

    torch.set_num_threads(max(1, snakemake.threads // spec.train.gpus))
try:
    train_run(spec,
              {"train": snakemake.input.train_tokens, "valid": snakemake.input.valid_tokens},
              {"train": snakemake.input.train_features, "valid": snakemake.input.valid_features},
              snakemake.input.codebook, snakemake.params.state_dir, snakemake.output.best, snakemake.output.metrics,
              snakemake.output.summary, feature_stats=(snakemake.input.stats or [None])[0],
              loader=snakemake.config["loader"], lr_find=(snakemake.input.lr_find or [None])[0],
              deadline=deadline_from_runtime(snakemake.resources.runtime if os.environ.get("SLURM_JOB_ID") else None,
                                             started),
              # cosmetic, read from the config (not a param: changing it reruns nothing): curves beside the job's log
              logger=snakemake.config["logger"], curves_dir=Path(str(snakemake.log[0])).with_suffix(".curves"))
except SegmentDone as stop:
    log.warning("%s; exit status %d", stop, SEGMENT_EXIT)
    sys.exit(SEGMENT_EXIT)
