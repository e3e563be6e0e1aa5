"""Lightning's learning-rate finder on one run's training data -> runs/<run>/lr_find.json (loss against LR, the
suggested LR); the run keeps its configured base_lr unless that is auto."""
from i2a.pipeline.jobs import start_job
from i2a.spec.runspec import RunSpec
from i2a.training.gpt import lr_find_run

spec = RunSpec.from_dict(snakemake.params.run)
start_job(snakemake, precision=spec.train.precision)
lr_find_run(spec,
            {"train": snakemake.input.train_tokens, "valid": snakemake.input.valid_tokens},
            {"train": snakemake.input.train_features, "valid": snakemake.input.valid_features},
            snakemake.input.codebook, snakemake.output[0], snakemake.params.settings,
            feature_stats=(snakemake.input.stats or [None])[0], loader=snakemake.config["loader"])
