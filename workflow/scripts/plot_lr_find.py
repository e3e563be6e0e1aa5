"""One run's learning-rate finder (runs/<run>/lr_find.json) as SVG: loss against LR, the suggestion marked."""
import json

from i2a.pipeline.jobs import start_job
from i2a.report.figures import lr_find_figure, save_svg

log = start_job(snakemake)
result = json.loads(open(snakemake.input[0]).read())
save_svg(lr_find_figure(result), snakemake.output[0])
log.info("%d LRs, suggested %s", len(result["lr"]), result["suggested_lr"])
