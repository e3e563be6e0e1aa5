"""One shard of the data stage: SpecVQGAN's ffmpeg chain: 10 s wav, video and mel per clip."""
from i2a.dataset import mel_spec_from_config, preprocess_shard, read_clip_table
from i2a.jobs import start_job

log = start_job(snakemake)
split, shard = snakemake.wildcards.split, int(snakemake.wildcards.shard)
table = read_clip_table(snakemake.input.clips)
table = table[(table["split"] == split) & (table["shard"] == shard)]
data = snakemake.params.data
manifest = preprocess_shard(table, snakemake.output[0], mel_spec_from_config(data["audio"]),
                            seconds=data["audio"]["seconds"], workers=snakemake.threads)
log.info("%s shard %d: %s", split, shard, manifest["status"].value_counts().to_dict())
