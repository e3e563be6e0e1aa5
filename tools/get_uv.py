"""Put the `uv` binary at a path, with nothing but Python's standard library and the package index.

`pip install --user uv` fails on the externally managed Python of current Debian and Ubuntu (PEP 668), and a stock
system may have no pip or venv at all. uv ships as a wheel whose data folder holds the binary: this fetches that
wheel from PyPI's simple index (PEP 691 JSON), checks its SHA-256 against the index, and unpacks the binary.

    python3 tools/get_uv.py 0.13.9 ~/.local/bin/uv
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import stat
import sys
import urllib.request
import zipfile
from pathlib import Path

INDEX = os.environ.get("I2A_UV_INDEX", "https://pypi.org/simple/uv/")


def machine_arch() -> str:
    """This machine's architecture as wheel names spell it."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def platform_tags() -> list[str]:
    """Substrings of the wheel file names that run here, best first."""
    arch = machine_arch()
    if sys.platform.startswith("linux"):
        libc = "musllinux" if "musl" in (platform.libc_ver()[0] or "").lower() else "manylinux"
        return [f"{libc}_", f"{libc}2014"] if arch in ("x86_64", "aarch64") else []
    if sys.platform == "darwin":
        return ["macosx"]
    return []


def pick_wheel(files: list[dict], version: str) -> dict:
    linux_arch = machine_arch()
    wanted = [f for f in files if f["filename"].startswith(f"uv-{version}-") and f["filename"].endswith(".whl")]
    for tag in platform_tags():
        for f in wanted:
            name = f["filename"]
            if tag in name and (sys.platform == "darwin" or linux_arch in name):
                return f
    raise SystemExit(f"get_uv: no uv {version} wheel for {sys.platform}/{platform.machine()} on {INDEX}; install uv "
                     "yourself (https://docs.astral.sh/uv/) and put it on PATH")


def fetch(version: str, dest: Path) -> Path:
    request = urllib.request.Request(INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    wheel = pick_wheel(files, version)
    with urllib.request.urlopen(wheel["url"], timeout=300) as response:
        payload = response.read()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != wheel["hashes"]["sha256"]:
        raise SystemExit(f"get_uv: {wheel['filename']} has SHA-256 {digest}, the index says {wheel['hashes']['sha256']}")
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        member = next((n for n in archive.namelist() if n.endswith(".data/scripts/uv")), None)
        if member is None:
            raise SystemExit(f"get_uv: no uv binary inside {wheel['filename']}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        tmp.write_bytes(archive.read(member))
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    tmp.replace(dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(f"uv {sys.argv[1]} -> {fetch(sys.argv[1], Path(sys.argv[2]).expanduser())}")
