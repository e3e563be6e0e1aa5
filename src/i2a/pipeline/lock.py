"""One running Snakemake per results folder.

Snakemake 9 locks the files a run reads and writes, but when any instance that locked ends, it deletes the whole
`.snakemake/locks` folder, the running one's locks included (`persistence._delete_locks`); `--unlock` does the
same. A second invocation in the folder (fetching weights on the login node while the study runs, say) thus lets
a third one start the same jobs again, and two instances then write and delete the same shard.

So the workflow records the instance that executes jobs in `.snakemake/i2a-run.json` (pid, host, process start
time, command), and refuses to start another instance that would lock, `--unlock`, `--cleanup-shadow` or
`--containerize` (both take the locks, then delete them all), or execute jobs with `--nolock` (it would run the same
jobs in the same folders), while that one is alive. Dry runs, `--lint`, reports and other read-only invocations
never lock and are always allowed; the jobs a running instance spawns do not call the guard
(`workflow.is_main_process`).

The claim is atomic: instances on one machine check and claim one at a time (an flock on `i2a-run.claim`), and a
record appears only whole (written under a temporary name, then hard-linked to its name, which fails if one exists),
so no instance ever reads a half-written one. A record left by a killed instance is recognised (its process is
gone) and replaced; so is one that cannot be read as a record (a hand edit, a torn write of an older version) once
it has not changed for SETTLE_S seconds: its writer is gone.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import re
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

log = logging.getLogger(__name__)

RECORD = Path(".snakemake") / "i2a-run.json"
# an unreadable record unchanged this long has no writer any more (a whole record is linked in one step)
SETTLE_S = 2.0
PID_MAX = 1 << 22  # Linux's largest pid_max

# options after which Snakemake takes no locks (dry runs, summaries, graphs, reports, linting, help)
READ_ONLY = {
    "-n", "--dry-run", "--dryrun", "--lint", "-S", "--summary", "-D", "--detailed-summary", "--dag", "--rulegraph",
    "--filegraph", "--d3dag", "--report", "--report-stylesheet", "-l", "--list", "--list-rules", "--lt",
    "--list-target-rules", "--lc", "--list-changes", "--li", "--list-input-changes", "--lp", "--list-params-changes",
    "--lv", "--list-version-changes", "--lco", "--list-code-changes", "--list-untracked", "--lu", "--version", "-v",
    "-h", "--help", "--compile-wrappers", "--archive", "--print-compilation", "--export-cwl",
    "--list-conda-envs", "--generate-unit-tests",
}


# set, for the time they plan, by in-process planners (i2a.pipeline.plan) that build a dry-run DAG through the
# Snakemake API, not its command line
PLANNING_ONLY = False


@contextlib.contextmanager
def planning_only():
    """A dry run planned in this process: it takes no locks, so it may run beside an executing instance. Only for
    its duration: the same process may guard a real run afterwards."""
    global PLANNING_ONLY
    before, PLANNING_ONLY = PLANNING_ONLY, True
    try:
        yield
    finally:
        PLANNING_ONLY = before


class AnotherRunError(RuntimeError):
    pass


def invocation_mode(argv: Sequence[str]) -> str:
    """'unlock', 'nolock' (executes jobs without taking locks: guarded as a run), 'read-only' (takes no locks) or
    'run' (takes locks: executes jobs, or --cleanup-shadow and --containerize)."""
    args = list(argv)
    if "--unlock" in args:
        return "unlock"
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in READ_ONLY or (re.fullmatch(r"-[A-Za-z]{2,}", arg) and "n" in arg[1:]):  # -n and -np, -nq...
            return "read-only"
    if "--nolock" in args:
        return "nolock"
    return "run"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a pid that was reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(record: dict) -> bool:
    if record["host"] != socket.gethostname():
        return True  # another machine's process cannot be checked from here: trust the record
    pid = record["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = record.get("started")
    return started is None or _start_time(pid) in (None, started)


def _problem(record: object) -> str | None:
    """Why a parsed record is not one this guard writes, or None."""
    if not isinstance(record, dict):
        return f"it holds {json.dumps(record)[:60]}, not a record"
    pid = record.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < PID_MAX:
        return f"its pid {pid!r} is not a process id"
    if not isinstance(record.get("host"), str) or not isinstance(record.get("started"), (str, type(None))) \
            or not isinstance(record.get("time", 0), (int, float)):
        return "its host, start or time is not what this guard writes"
    return None


def _read(record: Path) -> dict | None:
    """The recorded instance, None when there is none. A record that cannot be read as one is waited on until it
    has not changed for SETTLE_S seconds, then it is stale: it is removed, with a warning."""
    while True:
        try:
            stat = record.stat()
            text = record.read_text()
        except FileNotFoundError:
            return None
        try:
            parsed = json.loads(text)
        except ValueError as error:
            problem = f"it is not JSON ({error}: {text[:60]!r})"
        else:
            problem = _problem(parsed)
        if problem is None:
            return parsed
        age = time.time() - stat.st_mtime
        if age < SETTLE_S:
            time.sleep(min(0.1, SETTLE_S - age))
            continue
        log.warning("%s could not be read as a run record (%s) and has not changed for %.0f s: whatever wrote it "
                    "is gone; replaced", record, problem, age)
        record.unlink(missing_ok=True)
        return None


@contextmanager
def _claiming(record: Path) -> Iterator[None]:
    """Instances on this machine check and claim the record one at a time."""
    with open(record.with_name("i2a-run.claim"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _link(record: Path, mine: dict) -> bool:
    """Put a whole record under its name in one step; False when one is already there."""
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(mine))
    try:
        os.link(tmp, record)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _describe(record: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("time", 0)))
    return f"pid {record.get('pid')} on {record.get('host')}, since {since}: {record.get('command', '?')}"


def guard(argv: Sequence[str] | None = None, record: Path = RECORD) -> str:
    """Refuse a second instance that would take or delete locks, or run jobs, while another one runs in this
    folder; record this one when it is going to. Returns the invocation mode."""
    argv = sys.argv[1:] if argv is None else list(argv)
    mode = "read-only" if PLANNING_ONLY else invocation_mode(argv)
    if mode == "read-only":
        return mode
    record = Path(record)
    record.parent.mkdir(parents=True, exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
            "time": time.time(), "command": "snakemake " + shlex.join(argv)}
    with _claiming(record):
        for _ in range(2):
            other = _read(record)
            if other is not None and (other["pid"], other["host"]) == (mine["pid"], mine["host"]):
                return mode  # this process recorded itself already
            if other is not None:
                if _alive(other):
                    what = {"unlock": "--unlock would delete its locks",
                            "nolock": "--nolock would run the same jobs in the same folders beside it"}.get(mode, (
                        "a second instance would delete its locks when it ends (Snakemake removes the whole "
                        ".snakemake/locks folder), and a third could then run the same jobs twice"))
                    raise AnotherRunError(
                        f"another Snakemake is running in this folder ({_describe(other)}): {what}. Wait for it to "
                        f"finish, or stop it first; a dry run (-n) is always allowed. If it is not running any more "
                        f"(it ran on another machine), delete {record}.")
                record.unlink(missing_ok=True)  # a killed instance's record
            if mode == "unlock":
                return mode
            if _link(record, mine):
                atexit.register(release, record)
                return mode
            # another machine's instance recorded itself just now: check it
    raise AnotherRunError(f"could not record this run in {record}: another instance keeps writing it")


def release(record: Path = RECORD) -> None:
    """Remove the record if it is this process's."""
    try:
        mine = json.loads(Path(record).read_text())
    except (OSError, ValueError):
        return
    if _problem(mine) is None and (mine["pid"], mine["host"]) == (os.getpid(), socket.gethostname()):
        Path(record).unlink(missing_ok=True)
