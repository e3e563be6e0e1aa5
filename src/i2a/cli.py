"""The installed `i2a` command: `i2a generate` and `i2a app` (sound for your own images and videos), `i2a plan` (what the
study would ask a SLURM cluster for) and `i2a calibrate` (the machine's throughput the plan is sized from)."""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

COMMANDS = {
    "generate": ("i2a.sampling.cli", "sound for your own images and videos with a run's or a released model"),
    "app": ("i2a.sampling.cli", "a local web page to try a model: upload a picture or a video, hear its sounds"),
    "plan": ("i2a.pipeline.plan", "expected and requested hours per rule and training run on SLURM (make plan)"),
    "calibrate": ("i2a.pipeline.calibrate", "measure this machine's throughput for each compute-heavy rule"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: i2a {" + ",".join(COMMANDS) + "} ...\n")
        for name, (_, what) in COMMANDS.items():
            print(f"  {name:<10} {what}")
        print("\n`i2a <command> --help` for its options")
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    # generate's own parser names its subcommands (generate, app); plan and calibrate parse only their options
    return module.main(argv if argv[0] in ("generate", "app") else argv[1:])


if __name__ == "__main__":
    sys.exit(main())
