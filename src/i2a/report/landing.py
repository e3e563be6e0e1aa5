"""The report's landing page (Snakemake's top-level `report:` description), written from the results: what the
workflow is, and the study's answer: every run against the baseline with its paired interval, best first, the
ceiling, the controls, the probes and the evaluator's own accuracy."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

INTRO = """\
Image-to-audio synthesis: which visual features help, and by how much
=======================================================================

A GPT samples the codebook tokens of a spectrogram conditioned on video-frame features (SpecVQGAN, trained on
{dataset}); the study swaps the frame-feature backbone and retunes the transformer. Every row is scored with
Melception MKL and FID (lower is better) on the same {videos} validation videos, so rows are compared *paired*:
``dKL`` and ``dFID`` are the row minus the baseline **{baseline}**, with a 95% bootstrap interval that resamples
the videos jointly for both. A row beats the baseline when the whole interval lies below 0. MKL pairs every
sample with its own video's real clip, so it measures whether the sound fits the picture; FID compares all samples
pooled with all real clips, so a run that ignores the picture but makes every class in the right proportions is
not penalised by it: the verdict is read from MKL.
"""


def _num(value, fmt: str = ".3g") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _interval(row: pd.Series, name: str, fmt: str) -> str:
    if pd.isna(row.get(name)):
        return "–"
    return f"{row[name]:+{fmt}} [{row[f'{name}_low']:+{fmt}}, {row[f'{name}_high']:+{fmt}}]"


def verdict(row: pd.Series, name: str = "dKL") -> str:
    """Who beats whom, as the paired interval says."""
    if pd.isna(row.get(name)):
        return "baseline" if row["kind"] == "run" else "–"
    if row[f"{name}_high"] < 0:
        return "better than the baseline"
    if row[f"{name}_low"] > 0:
        return "worse than the baseline"
    return "no difference shown"


def _list_table(header: list[str], rows: list[list[str]], widths: str | None = None) -> str:
    lines = [".. list-table::", "   :header-rows: 1"] + ([f"   :widths: {widths}"] if widths else []) + [""]
    for cells in [header, *rows]:
        lines.append("   * - " + cells[0].replace("\n", " "))
        lines += [f"     - {c}".replace("\n", " ") for c in cells[1:]]
    return "\n".join(lines) + "\n"


def landing_rst(table: pd.DataFrame, dataset: str, evaluator: dict, probes: dict[str, dict],
                codebook: dict | None) -> str:
    """The landing page as reStructuredText (Snakemake renders it with docutils)."""
    baseline = next((b for b in table["baseline"].dropna()), "none")
    parts = [INTRO.format(dataset=dataset, videos=int(table["videos"].iloc[0]), baseline=baseline)]

    runs = table[table["kind"].str.startswith("run")].copy()
    runs["order"] = runs["dKL"].fillna(0.0)
    header = ["run", "features", "MKL", "dKL [95%]", "FID", "dFID [95%]", "samples recognised", "verdict (MKL)"]
    rows = [[r["run"], r["features"], _num(r["KL"]), _interval(r, "dKL", ".3f"), _num(r["FID"], ".1f"),
             _interval(r, "dFID", ".1f"), _num(r["class_acc"], ".0%"), verdict(r)]
            for _, r in runs.sort_values("order").iterrows()]
    parts.append("The answer, best first\n----------------------\n\n" + _list_table(header, rows))

    ceiling = table[table["kind"].str.startswith("ceiling")]
    controls = table[table["kind"].str.startswith("control")]
    extra = []
    for _, r in ceiling.iterrows():
        extra.append(f"- **Ceiling** (the codebook's reconstructions of the real clips, what any transformer can at "
                     f"best reach): MKL {_num(r['KL'])}, FID {_num(r['FID'], '.1f')}, dKL {_interval(r, 'dKL', '.3f')}"
                     + ("" if pd.isna(r["class_acc"]) else f"; recognised as their class: {r['class_acc']:.0%}"))
    by_name = table.set_index("run")
    for _, r in controls.iterrows():
        own = by_name.loc[r["run"].removesuffix("+shuffled")]
        worse = r["KL"] > own["KL"]
        extra.append(f"- **Control** {r['run']} (each video sampled with another video's features): MKL "
                     f"{_num(r['KL'])} against {_num(own['KL'])} with the right features "
                     f"({'worse, as it must be if the picture is used' if worse else 'NOT worse: the picture is not used'})")
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
    parts.append("The full table is under *Results*; training curves, the codebook and a listening gallery (one "
                 "video per class, the same videos for every run) follow.\n")
    return "\n".join(parts)


def write_landing(table_csv: str | Path, evaluator_json: str | Path, probe_files, codebook_summary: str | Path | None,
                  dataset: str, out: str | Path) -> None:
    from i2a.atomic import write_text

    table = pd.read_csv(table_csv)
    probes = {Path(p).parent.name: json.loads(Path(p).read_text()) for p in probe_files}
    codebook = json.loads(Path(codebook_summary).read_text()) if codebook_summary else None
    write_text(out, landing_rst(table, dataset, json.loads(Path(evaluator_json).read_text()), probes, codebook))
