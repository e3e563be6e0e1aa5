"""The report's results page (table.html) and MKL/FID per run (scores.svg) from table.csv."""
from pathlib import Path

import pandas as pd

from i2a.jobs import start_job
from i2a.report import save_svg, scores_figure, table_html

log = start_job(snakemake)
table = pd.read_csv(snakemake.input[0])
Path(snakemake.output.table).write_text(table_html(table), encoding="utf-8")
save_svg(scores_figure(table), snakemake.output.scores)
log.info("table and scores of %d runs", len(table))
