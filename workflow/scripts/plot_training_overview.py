"""Validation loss and learning rate of every trained run, one plot each."""
from i2a.pipeline.jobs import start_job
from i2a.report.figures import overview_figure, read_training_curves, save_svg

log = start_job(snakemake)
curves = {run: read_training_curves(path) for run, path in zip(snakemake.params.runs, snakemake.input)}
save_svg(overview_figure(curves, "val_loss", "validation loss"), snakemake.output.loss)
save_svg(overview_figure(curves, "lr", "learning rate", log_y=True), snakemake.output.lr)
log.info("curves of %d runs", len(curves))
