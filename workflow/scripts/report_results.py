"""The report's results page (table.html) and MKL/FID per run (scores.svg) from table.csv."""
import pandas as pd

from i2a.pipeline.jobs import start_job
from i2a.infra.atomic import write_text
from i2a.report.figures import save_svg, scores_figure
from i2a.report.pages import table_html

log = start_job(snakemake)
table = pd.read_csv(snakemake.input[0])
write_text(snakemake.output.table, table_html(table))
save_svg(scores_figure(table), snakemake.output.scores)
log.info("table and scores of %d runs", len(table))
