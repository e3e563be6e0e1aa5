"""One running Snakemake per results folder.

Snakemake 9 locks the files a run reads and writes, but when any instance that locked ends, it deletes the whole
`.snakemake/locks` folder, the running one's locks included (`persistence._delete_locks`); `--unlock` does the
same. A second invocation in the folder (fetching weights on the login node while the study runs, say) thus lets
a third one start the same jobs again, and two instances then write and delete the same shard.

So the workflow records the instance that executes jobs in `.snakemake/i2a-run.json` (pid, host, process start
time, command), and refuses to start another instance that would lock, or `--unlock`, while that one is alive.
Dry runs, `--lint`, reports and other read-only invocations never lock and are always allowed. The record is
removed when the instance exits; a record left by a killed instance is recognised (its process is gone) and
replaced.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Sequence

RECORD = Path(".snakemake") / "i2a-run.json"

# options after which Snakemake takes no locks (dry runs, summaries, graphs, reports, linting, help)
READ_ONLY = {
    "-n", "--dry-run", "--dryrun", "--lint", "-S", "--summary", "-D", "--detailed-summary", "--dag", "--rulegraph",
    "--filegraph", "--d3dag", "--report", "--report-stylesheet", "-l", "--list", "--list-rules", "--lt",
    "--list-target-rules", "--lc", "--list-changes", "--li", "--list-input-changes", "--lp", "--list-params-changes",
    "--lv", "--list-version-changes", "--lco", "--list-code-changes", "--list-untracked", "--lu", "--version", "-v",
    "-h", "--help", "--containerize", "--compile-wrappers", "--archive", "--print-compilation", "--export-cwl",
    "--list-conda-envs", "--generate-unit-tests", "--cleanup-shadow",
}


# set by in-process planners (i2a.plan) that build a dry-run DAG through the Snakemake API, not its command line
PLANNING_ONLY = False


class AnotherRunError(RuntimeError):
    pass


def invocation_mode(argv: Sequence[str]) -> str:
    """'unlock', 'nolock' (executes without taking locks), 'read-only' (takes no locks) or 'run'."""
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
    if record.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here: trust the record
    pid = int(record.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = record.get("started")
    return started is None or _start_time(pid) in (None, started)


def _describe(record: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("time", 0)))
    return f"pid {record.get('pid')} on {record.get('host')}, since {since}: {record.get('command', '?')}"


def guard(argv: Sequence[str] | None = None, record: Path = RECORD) -> str:
    """Refuse a second instance that would take or delete locks while another one runs in this folder; record
    this one when it is going to execute jobs. Returns the invocation mode."""
    argv = sys.argv[1:] if argv is None else list(argv)
    mode = "read-only" if PLANNING_ONLY else invocation_mode(argv)
    if mode in ("read-only", "nolock"):
        return mode
    record = Path(record)
    record.parent.mkdir(parents=True, exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
            "time": time.time(), "command": "snakemake " + shlex.join(argv)}
    for _ in range(2):
        try:
            other = json.loads(record.read_text())
        except FileNotFoundError:
            other = None
        except (OSError, ValueError):
            other = {}  # unreadable: a torn write of a killed instance
        if other is not None and other.get("pid") != os.getpid():
            if other and _alive(other):
                what = "--unlock would delete its locks" if mode == "unlock" else (
                    "a second instance would delete its locks when it ends (Snakemake removes the whole "
                    ".snakemake/locks folder), and a third could then run the same jobs twice")
                raise AnotherRunError(
                    f"another Snakemake is running in this folder ({_describe(other)}): {what}. Wait for it to "
                    f"finish, or stop it first; a dry run (-n) is always allowed. If it is not running any more "
                    f"(it ran on another machine), delete {record}.")
            record.unlink(missing_ok=True)  # a killed instance's record
        if mode == "unlock":
            return mode
        try:
            fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue  # another instance recorded itself just now: check it
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        atexit.register(release, record)
        return mode
    raise AnotherRunError(f"could not record this run in {record}: another instance keeps writing it")


def release(record: Path = RECORD) -> None:
    """Remove the record if it is this process's."""
    try:
        if json.loads(Path(record).read_text()).get("pid") == os.getpid():
            Path(record).unlink()
    except (OSError, ValueError):
        pass
