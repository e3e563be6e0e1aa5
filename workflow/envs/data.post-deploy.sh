#!/usr/bin/env bash
# Snakemake runs this once, inside the environment it has just made (--use-conda), from its working directory:
# it installs the workflow's own package (src/i2a, editable), so jobs import it like any other package.
# Run snakemake from the repository root, or set I2A_ROOT to it.
set -euo pipefail
root="${I2A_ROOT:-$PWD}"
if [ ! -f "$root/pyproject.toml" ] || [ ! -d "$root/src/i2a" ]; then
    echo "post-deploy: $root is not the i2a repository (no pyproject.toml and src/i2a): run snakemake from the" \
         "repository root or set I2A_ROOT" >&2
    exit 1
fi
python -m pip install --no-deps --editable "$root"
