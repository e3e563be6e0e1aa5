"""What a run would ask the cluster for, before anything runs: jobs per rule, GPU-hours and CPU-hours.

    python -m i2a.plan                                   # the full study (config/config.yaml, rule all), profiles/slurm
    python -m i2a.plan results/table.csv                 # only what the table needs
    python -m i2a.plan --configfile config/demo.yaml     # the demo
    python -m i2a.plan --all                             # every job, as if no output existed yet

Snakemake itself works out the jobs (a dry run) and each job's request (the rules' resources and threads, then
the profile's default-resources, set-resources and set-threads on top, exactly as `snakemake --profile` would),
for the first attempt; a retried job asks for runtime and memory x attempt. Requested hours are runtime x GPUs
and runtime x CPUs per job (the runtime is a limit: jobs that end sooner are charged less). Local rules run on
the login node and request nothing from SLURM.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

REPO = Path(__file__).resolve().parents[2]
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
        return 0.0 if self.local else self.runtime_min / 60 * self.gpus

    @property
    def cpu_hours(self) -> float:
        return 0.0 if self.local else self.runtime_min / 60 * self.threads


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
        row.gpu_hours += job.gpu_hours
        row.cpu_hours += job.cpu_hours
    return list(by_rule.values())


def _span(values: set[float], fmt: str = "{:g}") -> str:
    low, high = min(values), max(values)
    return fmt.format(low) if low == high else f"{fmt.format(low)}-{fmt.format(high)}"


def format_plan(rows: Sequence[RuleSummary]) -> str:
    """A fixed-width table of the summary with a total line."""
    header = ("rule", "jobs", "partition", "GPUs/job", "CPUs/job", "mem GB/job", "hours/job", "GPU-hours",
              "CPU-hours")
    lines = [header]
    for r in rows:
        lines.append((r.rule, str(r.jobs), ", ".join(sorted(r.partitions)), _span(r.gpus), _span(r.cpus),
                      _span(r.mem_gb), _span(r.runtime_h, "{:.4g}"), f"{r.gpu_hours:,.1f}", f"{r.cpu_hours:,.1f}"))
    lines.append(("total", str(sum(r.jobs for r in rows)), "", "", "", "", "",
                  f"{sum(r.gpu_hours for r in rows):,.1f}", f"{sum(r.cpu_hours for r in rows):,.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = {0, 2}  # text columns; numbers are right-aligned

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
              workdir: Path = REPO, snakefile: Path | None = None, every_job: bool = False) -> list[JobRequest]:
    """The jobs a `snakemake --profile <profile> <targets>` started now would submit, with their requests.

    No targets: the workflow's default target (rule all: the table and the report's files). `every_job` counts
    every job of the DAG, as if none of its outputs existed yet.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings, Quietness,
                                          ResourceSettings)

    from i2a import lock

    lock.PLANNING_ONLY = True  # a dry run: it takes no locks, so it may run beside an executing instance
    workdir = Path(workdir).resolve()
    snakefile = Path(snakefile).resolve() if snakefile else workdir / "workflow" / "Snakefile"
    args = _cli_args(Path(profile).resolve(), [str(Path(f).resolve()) for f in configfiles])
    collector = _JobInfoCollector()
    snakemake_logger = logging.getLogger("snakemake")
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        snakemake_logger.addHandler(collector)  # after the API set up (and cleared) the logger's handlers
        try:
            workflow_api = api.workflow(
                resource_settings=ResourceSettings(
                    cores=UNCAPPED_CORES, default_resources=args.default_resources,
                    overwrite_resources=args.set_resources or {}, overwrite_threads=args.set_threads or {}),
                config_settings=ConfigSettings(configfiles=[Path(f) for f in args.configfile or []],
                                               config=args.config or {}),
                snakefile=snakefile, workdir=workdir)
            dag_api = workflow_api.dag(DAGSettings(targets=set(targets), forceall=every_job))
            dag_api.execute_workflow(executor="dryrun")
            local = _local_rules(workflow_api._workflow)
        finally:
            snakemake_logger.removeHandler(collector)
    return [JobRequest(rule=r.rule_name, wildcards=dict(r.wildcards or {}), threads=int(r.threads),
                       resources={k: v for k, v in r.resources.items() if not k.startswith("_")},
                       local=r.rule_name in local)
            for r in collector.records]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m i2a.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="files or rules, as snakemake's (default: rule all)")
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE, help="default: profiles/slurm")
    parser.add_argument("--configfile", action="append", default=[],
                        help="merged on config/config.yaml, as snakemake's; may be repeated")
    parser.add_argument("--all", dest="every_job", action="store_true",
                        help="count every job, as if no output existed yet (default: only what would run now)")
    parser.add_argument("--directory", type=Path, default=Path.cwd(), help="the workflow's folder (default: .)")
    opts = parser.parse_args(argv)
    jobs = plan_jobs(opts.targets, opts.profile, opts.configfile, workdir=opts.directory, every_job=opts.every_job)
    configs = ", ".join(["config/config.yaml", *opts.configfile])
    targets = " ".join(opts.targets) or "rule all"
    print(f"{targets} with profile {opts.profile} ({configs}): {len(jobs)} jobs would run; requests of a "
          "first attempt (a retry asks for runtime and memory x attempt); nothing was run")
    if jobs:
        print(format_plan(summarise(jobs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
