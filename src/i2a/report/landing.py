"""The report's landing page (Snakemake's top-level `report:` description) and its method page, written from the
results. The landing page opens with the study's answer, short enough for the first screen: which runs beat the
baseline and by how much, and whether the best runs can be told apart (paired intervals); then every run, best
first, and what the numbers rest on. How the numbers are made and what they cannot say is on the method page.
The same answer is printed in a terminal (`answer_lines`, `runs_rows`: i2a.report.summary)."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

TITLE = "Image-to-audio synthesis: which visual features help, and by how much"

# Snakemake's template centres the description in a pane of the screen's height (its top unreachable once it is
# taller than the screen), in a narrow column with the rule graph beside it, drawn over any wide table. The page
# carries its own style (a <style> in the description applies while it is shown, whatever `snakemake --report` is
# given): the pane scrolls from the top, the description takes the pane's width, the rule graph follows below.
LANDING_STYLE = """
#app div:has(> div > #rulegraph) { align-items: flex-start; justify-content: flex-start; }
#app div:has(> #rulegraph) { flex-direction: column; width: 100%; }
#app div:has(> #brand) > .prose { max-width: 78rem; }
#app .prose h1.title { font-size: 1.6em; margin: 0 0 0.4em; }
#app .prose .section > h1 { font-size: 1.25em; margin: 1.2em 0 0.5em; }
#app .prose .verdict { border-left: 4px solid #059669; background: #ecfdf5; padding: 0.1em 1em; margin: 0 0 1em; }
#app .prose .verdict p, #app .prose .verdict li { margin: 0.2em 0; }
#app .prose table { font-size: 0.95em; }
#app .prose table td, #app .prose table th { padding: 0.3em 0.5em; }
"""

# what a paired interval says: the whole interval below 0, above 0, or covering 0
BETTER, WORSE, NOT_SEPARABLE = "better", "worse", "not separable"


def _num(value, fmt: str = ".3g") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _interval(row, name: str, fmt: str, signed: bool = True) -> str:
    """value [low, high] of a metric (KL, FID) or a paired difference (dKL, dFID) in a table or comparison row."""
    if row is None or pd.isna(row.get(name)):
        return "–"
    spec = f"+{fmt}" if signed else fmt
    return f"{row[name]:{spec}} [{row[f'{name}_low']:{spec}}, {row[f'{name}_high']:{spec}}]"


def separation(row, name: str = "dKL") -> str | None:
    """What a paired interval says (BETTER, WORSE, NOT_SEPARABLE), None without one."""
    if row is None or pd.isna(row.get(name)):
        return None
    if row[f"{name}_high"] < 0:
        return BETTER
    if row[f"{name}_low"] > 0:
        return WORSE
    return NOT_SEPARABLE


def verdict(row: pd.Series, name: str = "dKL") -> str:
    """Who beats whom, as the paired interval with the baseline says."""
    said = separation(row, name)
    if said is None:
        return "baseline" if row["kind"] == "run" else "–"
    return {BETTER: "better than the baseline", WORSE: "worse than the baseline",
            NOT_SEPARABLE: "not separable from the baseline"}[said]


def _names(names: list[str], strong: str, limit: int = 4) -> str:
    """'a, b and c' (bold in reStructuredText when strong is '**'), the first `limit` and how many more."""
    shown = [f"{strong}{n}{strong}" for n in names[:limit]]
    if len(names) > limit:
        shown.append(f"{len(names) - limit} more")
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def _by_relation(comparisons: pd.DataFrame, relation: str) -> dict[str, pd.Series]:
    lines = comparisons[comparisons["relation"] == relation]
    return {line["row"]: line for _, line in lines.iterrows()}


def _best_and_runs(table: pd.DataFrame, comparisons: pd.DataFrame) -> tuple[str | None, pd.DataFrame]:
    """(the best conditioned run as the comparisons with the best name it, every run of the table best first by
    MKL)."""
    runs = table[table["kind"] == "run"].sort_values("KL", kind="stable")
    best = next(iter(_by_relation(comparisons, "best").values()), None)
    return (None if best is None else best["against"]), runs


def answer_lines(table: pd.DataFrame, comparisons: pd.DataFrame, strong: str = "**") -> list[str]:
    """The answer in a few sentences: which runs beat the baseline (by how much, with intervals), which do not,
    the best run and which runs cannot be told apart from it. `strong`: the emphasis mark ('' for a terminal)."""
    baseline = next((b for b in table["baseline"].dropna()), None)
    best, runs = _best_and_runs(table, comparisons)
    lines = []
    if baseline is not None:
        said = {name: separation(row) for name, row in runs.set_index("run").iterrows() if name != baseline}
        better = [name for name in said if said[name] == BETTER]
        base = f"the baseline {strong}{baseline}{strong}"
        by_name = runs.set_index("run")
        if better:
            amounts = [f"{strong}{n}{strong} by {-by_name.loc[n, 'dKL']:.3f} [{-by_name.loc[n, 'dKL_high']:.3f}, "
                       f"{-by_name.loc[n, 'dKL_low']:.3f}]" for n in better[:3]]
            more = f" and {len(better) - 3} more (table below)" if len(better) > 3 else ""
            lines.append(f"{len(better)} of {len(said)} runs beat {base} in MKL: " + "; ".join(amounts) + more
                         + ".")
        else:
            lines.append(f"No run beats {base} in MKL (no paired 95% interval lies below 0).")
        for kind, words in ((NOT_SEPARABLE, "not separable from the baseline"), (WORSE, "worse than the baseline")):
            named = [name for name in said if said[name] == kind]
            if named:
                lines.append(f"{_names(named, strong)} {'is' if len(named) == 1 else 'are'} {words} "
                             f"(dKL {_interval(by_name.loc[named[0]], 'dKL', '.3f')}"
                             + (", ..." if len(named) > 1 else "") + ").")
    if best is not None:
        versus = _by_relation(comparisons, "best")
        row = table.set_index("run").loc[best]
        others = [name for name in runs["run"] if name in versus and name != best]
        tied = [name for name in others if separation(versus[name]) == NOT_SEPARABLE]
        behind = [name for name in others if separation(versus[name]) == WORSE]
        text = f"The best run is {strong}{best}{strong} (MKL {_interval(row, 'KL', '.3f', signed=False)})."
        if tied:
            text += (f" {_names(tied, strong)} {'is' if len(tied) == 1 else 'are'} {strong}not separable{strong} "
                     f"from it (dKL {_interval(versus[tied[0]], 'dKL', '.3f')}"
                     + (", ..." if len(tied) > 1 else "") + ": the interval covers 0).")
        if behind:
            text += (f" {_names(behind, strong)} {'is' if len(behind) == 1 else 'are'} worse than it "
                     f"(dKL {_interval(versus[behind[0]], 'dKL', '.3f')}" + (", ..." if len(behind) > 1 else "")
                     + ").")
        lines.append(text)
    return lines


RUNS_HEADER = ["run", "features", "MKL [95%]", "dKL vs baseline", "dKL vs best", "FID [95%]", "dFID vs baseline",
               "dFID vs best", "verdict (MKL)"]


def runs_rows(table: pd.DataFrame, comparisons: pd.DataFrame) -> list[list[str]]:
    """Every run, best first: MKL and FID with their intervals, the paired differences to the baseline and to the
    best run, and what the MKL intervals say (RUNS_HEADER)."""
    best, runs = _best_and_runs(table, comparisons)
    versus = _by_relation(comparisons, "best")
    rows = []
    for _, r in runs.iterrows():
        against = versus.get(r["run"])
        said = [verdict(r)]
        if r["run"] == best:
            said.append("the best")
        elif against is not None:
            said.append({BETTER: "better than the best", WORSE: "worse than the best",
                         NOT_SEPARABLE: "not separable from the best"}[separation(against)])
        on_best = "–" if against is None or r["run"] == best else _interval(against, "dKL", ".3f")
        fid_best = "–" if against is None or r["run"] == best else _interval(against, "dFID", ".1f")
        rows.append([r["run"], str(r["features"]), _interval(r, "KL", ".3f", signed=False),
                     _interval(r, "dKL", ".3f"), on_best, _interval(r, "FID", ".1f", signed=False),
                     _interval(r, "dFID", ".1f"), fid_best, "; ".join(said)])
    return rows


def _list_table(header: list[str], rows: list[list[str]], widths: str | None = None) -> str:
    lines = [".. list-table::", "   :header-rows: 1"] + ([f"   :widths: {widths}"] if widths else []) + [""]
    for cells in [header, *rows]:
        lines.append("   * - " + cells[0].replace("\n", " "))
        lines += [f"     - {c}".replace("\n", " ") for c in cells[1:]]
    return "\n".join(lines) + "\n"


def _indent(text: str, by: str = "   ") -> str:
    return "\n".join(by + line if line else "" for line in text.splitlines())


def landing_rst(table: pd.DataFrame, comparisons: pd.DataFrame, dataset: str, evaluator: dict,
                probes: dict[str, dict], codebook: dict | None) -> str:
    """The landing page as reStructuredText (Snakemake renders it with docutils)."""
    videos = int(table["videos"].iloc[0])
    parts = [".. raw:: html\n\n" + _indent(f"<style>{LANDING_STYLE}</style>") + "\n",
             f"{TITLE}\n{'=' * len(TITLE)}\n"]
    verdict_box = [f"**The answer** on {dataset}: Melception MKL (lower is better; it pairs each sample with its own "
                   f"video's real sound) with 95% intervals paired over the same {videos} validation videos. How "
                   "these are made and what they cannot say: `Method and caveats <method.html_>`_."]
    verdict_box += [f"- {line}" for line in answer_lines(table, comparisons)]
    parts.append(".. container:: verdict\n\n" + _indent("\n\n".join(verdict_box[:1]) + "\n\n"
                                                         + "\n".join(verdict_box[1:])) + "\n")
    parts.append("Every run, best first\n---------------------\n\n" + _list_table(RUNS_HEADER,
                                                                                  runs_rows(table, comparisons)))
    extra = []
    by_name = table.set_index("run")
    for _, r in table[table["kind"].str.startswith("ceiling")].iterrows():
        extra.append(f"- **Ceiling** (the codebook's reconstructions of the real clips, what any transformer can at "
                     f"best reach): MKL {_num(r['KL'])}, FID {_num(r['FID'], '.1f')}, dKL {_interval(r, 'dKL', '.3f')}"
                     + ("" if pd.isna(r["class_acc"]) else f"; recognised as their class: {r['class_acc']:.0%}"))
    for _, r in table[table["kind"].str.startswith("control")].iterrows():
        own = by_name.loc[r["run"].removesuffix("+shuffled")]
        worse = r["KL"] > own["KL"]
        extra.append(f"- **Control** {r['run']} (each video sampled with another video's features): MKL "
                     f"{_num(r['KL'])} against {_num(own['KL'])} with the right features "
                     f"({'worse, as it must be if the picture is used' if worse else 'NOT worse: the picture is not used'})")
    for _, line in comparisons[~comparisons["relation"].isin(["baseline", "best"])].iterrows():
        said = separation(line)
        extra.append(f"- **{line['row']}** against **{line['against']}** ({line['relation']}): dKL "
                     f"{_interval(line, 'dKL', '.3f')}, dFID {_interval(line, 'dFID', '.1f')}: "
                     + ({BETTER: "better", WORSE: "worse"}.get(said, "**not separable**") if said else "–"))
    for backbone, probe in sorted(probes.items()):
        extra.append(f"- **Probe** {backbone}: a linear classifier on the clip-averaged features finds the class of "
                     f"{probe['probe_acc']:.0%} of the validation clips (chance {probe['chance']:.0%})")
    if evaluator.get("real_acc") is not None:
        extra.append(f"- **Evaluator**: Melception recognises {evaluator['real_acc']:.0%} of the real validation clips")
    if codebook is not None:
        extra.append(f"- **Codebook**: kept epoch {codebook['epoch']} uses {codebook['codes_used']} of "
                     f"{codebook['codes']} codes (perplexity {codebook['perplexity']:.1f}), validation L1 "
                     f"{codebook['val_rec_loss']:.4f}")
    if extra:
        parts.append("What the numbers rest on\n------------------------\n\n" + "\n".join(extra) + "\n")
    parts.append("The full table and every paired comparison are under *Results* (``table.csv``, "
                 "``comparisons.csv``); training curves, the codebook and a listening gallery (one video per class, "
                 "the same videos for every run) follow. Below: the workflow's rules (click one for its code).\n")
    return "\n".join(parts)


# ---------------------------------------------------------------- the method page
def _fid_widths(table: pd.DataFrame, comparisons: pd.DataFrame) -> str:
    """How wide FID's intervals are at this many videos, from the table itself."""
    rows = table.dropna(subset=["FID", "FID_low", "FID_high"])
    if rows.empty:
        return ""
    ratio = (rows["FID_high"] / rows["FID_low"]).median()
    width = ((rows["FID_high"] - rows["FID_low"]) / rows["FID"]).median()
    paired = comparisons.dropna(subset=["dFID_low", "dFID_high"])
    paired = paired[paired["against"] != paired["row"]]
    covering = int(((paired["dFID_low"] <= 0) & (paired["dFID_high"] >= 0)).sum())
    return (f"At {int(table['videos'].iloc[0])} validation videos FID's intervals are wide: their upper end is a "
            f"median {ratio:.1f} times their lower end, a width of {width:.0%} of the value (e.g. "
            f"{html.escape(str(rows.iloc[0]['run']))}: FID {_interval(rows.iloc[0], 'FID', '.1f', signed=False)}), "
            f"and {covering} of the {len(paired)} paired dFID intervals cover 0.")


def method_html(table: pd.DataFrame, comparisons: pd.DataFrame, dataset: str, n_boot: int) -> str:
    """How the landing page's numbers are made, and what they cannot say, as a self-contained page."""
    from i2a.report.pages import _page

    videos = int(table["videos"].iloc[0])
    samples, seeds = int(table["samples_per_video"].iloc[0]), int(table["seeds"].iloc[0])
    baseline = next((b for b in table["baseline"].dropna()), None)
    best, _ = _best_and_runs(table, comparisons)
    sections = [
        ("What is measured",
         f"<p>Every row is sampled for the same {videos} validation videos of {html.escape(dataset)} ({samples} "
         f"samples per video{f', {seeds} sampling seeds' if seeds > 1 else ''}) and scored by Melception. "
         "<b>MKL</b> pairs each sample with its own video's real clip (the KL divergence of the class "
         "distributions), so it measures whether the sound fits the picture. <b>FID</b> compares all samples, "
         "pooled, with all real clips, so a run that ignores the picture but makes every class in the right "
         "proportions is hardly penalised by it. The verdict is read from MKL; lower is better for both.</p>"),
        ("Intervals",
         f"<p>95% bootstrap intervals over the validation videos ({n_boot} replicates): each replicate draws "
         f"{videos} videos with replacement, each with its real clip and all its samples, so the interval covers "
         "the videos and the sampling seeds together. MKL's interval is the replicates' spread placed on the value. "
         "FID's is the same on the log scale (the spread around the replicates' geometric mean, as a ratio): a "
         "resample holds only about 63% distinct videos, which raises FID, so the replicates lie above the value "
         "and are skewed; subtracting their shift directly could reach below 0, where no FID can be.</p>"),
        ("Paired comparisons",
         "<p>dKL and dFID are one row minus another on the same videos, the same videos drawn for both in every "
         "replicate: what makes a video easy or hard cancels, so a paired interval is much narrower than the two "
         "rows' own intervals suggest (do not compare those by overlap). A row <b>beats</b> another when the "
         "whole interval lies below 0; where it covers 0 the two are <b>not separable</b> on these videos. Each "
         f"row is compared with the baseline{f' ({html.escape(baseline)})' if baseline else ''} and each "
         f"conditioned run with the best of them by MKL{f' ({html.escape(best)})' if best else ''}; "
         "<code>comparisons.csv</code> lists every comparison.</p>"),
    ]
    caveats = [
        "<li>The best run is chosen on the same videos it is then compared on, which favours it slightly.</li>",
        "<li>Not separable is not equal: the interval says how large a difference these videos can rule out.</li>",
        "<li>Each interval is 95% on its own; among many comparisons a few will exclude 0 by chance.</li>",
        "<li>The shuffled-features controls are compared without pairing (their MKL against their run's).</li>",
    ]
    widths = _fid_widths(table, comparisons)
    if widths:
        caveats.append(f"<li>{widths}</li>")
    if "synthetic" in dataset:
        caveats.append("<li>This is the built-in synthetic demo: toy data, random-weight backbones and tiny models. "
                       "Its numbers show that the workflow tells runs apart, not which backbone is better on "
                       "VAS.</li>")
    sections.append(("Caveats", "<ul>" + "".join(caveats) + "</ul>"))
    body = "".join(f"<h2>{title}</h2>\n{text}\n" for title, text in sections)
    return _page("Method and caveats", f'<div class="prose">{body}</div>')


def write_landing(table_csv: str | Path, comparisons_csv: str | Path, evaluator_json: str | Path, probe_files,
                  codebook_summary: str | Path | None, dataset: str, n_boot: int, out: str | Path,
                  method_out: str | Path) -> None:
    from i2a.infra.atomic import write_text

    table, comparisons = pd.read_csv(table_csv), pd.read_csv(comparisons_csv)
    probes = {Path(p).parent.name: json.loads(Path(p).read_text()) for p in probe_files}
    codebook = json.loads(Path(codebook_summary).read_text()) if codebook_summary else None
    write_text(out, landing_rst(table, comparisons, dataset, json.loads(Path(evaluator_json).read_text()), probes,
                                codebook))
    write_text(method_out, method_html(table, comparisons, dataset, n_boot))
