"""Shared fixtures: the golden reference files live in ../shared beside the checkout (absent in a user's clone)."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test (with the reason) when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file {path} not present (../shared is only beside the developers' checkout)")
    return path


# The two long end-to-end files (the demo, the demo through SLURM) go first, so that with `-n 2` (pyproject's
# addopts) each starts at once on its own worker while the other worker also takes the short files.
LONG_FIRST = ("test_workflow.py", "test_slurm.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))


class Crash(Exception):
    """What a killed job looks like to a test: training stops mid-epoch, nothing after it runs."""


def crash_after(step: int):
    """A Lightning callback that 'kills' training once `step` optimizer steps are done."""
    import lightning.pytorch as pl

    class CrashAt(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= step:
                raise Crash(f"killed at step {trainer.global_step}")

    return CrashAt()
