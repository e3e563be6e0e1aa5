"""On-disk arrays shared by the stages: per-shard .npy files, written atomically, read memory-mapped."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from i2a.infra.atomic import atomic_path


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Write an .npy so that a killed job never leaves a half-written file under the final name."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


class NpyRowWriter:
    """Append rows to an .npy whose length is known only at the end, holding one row in memory at a time.

    Rows go to a temporary raw file; `close()` writes the header and streams the rows behind it, then renames
    the result into place (atomic, like save_npy). Used as a context manager, an exception leaves nothing.
    """

    def __init__(self, path: str | Path, row_shape: tuple[int, ...], dtype="float32"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.row_shape, self.dtype, self.rows = tuple(row_shape), np.dtype(dtype), 0
        fd, raw = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".rows")
        self._raw_path, self._raw = Path(raw), os.fdopen(fd, "wb")

    def append(self, row: np.ndarray) -> None:
        row = np.ascontiguousarray(row, dtype=self.dtype)
        if row.shape != self.row_shape:
            raise ValueError(f"{self.path}: row of shape {row.shape}, expected {self.row_shape}")
        self._raw.write(row.tobytes())
        self.rows += 1

    def close(self) -> None:
        self._raw.close()
        try:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as out, open(self._raw_path, "rb") as rows:
                header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                          "shape": (self.rows, *self.row_shape)}
                np.lib.format.write_array_header_1_0(out, header)
                shutil.copyfileobj(rows, out, 1 << 22)
        finally:
            self._raw_path.unlink(missing_ok=True)

    def abort(self) -> None:
        self._raw.close()
        self._raw_path.unlink(missing_ok=True)

    def __enter__(self) -> "NpyRowWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class ShardedArray:
    """Row-wise concatenation of per-shard .npy files, memory-mapped.

    Lets data loaders index a whole split (e.g. 11,773 x 212 x 2048 features) without loading it into memory.
    """

    def __init__(self, paths: Sequence[str | Path]):
        self.paths = [Path(p) for p in paths]
        self.arrays = [np.load(p, mmap_mode="r") for p in self.paths]
        if not self.arrays:
            raise ValueError("ShardedArray needs at least one shard")
        tails = {a.shape[1:] for a in self.arrays if len(a)}
        if len(tails) > 1:
            raise ValueError(f"shards disagree on row shape: {sorted(tails)}")
        self.row_shape = tails.pop() if tails else self.arrays[0].shape[1:]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    @property
    def dtype(self):
        return self.arrays[0].dtype

    def __getitem__(self, key: int | tuple) -> np.ndarray:
        """Row `i` (`self[i]`), or part of it (`self[i, frames]`, e.g. the S frames a run uses: only those are read
        from the memory map), as an array in memory."""
        index, *within = key if isinstance(key, tuple) else (key,)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return np.array(self.arrays[shard][(index - self.offsets[shard], *within)])

    def to_array(self) -> np.ndarray:
        """Everything in memory: only for small splits (the demo, the 768 validation clips)."""
        return np.concatenate([np.asarray(a) for a in self.arrays], axis=0)


def finite_rows(feats, chunk: int = 64) -> np.ndarray:
    """Which rows of an [N, frames, D] array are all finite; a failed extraction leaves a row of NaN."""
    arrays = getattr(feats, "arrays", [feats])  # a ShardedArray's memory maps, read in slices
    return np.concatenate([np.isfinite(np.asarray(a[i:i + chunk])).all(axis=(1, 2))
                           for a in arrays for i in range(0, len(a), chunk)] or [np.zeros(0, bool)])
