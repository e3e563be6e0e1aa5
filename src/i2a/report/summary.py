"""What `make demo` and `make report` print last: the study's answer and its runs in a terminal (the landing
page's answer_lines and runs_rows), and where the report is and how to open it.

    python -m i2a.report.summary --configfile config/demo.yaml                the answer, the runs, the report
    python -m i2a.report.summary --configfile config/demo.yaml --report-path  only where the report goes
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import pandas as pd

from i2a.report.landing import RUNS_HEADER, answer_lines, runs_rows
from i2a.spec.config import load_config

# the columns a terminal shows (the verdicts are in the answer above them)
TERMINAL_COLUMNS = ["run", "MKL [95%]", "dKL vs baseline", "dKL vs best", "FID [95%]"]


def results_folder(configfile: str | Path) -> Path:
    """The results folder of a config as the workflow reads it (merged over the config.yaml beside it)."""
    return Path(load_config(configfile)["results"])


def report_path(configfile: str | Path) -> Path:
    """Where `make report` writes the config's report: report.html in its results folder."""
    return results_folder(configfile) / "report.html"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    widths = [max(len(str(cells[i])) for cells in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def summary(results: str | Path, report: str | Path | None = None, width: int = 100) -> str:
    """The answer (a few wrapped lines), every run best first (TERMINAL_COLUMNS), where the table and the
    comparisons are, and the report: its absolute path and how to open it, or how to build it."""
    results = Path(results)
    table = pd.read_csv(results / "table.csv")
    comparisons = pd.read_csv(results / "comparisons.csv")
    videos = int(table["videos"].iloc[0])
    out = [f"The answer ({results}: Melception MKL, lower is better; 95% intervals paired over the same {videos} "
           "validation videos):"]
    for line in answer_lines(table, comparisons, strong=""):
        out.append(textwrap.fill(line, width, initial_indent="  - ", subsequent_indent="    "))
    keep = [RUNS_HEADER.index(name) for name in TERMINAL_COLUMNS]
    rows = [[cells[i] for i in keep] for cells in runs_rows(table, comparisons)]
    out += ["", textwrap.indent(text_table(TERMINAL_COLUMNS, rows), "  "), ""]
    out.append(f"Table: {results / 'table.csv'}; every paired comparison: {results / 'comparisons.csv'}")
    if report is not None and Path(report).is_file():
        where = Path(report).resolve()
        out.append(f"Report: {where}")
        out.append(f"  open it in any browser (one file, no server): xdg-open {report}  (macOS: open {report}), "
                   f"or {where.as_uri()}")
    elif report is not None:
        out.append(f"No report at {report} yet: `make report` builds it.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m i2a.report.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", default="config/demo.yaml", help="the config the results were made with")
    parser.add_argument("--report-path", action="store_true", help="print only where the report goes")
    args = parser.parse_args(argv)
    report = report_path(args.configfile)
    if args.report_path:
        print(report)
        return 0
    results = report.parent
    if not (results / "table.csv").is_file():
        print(f"no results in {results} yet: run the workflow first (make demo)", file=sys.stderr)
        return 1
    print(summary(results, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
