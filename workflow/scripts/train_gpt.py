"""Train one run's GPT (SPEC section 5); a killed job resumes from its state folder's last.ckpt."""
import json
import shutil
from pathlib import Path

from i2a.jobs import start_job
from i2a.runs import gpt_dataset, prepare_state_dir, train_config
from i2a.train_gpt import train_gpt

log = start_job(snakemake)
hp = snakemake.params.hparams
train_ds = gpt_dataset(snakemake.input.train_tokens, snakemake.input.train_features, hp)
valid_ds = gpt_dataset(snakemake.input.valid_tokens, snakemake.input.valid_features, hp)
state = prepare_state_dir(snakemake.params.state_dir, hp)
result = train_gpt(train_ds, valid_ds, train_config(hp, snakemake.params.vocab_size), state)
for name in ("best", "metrics"):
    target = Path(getattr(snakemake.output, name))
    shutil.copyfile(state / target.name, target.with_name(f".{target.name}.tmp"))
    target.with_name(f".{target.name}.tmp").replace(target)
Path(snakemake.output.summary).write_text(json.dumps({**result, "hparams": hp}, indent=2))
log.info("best epoch %s, val loss %.4f, overfit %s", result["best_epoch"], result["best_val_loss"], result["overfit"])
