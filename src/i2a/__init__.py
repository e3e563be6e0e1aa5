"""Image-to-audio study: SpecVQGAN on VAS with swappable frame-feature backbones.

The package's floors, each importing only from those below it (tests/test_layers.py): `infra` (files, downloads,
devices) < `spec` (the config contract and the registries; torch-free) < `data` < `features` < `models` <
`training` < `sampling` < `evaluation` < `report` < `pipeline` (what Snakemake and SLURM call) < `cli`.
"""
from pathlib import Path

# The checkout this package runs from (an editable install: the workflow's folder, with config/, workflow/, profiles/)
SOURCE_CHECKOUT = Path(__file__).resolve().parents[2]
