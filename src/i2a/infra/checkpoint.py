"""One way to read a checkpoint: `torch.load(weights_only=True)` and one error style for every model file (the
codebook, the GPT, Melception, MelGAN, the feature backbones), so a missing, foreign or unsafe file says the same
thing whichever stage reads it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable


class CheckpointError(ValueError):
    """A model file that exists but cannot be used: unreadable, not a dict, or not the model it should be."""


def load_checkpoint(path: str | Path, what: str, how_to_get: str, map_location: Any = "cpu", mmap: bool = False,
                    safe_globals: Iterable[Any] = ()) -> dict[str, Any]:
    """The dict a model file holds. Nothing is unpickled beyond tensors and plain containers (and the
    `safe_globals` a known file needs); `what` names the model in errors and `how_to_get` says where a missing one
    comes from."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found: {how_to_get}")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - one message for every way a file can fail to load
        raise CheckpointError(
            f"{what} {path} could not be read with torch.load(weights_only=True) ({type(err).__name__}: "
            f"{str(err)[:300]}). If it is a file you trust that pickles Python objects (an old Lightning "
            "checkpoint), save its weights alone once: torch.save(torch.load(p, weights_only=False)['state_dict'], "
            "'weights.pt') and give that") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path}: expected a checkpoint dict or a state dict, got {type(obj).__name__}")
    return obj
