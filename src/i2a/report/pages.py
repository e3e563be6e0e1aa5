"""The report's HTML pages: self-contained (images and audio embedded as data: URIs), so that the report stays
one file that opens anywhere without a server."""
from __future__ import annotations

import base64
import html
import math

import numpy as np
import pandas as pd

TABLE_COLUMNS = [("published_KL", "published MKL"), ("published_FID", "published FID"),
                 ("reported_KL", "report's MKL"), ("logged_KL", "log's MKL"), ("reported_FID", "report's FID"),
                 ("logged_FID", "log's FID"),
                 ("inputs", "inputs"), ("features", "features"), ("feat_sample_size", "S"),
                 ("feature_norm", "features in"),
                 ("scheduler", "LR scheduler"), ("batch", "batch"), ("gpus", "GPUs"), ("layers", "layers"),
                 ("heads", "heads"), ("embed", "embed"), ("dropout", "dropout"), ("weight_decay", "weight decay"),
                 ("epochs", "epochs"), ("overfit", "overfit?"), ("probe_acc", "probe acc."),
                 ("class_acc", "samples recognised"), ("ISc", "ISc"), ("KID", "KID")]

PAGE_STYLE = """
body { font-family: sans-serif; margin: 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #eee; }
td.name { text-align: left; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
.prose { max-width: 60em; line-height: 1.45; }
.video { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; border-top: 1px solid #ccc;
         padding: 0.8em 0; }
.video h3 { flex-basis: 100%; margin: 0; }
.video figure { margin: 0; }
.video figcaption { font-size: 0.85em; color: #444; max-width: 360px; }
.spectrogram { width: 360px; height: 120px; image-rendering: pixelated; display: block; }
audio { width: 360px; display: block; }
"""


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return html.escape(str(value))


def _with_interval(row: pd.Series, metric: str, signed: bool = False) -> str:
    if pd.isna(row.get(metric)):
        return "–"
    fmt = "+.3g" if signed else ".3g"
    text = f"{row[metric]:{fmt}} [{row[f'{metric}_low']:{fmt}}, {row[f'{metric}_high']:{fmt}}]"
    seed_sd = row.get(f"{metric}_seed_sd")
    if seed_sd is not None and not pd.isna(seed_sd):
        text += f" ± {seed_sd:.2g}"
    return text


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{PAGE_STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n")


def table_html(table: pd.DataFrame) -> str:
    """table.csv as a page: one row per run, control and the ceiling; the scores first (MKL and FID with their
    95% intervals, the paired differences to the baseline), then what made them."""
    score_heads = ["MKL [95%]", "dKL [95%]", "FID [95%]", "dFID [95%]"]
    head = "<th>run</th>" + "".join(f"<th>{h}</th>" for h in score_heads)
    head += "".join(f"<th>{html.escape(label)}</th>" for _, label in TABLE_COLUMNS)
    head += "<th>videos × samples × seeds</th>"
    rows = []
    for _, row in table.iterrows():
        cells = [f'<td class="name">{_cell(row["run"])}</td>', f"<td>{_with_interval(row, 'KL')}</td>",
                 f"<td>{_with_interval(row, 'dKL', signed=True)}</td>", f"<td>{_with_interval(row, 'FID')}</td>",
                 f"<td>{_with_interval(row, 'dFID', signed=True)}</td>"]
        cells += [f'<td class="name">{_cell(row.get(c))}</td>'
                  if c in ("features", "scheduler", "feature_norm", "inputs")
                  else f"<td>{_cell(row.get(c))}</td>" for c, _ in TABLE_COLUMNS]
        cells.append(f"<td>{row['videos']} × {row['samples_per_video']} × {row['seeds']}</td>")
        rows.append(f'<tr data-run="{html.escape(str(row["run"]))}">{"".join(cells)}</tr>')
    baseline = next((b for b in table.get("baseline", pd.Series(dtype=str)).dropna()), None)
    note = ("<p class=\"note\">Melception MKL and FID of the generated validation spectrograms (lower is better); "
            "brackets: 95% bootstrap interval over validation videos; ± the standard deviation over sampling seeds "
            f"where there are several. dKL and dFID: the row minus the baseline{f' ({html.escape(baseline)})' if baseline else ''}, "
            "paired over the same videos (a row beats the baseline when the whole interval is below 0). Rows "
            "ending in +shuffled are controls sampled with another video's features; reconstruction is the "
            "codebook's ceiling. Published MKL/FID: what the paper reports for a released model. Inputs: derived "
            "(mels and features made here from the videos) or authors (SpecVQGAN's precomputed ones). \"epochs\": "
            "epoch of the best validation loss, counted from 1; \"overfit?\": validation loss rose more than the "
            "configured margin above its best and stayed there for the configured number of epochs.</p>")
    body = f'<table id="results">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows) + "\n</tbody>\n</table>"
    return _page("Results", note + "\n" + body)


def data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"
