#!/usr/bin/env bash
# What `make test` sets up as root before the tests, said before it does anything, and how to skip it.
#
#   .ci/notice.sh SLURM BROWSER     each `auto` or `no`, as make test's variables of the same names
#
# Each set-up script says what it would do (--dry-run: it changes nothing). When something is to be installed and
# make runs in a terminal, it waits 10 s so that Ctrl-C can stop it first; CI (no terminal) does not wait.
set -euo pipefail
cd "$(dirname "$0")/.."
slurm=${1:-auto} browser=${2:-auto}

echo "make test: the whole suite. First, as root on a machine with apt-get, what two test files need:"
plan=""
if [[ $slurm == no ]]; then
    echo "slurm-setup: SLURM=no: not set up (tests/workflow/test_slurm.py skips unless a SLURM already answers)"
else
    plan+=$(bash .ci/slurm/setup.sh --dry-run)$'\n'
fi
if [[ $browser == no ]]; then
    echo "browser-setup: BROWSER=no: not installed (the report test skips unless Chromium is installed)"
else
    plan+=$(bash .ci/browser/setup.sh --dry-run)$'\n'
fi
printf '%s' "$plan"
if [[ $slurm != no || $browser != no ]]; then
    echo "To leave this machine alone: make test SLURM=no BROWSER=no (or either one); the SLURM and report tests"
    echo "then skip and say how to run them."
fi
if [[ $plan == *"will install"* || $plan == *"will start"* ]] && [[ -t 0 ]]; then
    echo "Starting in 10 s (Ctrl-C to stop)."
    sleep 10
fi
