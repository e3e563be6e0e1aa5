"""results/table.csv: the study's table, one row per run."""
from pathlib import Path

from i2a.dataset import Shard, read_clip_table
from i2a.jobs import start_job
from i2a.table import build_table, clip_counts

log = start_job(snakemake)
runs = snakemake.params.runs
score_files = {Path(p).parent.name: p for p in snakemake.input.scores}
training_files = {Path(p).parent.name: p for p in snakemake.input.training}
counts = clip_counts([Shard(d).table for d in snakemake.input.manifests], read_clip_table(snakemake.input.clips))
table = build_table(runs, score_files, training_files, counts)
tmp = Path(snakemake.output[0]).with_suffix(".tmp")
table.to_csv(tmp, index=False, float_format="%.4g")
tmp.replace(snakemake.output[0])
log.info("\n%s", table.to_string(index=False))
