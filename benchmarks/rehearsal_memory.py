"""Each rule's peak memory in the rehearsal (config/rehearsal.yaml) against the memory it asks SLURM for.

    .venv/bin/snakemake --cores 2 --configfile config/rehearsal.yaml     # first: the rehearsal
    .venv/bin/python benchmarks/rehearsal_memory.py [--logs logs/rehearsal] [--configfile config/rehearsal.yaml]

peak: the largest `max_rss` (MiB, the job's process and its children summed) over the rule's Snakemake benchmark
files (<logs>/benchmarks/<rule>[/...].tsv). Snakemake samples it every 0.5 s for the first 15 s of a job and every
30 s after, so a short spike in a long job can be missed; worker processes' shared pages are counted once per
process (an overestimate).
request: the rule's mem_mb for a first attempt (a retry asks for twice as much) as `snakemake --profile
profiles/slurm` would submit it: its `resources:`, then the profile's default-resources and set-resources (read
by Snakemake itself, through `i2a.pipeline.plan`). The requests do not depend on the data's size, except train_gpt's,
which is per GPU (mem_mb = 16000 x gpus); `full study` shows the range config/config.yaml asks for. Local rules
run on the login node and ask SLURM for nothing.

What a CPU rehearsal cannot show: on a GPU node, activations and weights live on the GPU (the rehearsal's CPU
peak overstates the host's share of those), while the CUDA runtime adds host memory the rehearsal does not have
(`--cuda-host-mb`, an assumption: about 3 GB resident for libcudart, cuBLAS and cuDNN once loaded). And what
grows with the dataset (12,541 clips instead of 6; 7,680 generated spectrograms instead of 4) grows on top of the
rehearsal's numbers: see the README's rehearsal section for which rules that concerns.

The verdict: OVER when the rehearsal peak (plus the CUDA allowance for GPU rules) exceeds the request; `>8x`
when the request is more than 8 times that and more than 8 GB (a candidate for a smaller request). Exit code 1
when a rule is OVER.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from i2a.pipeline.plan import DEFAULT_PROFILE, JobRequest, plan_jobs  # noqa: E402


@dataclass
class RuleMemory:
    rule: str
    jobs: int
    local: bool
    gpu_rule: bool
    peak_mb: float  # NaN: no benchmark value (the job ran before the first sample)
    pss_mb: float  # the same with shared pages split between the processes sharing them (loader workers)
    request_mb: float
    full_mb: tuple[float, float] | None  # (lowest, highest) request in the full study, None: not in it

    def estimate_mb(self, cuda_host_mb: float) -> float:
        return self.peak_mb + (cuda_host_mb if self.gpu_rule else 0.0)

    def verdict(self, cuda_host_mb: float) -> str:
        if self.local:
            return "local (no request)"
        if math.isnan(self.peak_mb):
            return "no sample"
        need = self.estimate_mb(cuda_host_mb)
        if need > self.request_mb:
            return "OVER"
        if self.request_mb > 8 * need and self.request_mb > 8000:
            return ">8x"
        return "ok"


def benchmark_peaks(logs: Path, column: str = "max_rss") -> dict[str, float]:
    """{rule: largest `column` (MiB)} from <logs>/benchmarks/<rule>.tsv and <logs>/benchmarks/<rule>/*.tsv."""
    root = logs / "benchmarks"
    if not root.is_dir():
        raise FileNotFoundError(f"no benchmark files under {root}: run the rehearsal first")
    values: dict[str, list[float]] = {}
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        with open(path, newline="") as fh:
            rss = [row.get(column) for row in csv.DictReader(fh, delimiter="\t")]
        values.setdefault(rule, []).extend(float(v) for v in rss if v not in ("NA", "", None))
    return {rule: max(v) if v else math.nan for rule, v in values.items()}


def _by_rule(jobs: list[JobRequest]) -> dict[str, list[JobRequest]]:
    out: dict[str, list[JobRequest]] = {}
    for job in jobs:
        out.setdefault(job.rule, []).append(job)
    return out


def rule_memory(logs: Path, configfiles: list[str], profile: Path = DEFAULT_PROFILE, full_study: bool = True,
                workdir: Path = REPO) -> list[RuleMemory]:
    """Per rule of the rehearsal's DAG: its peak and its request (and the full study's range of requests)."""
    peaks, pss = benchmark_peaks(logs), benchmark_peaks(logs, "max_pss")
    rehearsal = _by_rule(plan_jobs(profile=profile, configfiles=configfiles, workdir=workdir, every_job=True))
    full = _by_rule(plan_jobs(profile=profile, workdir=workdir, every_job=True)) if full_study else {}
    rows = []
    for rule, jobs in rehearsal.items():
        if rule == "all":
            continue
        in_full = full.get(rule)
        rows.append(RuleMemory(
            rule=rule, jobs=len(jobs), local=jobs[0].local,
            gpu_rule=str(jobs[0].resources.get("slurm_partition", "")) == "gpu",
            peak_mb=peaks.get(rule, math.nan), pss_mb=pss.get(rule, math.nan), request_mb=max(j.mem_mb for j in jobs),
            full_mb=(min(j.mem_mb for j in in_full), max(j.mem_mb for j in in_full)) if in_full else None))
    return rows


def format_table(rows: list[RuleMemory], cuda_host_mb: float) -> str:
    header = ("rule", "jobs", "node", "peak MB", "PSS MB", "+CUDA MB", "request MB", "full study MB", "request/need",
              "verdict")
    lines = [header]
    for r in rows:
        need = r.estimate_mb(cuda_host_mb)
        full = "-" if r.full_mb is None or r.local else (f"{r.full_mb[0]:.0f}" if r.full_mb[0] == r.full_mb[1]
                                              else f"{r.full_mb[0]:.0f}-{r.full_mb[1]:.0f}")
        lines.append((
            r.rule, str(r.jobs), "login" if r.local else ("gpu" if r.gpu_rule else "cpu"),
            "NA" if math.isnan(r.peak_mb) else f"{r.peak_mb:.0f}",
            "NA" if math.isnan(r.pss_mb) else f"{r.pss_mb:.0f}",
            f"{need:.0f}" if r.gpu_rule and not math.isnan(need) else "",
            "-" if r.local else f"{r.request_mb:.0f}", full,
            "" if r.local or math.isnan(need) or need <= 0 else f"{r.request_mb / need:.1f}",
            r.verdict(cuda_host_mb)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) if i in (0, 2, 9) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=Path, default=REPO / "logs" / "rehearsal",
                        help="the rehearsal's logs folder (config key `logs`)")
    parser.add_argument("--configfile", default=str(REPO / "config" / "rehearsal.yaml"))
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE)
    parser.add_argument("--directory", type=Path, default=REPO, help="the workflow's folder")
    parser.add_argument("--cuda-host-mb", type=float, default=3000,
                        help="host memory the CUDA runtime adds to a GPU job (an assumption; 0 to leave it out)")
    parser.add_argument("--no-full-study", action="store_true", help="skip planning config/config.yaml")
    args = parser.parse_args(argv)
    rows = rule_memory(args.logs, [args.configfile], args.profile, not args.no_full_study, args.directory)
    print(f"rehearsal peak RSS ({args.logs}) vs first-attempt SLURM mem_mb (profile {args.profile}); GPU rules "
          f"with {args.cuda_host_mb:.0f} MB for the CUDA runtime")
    print(format_table(rows, args.cuda_host_mb))
    over = [r.rule for r in rows if r.verdict(args.cuda_host_mb) == "OVER"]
    print(f"rules_over_request: {', '.join(over) if over else 'none'}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
