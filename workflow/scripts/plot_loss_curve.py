"""One run's training and validation loss per epoch as SVG."""
from i2a.pipeline.jobs import start_job
from i2a.report.figures import loss_figure, read_training_curves, save_svg

log = start_job(snakemake)
curves = read_training_curves(snakemake.input[0])
save_svg(loss_figure(snakemake.wildcards.run, curves), snakemake.output[0])
log.info("%d epochs", len(curves))
