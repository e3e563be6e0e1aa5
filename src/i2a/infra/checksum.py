"""One checksum check for every file the workflow fetches or is given (archives, weights, released checkpoints).

The policy, decided once: a file whose digest differs from the expected one is moved aside to `<name>.bad`
(kept for inspection, never read again), and the error says so and how to get a good copy. The next attempt of
the rule then starts from nothing instead of failing on the same bad file forever.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20


class ChecksumError(ValueError):
    pass


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def set_aside(path: str | os.PathLike) -> Path:
    """Move a bad file out of the way (to `<name>.bad`, replacing an older one) and return where it went."""
    path = Path(path)
    bad = path.with_name(path.name + ".bad")
    os.replace(path, bad)
    return bad


def verify_file(path: str | os.PathLike, expected: str, algorithm: str = "md5", what: str = "",
                remedy: str = "run the same command again to fetch it afresh") -> str:
    """The file's digest, which must start with `expected` (a full digest, or the prefix torchvision embeds in
    its file names). On a mismatch the file is set aside and ChecksumError names both digests and the remedy."""
    path = Path(path)
    actual = file_digest(path, algorithm)
    if not actual.startswith(expected.lower()):
        bad = set_aside(path)
        raise ChecksumError(f"{what or path}: {algorithm} {actual} does not match the expected {expected} "
                            f"(corrupt, truncated or the wrong file). It was moved aside to {bad}; {remedy}.")
    return actual


def content_digest(path: str | os.PathLike) -> str:
    """BLAKE2b of a file's bytes, or of a folder's files (relative names and bytes, in sorted order)."""
    path = Path(path)
    digest = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def listing_digest(folder: str | os.PathLike) -> str:
    """BLAKE2b of a folder's listing (every file's relative name, size and mtime; no contents read): cheap enough
    for every workflow start over 12,000 clips, and it changes when a file is added, removed or replaced.
    Symbolic links are followed; a folder already seen (a symlink loop) is not entered twice."""
    root = Path(folder)
    digest = hashlib.blake2b(digest_size=16)
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
                stamp = f"{st.st_size} {st.st_mtime_ns}"
            except OSError as error:  # a broken link still counts as an entry
                stamp = f"unreadable {error.errno}"
            digest.update(f"{os.path.relpath(path, root)}\0{stamp}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
