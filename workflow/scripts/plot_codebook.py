"""A trained codebook's validation L1, codes used and perplexity per epoch, as SVG."""
import json
from pathlib import Path

import pandas as pd

from i2a.pipeline.jobs import start_job
from i2a.report.figures import codebook_figure, save_svg

start_job(snakemake)
save_svg(codebook_figure(pd.read_csv(snakemake.input.metrics), json.loads(Path(snakemake.input.summary).read_text())),
         snakemake.output[0])
