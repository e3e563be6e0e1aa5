"""What a run would ask the cluster for, before anything runs: per rule and per training run, the expected hours
from the GPUs' calibration and the limits the SLURM profile would request, in GPU-hours and CPU-hours.

    i2a plan                                   # the full study (config/config.yaml, rule all), profiles/slurm
    i2a plan results/table.csv                 # only what the table needs (make plan)
    i2a plan --configfile config/demo.yaml     # the demo
    i2a plan --all                             # every job, as if no output existed yet
    i2a plan --calibration profiles/slurm/calibration/cpu-2core.yaml --gpus 16 --json

Snakemake itself works out the jobs (a dry run) and each job's request (the rules' resources and threads, then
the profile's default-resources, set-resources and set-threads on top, exactly as `snakemake --profile` would),
for the first attempt. The rules' time limits come from `i2a.pipeline.sizing.job_minutes`, which also gives the expected
time shown here: the plan and the profile cannot disagree. Requested hours are limit x GPUs and limit x CPUs
(jobs that end sooner are charged less), times the segments of a training run longer than max_runtime. Local
rules run on the login node and request nothing from SLURM.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from i2a import SOURCE_CHECKOUT as REPO

DEFAULT_PROFILE = REPO / "profiles" / "slurm"
# Large enough that no rule's threads are capped, as on a cluster (a dry run caps threads at --cores).
UNCAPPED_CORES = 1_000_000


@dataclass(frozen=True)
class JobRequest:
    """One job's request: threads are its CPUs per task, runtime in minutes, memory in MB."""

    rule: str
    wildcards: Mapping[str, str]
    threads: int
    resources: Mapping[str, object]
    local: bool = False
    expected_min: float | None = None  # from the calibration (i2a.pipeline.sizing); None: no figure for this work
    segments: int = 1  # jobs a training run longer than max_runtime takes, each asking for the same limit

    @property
    def runtime_min(self) -> float:
        return _number(self.resources.get("runtime"))

    @property
    def gpus(self) -> int:
        return int(_number(self.resources.get("gpu")))

    @property
    def mem_mb(self) -> float:
        return _number(self.resources.get("mem_mb"))

    @property
    def partition(self) -> str:
        return "login node (local)" if self.local else str(self.resources.get("slurm_partition") or "(default)")

    @property
    def gpu_hours(self) -> float:
        return 0.0 if self.local else self.runtime_min / 60 * self.gpus * self.segments

    @property
    def cpu_hours(self) -> float:
        return 0.0 if self.local else self.runtime_min / 60 * self.threads * self.segments

    @property
    def expected_gpu_hours(self) -> float:
        return 0.0 if self.local or self.expected_min is None else self.expected_min / 60 * self.gpus


def _number(value: object) -> float:
    """A resource as a number; absent or not yet known (Snakemake's '<TBD>') counts as 0."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


@dataclass
class RuleSummary:
    rule: str
    partitions: set[str] = field(default_factory=set)
    jobs: int = 0
    gpus: set[int] = field(default_factory=set)
    cpus: set[int] = field(default_factory=set)
    mem_gb: set[float] = field(default_factory=set)
    runtime_h: set[float] = field(default_factory=set)
    expected_h: set[float] = field(default_factory=set)
    uncalibrated: int = 0  # jobs without a calibration figure (their rule's own fixed limit)
    expected_gpu_hours: float = 0.0
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0


def summarise(jobs: Iterable[JobRequest]) -> list[RuleSummary]:
    """Per rule, in the order rules first appear: jobs, where they run, the range of each request, hours."""
    by_rule: dict[str, RuleSummary] = {}
    for job in jobs:
        row = by_rule.setdefault(job.rule, RuleSummary(job.rule))
        row.jobs += 1
        row.partitions.add(job.partition)
        row.gpus.add(job.gpus)
        row.cpus.add(job.threads)
        row.mem_gb.add(job.mem_mb / 1000)
        row.runtime_h.add(job.runtime_min / 60)
        if job.expected_min is None:
            row.uncalibrated += bool(job.gpus) and not job.local  # CPU jobs keep their rule's fixed limit
        else:
            row.expected_h.add(job.expected_min / 60)
        row.expected_gpu_hours += job.expected_gpu_hours
        row.gpu_hours += job.gpu_hours
        row.cpu_hours += job.cpu_hours
    return list(by_rule.values())


def _span(values: set[float], fmt: str = "{:g}") -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return fmt.format(low) if low == high else f"{fmt.format(low)}-{fmt.format(high)}"


def format_plan(rows: Sequence[RuleSummary]) -> str:
    """A fixed-width table of the summary with a total line."""
    header = ("rule", "jobs", "partition", "GPUs/job", "CPUs/job", "mem GB/job", "expected h/job", "limit h/job",
              "expected GPU-h", "GPU-hours", "CPU-hours")
    lines = [header]
    for r in rows:
        expected = _span(r.expected_h, "{:.3g}")
        if r.uncalibrated:
            expected += " (uncalibrated)" if not r.expected_h else f" ({r.uncalibrated} uncalibrated)"
        lines.append((r.rule, str(r.jobs), ", ".join(sorted(r.partitions)), _span(r.gpus), _span(r.cpus),
                      _span(r.mem_gb), expected, _span(r.runtime_h, "{:.3g}"), f"{r.expected_gpu_hours:,.1f}",
                      f"{r.gpu_hours:,.1f}", f"{r.cpu_hours:,.1f}"))
    lines.append(("total", str(sum(r.jobs for r in rows)), "", "", "", "", "", "",
                  f"{sum(r.expected_gpu_hours for r in rows):,.1f}", f"{sum(r.gpu_hours for r in rows):,.1f}",
                  f"{sum(r.cpu_hours for r in rows):,.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = {0, 2, 6}  # text columns; numbers are right-aligned

    def render(line):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

    out = [render(lines[0]), "  ".join("-" * w for w in widths)]
    out += [render(line) for line in lines[1:-1]]
    out += ["  ".join("-" * w for w in widths), render(lines[-1])]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- Snakemake side

class _JobInfoCollector(logging.Handler):
    """Keeps the job descriptions a dry run logs (the records Snakemake's logger plugins receive)."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        from snakemake_interface_logger_plugins.common import LogEvent

        if getattr(record, "event", None) == LogEvent.JOB_INFO:
            self.records.append(record)


def _cli_args(profile: Path, configfiles: Sequence[str]):
    """Snakemake's own command-line parsing, which is what applies a profile's settings."""
    from snakemake.cli import parse_args

    argv = ["--profile", str(profile), "--dry-run"]
    if configfiles:
        argv += ["--configfile", *configfiles]
    _, args = parse_args(argv)
    return args


def _local_rules(workflow) -> set[str]:
    """Rules that run on the login node. A dry run reports every job as non-local and its workflow counts every
    rule as local (it has no cluster executor), so this reads the rules the workflow marks `localrule: True`."""
    return {rule.name for rule in workflow.rules if rule.name in workflow._localrules or rule.norun}


def plan_jobs(targets: Sequence[str] = (), profile: Path = DEFAULT_PROFILE, configfiles: Sequence[str] = (),
              workdir: Path = REPO, snakefile: Path | None = None, every_job: bool = False,
              calibration: str | Path | None = None) -> list[JobRequest]:
    """The jobs a `snakemake --profile <profile> <targets>` started now would submit, with their requests and
    expected minutes. No targets: the workflow's default target (rule all: the table and the report's files).
    `every_job` counts every job of the DAG, as if none of its outputs existed yet. `calibration` replaces the
    config's `cluster.calibration` (as `--config` would: the limits follow it).
    """
    jobs, config = _dry_run(targets, profile, configfiles, workdir, snakefile, every_job, calibration)
    return [_with_expected(job, config) for job in jobs]


def _with_expected(job: JobRequest, config: Mapping) -> JobRequest:
    """The job with the expected minutes of its work (i2a.pipeline.sizing, the function its runtime came from)."""
    from dataclasses import replace

    from i2a.pipeline import sizing
    from i2a.spec.runspec import RunSpec

    if job.local:
        return job
    entry = next((r for r in config["runs"] if r["name"] == job.wildcards.get("run")), None)
    spec = RunSpec.from_config(config, entry) if entry is not None else None
    time = sizing.job_minutes(job.rule, config, job.wildcards, spec, job.threads, int(job.runtime_min) or 60)
    segments = sizing.segments_needed(time, config["cluster"]) if job.rule == "train_gpt" else 1
    return replace(job, expected_min=time.expected_min, segments=segments)


def _dry_run(targets, profile, configfiles, workdir, snakefile, every_job, calibration):
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings, Quietness,
                                          ResourceSettings)

    from i2a.pipeline import lock

    workdir = Path(workdir).resolve()
    snakefile = Path(snakefile).resolve() if snakefile else workdir / "workflow" / "Snakefile"
    args = _cli_args(Path(profile).resolve(), [str(Path(f).resolve()) for f in configfiles])
    overrides = dict(args.config or {})
    if calibration is not None:
        overrides["cluster"] = {**overrides.get("cluster", {}), "calibration": str(Path(calibration).resolve())}
    collector = _JobInfoCollector()
    snakemake_logger = logging.getLogger("snakemake")
    with lock.planning_only(), SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        snakemake_logger.addHandler(collector)  # after the API set up (and cleared) the logger's handlers
        try:
            workflow_api = api.workflow(
                resource_settings=ResourceSettings(
                    cores=UNCAPPED_CORES, default_resources=args.default_resources,
                    overwrite_resources=args.set_resources or {}, overwrite_threads=args.set_threads or {}),
                config_settings=ConfigSettings(configfiles=[Path(f) for f in args.configfile or []],
                                               config=overrides),
                snakefile=snakefile, workdir=workdir)
            dag_api = workflow_api.dag(DAGSettings(targets=set(targets), forceall=every_job))
            dag_api.execute_workflow(executor="dryrun")
            local = _local_rules(workflow_api._workflow)
            config = dict(workflow_api._workflow.config)
        finally:
            snakemake_logger.removeHandler(collector)
    jobs = [JobRequest(rule=r.rule_name, wildcards=dict(r.wildcards or {}), threads=int(r.threads),
                       resources={k: v for k, v in r.resources.items() if not k.startswith("_")},
                       local=r.rule_name in local)
            for r in collector.records]
    return jobs, config


# ------------------------------------------------------------------------------------------- the profile's names
# The environment variables profiles/slurm/config.yaml reads, and what an unset one means there.
PROFILE_VARIABLES = {
    "I2A_SLURM_ACCOUNT": "the SLURM plugin guesses the account",
    "I2A_SLURM_CPU_PARTITION": "CPU jobs go to a partition named 'cpu'",
    "I2A_SLURM_GPU_PARTITION": "GPU jobs go to a partition named 'gpu'",
    "I2A_SLURM_GPU_MODEL": "GPU jobs ask for any GPU model",
}


def placeholders(jobs: Iterable[JobRequest], environ: Mapping[str, str] | None = None) -> list[str]:
    """What still stands in for the cluster's own names: unset profile variables (with what the profile then
    does) and any resource value that reads like a template's placeholder (`your_...`)."""
    import os

    environ = os.environ if environ is None else environ
    found = [f"{name} is not set: {meaning}" for name, meaning in PROFILE_VARIABLES.items() if not environ.get(name)]
    for job in jobs:
        for key, value in job.resources.items():
            if isinstance(value, str) and value.lower().startswith(("your_", "<your")):
                found.append(f"{job.rule}: {key} is the placeholder {value!r}")
    return list(dict.fromkeys(found))


# ------------------------------------------------------------------------------------------- totals
def training_runs(jobs: Iterable[JobRequest]) -> list[dict]:
    """One line per train_gpt job: its GPUs, CPUs, expected and requested hours and segments."""
    out = []
    for job in jobs:
        if job.rule != "train_gpt":
            continue
        out.append({"run": job.wildcards.get("run"), "gpus": job.gpus, "cpus": job.threads,
                    "expected_hours": None if job.expected_min is None else job.expected_min / 60,
                    "limit_hours": job.runtime_min / 60, "segments": job.segments,
                    "expected_gpu_hours": job.expected_gpu_hours, "requested_gpu_hours": job.gpu_hours})
    return out


def format_runs(runs: Sequence[dict]) -> str:
    header = ("training run", "GPUs", "CPUs", "expected h", "limit h", "segments", "expected GPU-h", "GPU-hours")
    lines = [header] + [(r["run"], str(r["gpus"]), str(r["cpus"]),
                         "-" if r["expected_hours"] is None else f"{r['expected_hours']:.3g}",
                         f"{r['limit_hours']:.3g}", str(r["segments"]), f"{r['expected_gpu_hours']:,.1f}",
                         f"{r['requested_gpu_hours']:,.1f}") for r in runs]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    render = lambda line: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                    for i, (c, w) in enumerate(zip(line, widths)))
    return "\n".join([render(lines[0]), "  ".join("-" * w for w in widths), *map(render, lines[1:])])


def totals(jobs: Sequence[JobRequest], calibration: Mapping, gpus: int) -> dict:
    """The figures a script wants: expected and requested GPU-hours, the longest limit, the calibration, and the
    wall time on `gpus` GPUs at once (the longest job, or the GPU-hours spread over them, whichever is longer;
    dependencies between jobs are not counted, so it is a lower bound)."""
    submitted = [j for j in jobs if not j.local]
    expected = sum(j.expected_gpu_hours for j in submitted)
    requested = sum(j.gpu_hours for j in submitted)
    gpu_jobs = [j for j in submitted if j.gpus]
    longest_expected = max((j.expected_min / 60 * j.segments for j in gpu_jobs if j.expected_min), default=0.0)
    longest_limit = max((j.runtime_min / 60 * j.segments for j in gpu_jobs), default=0.0)
    return {"expected_gpu_hours": round(expected, 2), "requested_gpu_hours": round(requested, 2),
            "requested_cpu_hours": round(sum(j.cpu_hours for j in submitted), 2),
            "max_job_hours": round(max((j.runtime_min / 60 for j in submitted), default=0.0), 3),
            "uncalibrated_jobs": sum(1 for j in gpu_jobs if j.expected_min is None),
            "jobs": len(jobs), "concurrent_gpus": gpus,
            "wall_hours_expected": round(max(expected / gpus, longest_expected), 2),
            "wall_hours_requested": round(max(requested / gpus, longest_limit), 2),
            "too_wide": sorted({j.wildcards.get("run", j.rule) for j in gpu_jobs if j.gpus > gpus}),
            "calibration": {k: calibration.get(k) for k in ("path", "device", "torch", "date", "how")}}


def main(argv: Sequence[str] | None = None) -> int:
    import json

    from i2a.pipeline import sizing

    parser = argparse.ArgumentParser(prog="i2a plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="files or rules, as snakemake's (default: rule all)")
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE, help="default: profiles/slurm")
    parser.add_argument("--configfile", action="append", default=[],
                        help="merged on config/config.yaml, as snakemake's; may be repeated")
    parser.add_argument("--all", dest="every_job", action="store_true",
                        help="count every job, as if no output existed yet (default: only what would run now)")
    parser.add_argument("--directory", type=Path, default=Path.cwd(), help="the workflow's folder (default: .)")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="the GPUs' calibration file (default: the config's cluster.calibration)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs at once, for the wall time (default: 8)")
    parser.add_argument("--json", action="store_true", help="print the totals as JSON (for scripts)")
    opts = parser.parse_args(argv)
    if opts.gpus < 1:
        parser.error("--gpus must be at least 1")
    try:
        if opts.calibration is not None:
            sizing.load_calibration(opts.calibration)  # before the dry run: a clear message, not a traceback
        jobs, config = _dry_run(opts.targets, opts.profile, opts.configfile, opts.directory, None, opts.every_job,
                                opts.calibration)
        jobs = [_with_expected(job, config) for job in jobs]
        calibration_path = opts.calibration or config["cluster"]["calibration"]
        calibration = {"path": str(calibration_path), **sizing.load_calibration(calibration_path)}
    except sizing.CalibrationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = totals(jobs, calibration, opts.gpus)
    flags = placeholders(jobs)
    if opts.json:
        print(json.dumps({**summary, "placeholders": flags, "runs": training_runs(jobs),
                          "rules": [{"rule": r.rule, "jobs": r.jobs, "expected_gpu_hours": round(r.expected_gpu_hours, 2),
                                     "requested_gpu_hours": round(r.gpu_hours, 2), "uncalibrated_jobs": r.uncalibrated}
                                    for r in summarise(jobs)]}, indent=1))
        return 0
    configs = ", ".join(["config/config.yaml", *opts.configfile])
    targets = " ".join(opts.targets) or "rule all"
    cal = summary["calibration"]
    cluster = config["cluster"]
    print(f"{targets} with profile {opts.profile} ({configs}): {len(jobs)} jobs would run; nothing was run.\n"
          f"Expected hours from {cal['path']} ({cal['device']}, {cal['date']}); limits = expected x "
          f"{cluster['margin']:g} + {cluster['startup_minutes']:g} min, at most {cluster['max_runtime_hours']:g} h "
          "(first attempt; a retry asks for runtime and memory x attempt, up to that cap)")
    if jobs:
        print(format_plan(summarise(jobs)))
    runs = training_runs(jobs)
    if runs:
        print()
        print(format_runs(runs))
    print(f"\nGPU-hours: {summary['expected_gpu_hours']:,.1f} expected, {summary['requested_gpu_hours']:,.1f} "
          f"requested; longest job limit {summary['max_job_hours']:.3g} h. On {opts.gpus} GPUs at once: about "
          f"{summary['wall_hours_expected']:,.1f} h of wall time ({summary['wall_hours_requested']:,.1f} h if every job "
          "ran to its limit; waiting for inputs not counted)")
    if summary["too_wide"]:
        print(f"needs more than {opts.gpus} GPUs in one job: {', '.join(summary['too_wide'])}")
    if summary["uncalibrated_jobs"]:
        print(f"{summary['uncalibrated_jobs']} GPU jobs have no figure in the calibration: they ask for their rule's "
              "fixed limit (measure with `i2a calibrate`)")
    for flag in flags:
        print(f"placeholder: {flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
