"""The clip table: class, split (the VAS rule) and shard of every clip found."""
from i2a.dataset import make_clip_table, write_tsv
from i2a.jobs import start_job

log = start_job(snakemake)
table = make_clip_table(snakemake.input[0], snakemake.params.valid_per_class, snakemake.params.shards)
write_tsv(table, snakemake.output[0])
log.info("%d clips: %s", len(table), table.groupby("split").size().to_dict())
