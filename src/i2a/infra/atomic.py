"""One way to write a file or folder: under a temporary name beside it, renamed into place when complete.

A job killed mid-write (a node dying, SLURM's time limit, kill -9) then leaves either the old file or none under
the final name, never a truncated one; the temporary name starts with a dot so that no glob picks it up.
"""
from __future__ import annotations

import glob
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _temporary_sibling(path: Path) -> Path:
    # keep the suffix: writers such as soundfile and np.save pick the format from it
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.part{path.suffix}")


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries a killed writer of `path` left beside it (kill -9 runs no cleanup); call it when a
    job that writes `path` starts, when no other writer of it can be running. Returns what was removed."""
    path = Path(path)
    found = sorted(path.parent.glob(f".{glob.escape(path.stem)}.{'[0-9a-f]' * 8}.part{glob.escape(path.suffix)}"))
    for leftover in found:
        _remove(leftover)
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` (a file or a whole folder), on an
    exception it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():  # a folder cannot replace a non-empty one: move the old one away first
            old = _temporary_sibling(path)
            path.replace(old)
            tmp.replace(path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def copy_file(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy (streamed: files larger than memory are fine) so that `dest` appears only complete."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
