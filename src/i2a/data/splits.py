"""VAS train/valid split (design.md §1): per class, the last k sorted clip names are the validation set.

This is how SpecVQGAN's VAS lists were made (12,541 clips -> 11,773 train / 768 valid); there is no test
split, every published VAS number is on these 768 clips.
"""
from __future__ import annotations

from collections import defaultdict

VAS_VALID_PER_CLASS: dict[str, int] = {
    "dog": 128, "fireworks": 128, "baby": 128, "drum": 128,
    "cough": 64, "gun": 64, "hammer": 64, "sneeze": 64,
}


def assign_splits(clips: list[str], valid_per_class: dict[str, int] | int) -> dict[str, str]:
    """'train' or 'valid' for every '<class>/<name>'.

    Names are sorted per class as plain strings (VAS names are zero-padded, so this is numeric order too).
    With a dict, a class it does not name raises (a typo would otherwise silently give no validation clips).
    A class with no more than k clips would have no training clips, which is almost surely a mistake: raise.
    """
    by_class: dict[str, list[str]] = defaultdict(list)
    for clip in clips:
        cls, sep, name = clip.partition("/")
        if not sep or not cls or not name:
            raise ValueError(f"clip {clip!r} is not '<class>/<name>'")
        by_class[cls].append(name)
    out: dict[str, str] = {}
    for cls, names in sorted(by_class.items()):
        if len(set(names)) != len(names):
            raise ValueError(f"class {cls!r} lists a clip name twice")
        if isinstance(valid_per_class, int):
            k = valid_per_class
        elif cls in valid_per_class:
            k = valid_per_class[cls]
        else:
            raise ValueError(f"no validation size for class {cls!r} (valid_per_class has {sorted(valid_per_class)})")
        if k < 0 or k >= len(names):
            raise ValueError(f"class {cls!r}: cannot hold out {k} of {len(names)} clips and keep some for training")
        names = sorted(names)
        cut = len(names) - k
        for i, name in enumerate(names):
            out[f"{cls}/{name}"] = "train" if i < cut else "valid"
    return out
