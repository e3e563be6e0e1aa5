"""Train one run's GPT (SPEC section 5); a killed job resumes from its state folder."""
from pathlib import Path

from i2a.jobs import start_job
from i2a.runspec import RunSpec
from i2a.training.gpt import train_run

spec = RunSpec.from_dict(snakemake.params.run)
start_job(snakemake, precision=spec.train.precision)
train_run(spec,
          {"train": snakemake.input.train_tokens, "valid": snakemake.input.valid_tokens},
          {"train": snakemake.input.train_features, "valid": snakemake.input.valid_features},
          snakemake.input.codebook, snakemake.params.state_dir, snakemake.output.best, snakemake.output.metrics,
          snakemake.output.summary, feature_stats=(snakemake.input.stats or [None])[0],
          loader=snakemake.config["loader"], lr_find=(snakemake.input.lr_find or [None])[0],
          # cosmetic, read from the config (not a param: changing it reruns nothing): curves beside the job's log
          logger=snakemake.config["logger"], curves_dir=Path(str(snakemake.log[0])).with_suffix(".curves"))
