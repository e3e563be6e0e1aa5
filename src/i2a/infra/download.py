"""Downloads that survive flaky networks and never leave a half-written file under the final name.

Used on the login node (localrules): VAS.zip, released SpecVQGAN checkpoints, backbone weights.
"""
from __future__ import annotations

import logging
import re
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from i2a.infra.atomic import atomic_path, copy_file, write_text
from i2a.infra.checksum import ChecksumError, file_digest, set_aside, verify_file

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    pass


def _open(url: str, start: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "i2a-workflow"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _confirmation_link(page_url: str, html: bytes) -> str | None:
    """Google Drive answers large files with a "can't scan for viruses" page; the real link is its form."""
    from urllib.parse import urlencode, urljoin

    text = html.decode("utf-8", "replace")
    action = re.search(r'<form[^>]*action="([^"]+)"', text)
    fields = dict(re.findall(r'name="([^"]+)"\s+value="([^"]*)"', text))
    if action and "id" in fields:
        return urljoin(page_url, action.group(1).replace("&amp;", "&")) + "?" + urlencode(fields)
    return None


# Google Drive's "can't scan for viruses" page leads from drive.google.com to drive.usercontent.google.com
CONFIRMATION_HOSTS = ("drive.google.com", "drive.usercontent.google.com", "docs.google.com")


def followable_confirmation(configured_url: str, link: str) -> bool:
    """A confirmation form is followed only over https (http only when the configured url is http) and only to the
    configured host or Google Drive's: a served page must not lead to a local file (file://) or anywhere else."""
    from urllib.parse import urlsplit

    origin, target = urlsplit(configured_url), urlsplit(link)
    schemes = {"https", origin.scheme} & {"https", "http"}
    return target.scheme in schemes and target.hostname in {origin.hostname, *CONFIRMATION_HOSTS}


def download(url: str, dest: str | Path, md5: str | None = None, sha256: str | None = None,
             retries: int = 5, timeout: float = 60.0, validate: Callable[[Path], None] | None = None) -> Path:
    """Fetch url to dest, resuming a previous partial download (dest + '.part') and checking the digest.

    The file appears under `dest` only once it is complete and verified: its digest (when one is known) and
    `validate(part)` (for example `check_zip`, when no digest is known) must pass, else it is set aside (see
    i2a.infra.checksum) and the next attempt downloads it afresh.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    configured = url
    for attempt in range(1, retries + 1):
        start = part.stat().st_size if part.exists() else 0
        try:
            with _open(url, start, timeout) as response:
                if "text/html" in response.headers.get("Content-Type", ""):  # a web page, not the file
                    confirmed = _confirmation_link(response.geturl(), response.read(1 << 20))
                    if confirmed is None:
                        raise DownloadError(
                            f"{url} returned a web page instead of the file (Google Drive: quota exceeded, or "
                            f"the file moved). Download it in a browser and copy it to {dest}, or set the url to "
                            "another copy (vas.url), or point vas.source: local at an unpacked copy")
                    if not followable_confirmation(configured, confirmed):
                        raise DownloadError(
                            f"{url} returned a web page whose form leads to {confirmed.split('?')[0]}: not following "
                            f"it (only https, or the configured url's scheme, to its host or Google Drive's). "
                            f"Download the file in a browser and copy it to {dest}")
                    log.info("following the confirmation form of %s", url)
                    url = confirmed
                    continue
                if start and response.status != 206:  # the server ignored Range: start over
                    start = 0
                total = response.headers.get("Content-Length")
                total = int(total) + start if total else None
                with open(part, "ab" if start else "wb") as fh:
                    done, last = start, time.monotonic()
                    for block in iter(lambda: response.read(CHUNK), b""):
                        fh.write(block)
                        done += len(block)
                        if time.monotonic() - last > 10:
                            log.info("%s: %.1f MB%s", dest.name, done / 1e6, f" of {total / 1e6:.1f}" if total else "")
                            last = time.monotonic()
            break
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
            if attempt == retries:
                raise DownloadError(
                    f"could not download {url} -> {dest}: {error}. If this machine is offline, run the download "
                    f"on a machine with internet access and copy the file to {dest} (a partial file {part.name} is "
                    "kept and resumed on the next try)") from error
            log.warning("download of %s failed (%s), retry %d/%d", url, error, attempt, retries)
            time.sleep(min(30, 2 ** attempt))
    else:
        raise DownloadError(f"could not download {url}: too many redirects through confirmation pages")
    try:
        for algorithm, expected in (("md5", md5), ("sha256", sha256)):
            if expected:
                verify_file(part, expected, algorithm, what=f"download of {url}",
                            remedy="run the rule again to download it afresh")
    except ChecksumError as error:
        raise DownloadError(str(error)) from None
    if validate is not None:
        try:
            validate(part)
        except Exception as error:  # noqa: BLE001 - whatever the check found, the file is not usable
            bad = set_aside(part)
            raise DownloadError(f"the download of {url} is incomplete or damaged ({error}). It was moved aside to "
                                f"{bad}; run the rule again to download it afresh") from None
    part.replace(dest)
    return dest


def fetch_archive(url: str, dest: str | Path, md5: str | None = None) -> str:
    """The download rules' job: download resumably, prove the file whole (its digest, or every zip member's CRC),
    and only then record its MD5 beside it, so that a truncated first download is never trusted. Returns the MD5."""
    dest = Path(dest)
    if md5:  # download() verifies the digest, which proves the file whole: no zip check, no second hash
        path = download(url, dest, md5=md5)
        _record_md5(path, md5.lower())
        return md5.lower()
    path = download(url, dest, validate=check_zip if dest.suffix == ".zip" else None)
    return record_or_check_md5(path, None)


def check_zip(path: str | Path) -> None:
    """Raise unless the zip's central directory reads and every member's CRC matches (reads the whole file)."""
    try:
        with zipfile.ZipFile(path) as zf:
            first_bad = zf.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"{Path(path).name} is not a readable zip archive: {error}") from None
    if first_bad is not None:
        raise ValueError(f"{Path(path).name}: member {first_bad!r} fails its CRC check")


def record_or_check_md5(path: str | Path, expected: str | None) -> str:
    """Verify against the configured MD5, else against the one recorded beside the file (path + '.md5').

    Call it only on a file already proved whole (a verified digest, or `check_zip`): the MD5 it records is trusted
    from then on, to notice a file that changes afterwards.
    """
    path = Path(path)
    sidecar = path.with_name(path.name + ".md5")
    actual = file_digest(path, "md5")
    if expected and actual != expected.lower():
        bad = discard_archive(path)
        raise DownloadError(f"{path}: MD5 {actual} differs from the configured {expected}. It was moved aside to "
                            f"{bad}; run the rule again to download it afresh")
    recorded = sidecar.read_text().split()[0] if sidecar.exists() else None
    if not expected and recorded and actual != recorded:
        raise DownloadError(f"{path}: MD5 {actual} differs from {recorded}, recorded in {sidecar} when it was first "
                            f"downloaded whole, so the file changed since. To download it afresh, delete both {path} "
                            f"and {sidecar} and run again; to keep this file, delete {sidecar} only")
    if recorded != actual:
        _record_md5(path, actual)
    return actual


def discard_archive(path: Path) -> Path:
    """Set a damaged archive aside (see i2a.infra.checksum) together with its recorded MD5, so that the next run
    downloads it afresh; returns where it went."""
    bad = set_aside(path)
    path.with_name(path.name + ".md5").unlink(missing_ok=True)
    return bad


def _record_md5(path: Path, md5: str) -> None:
    """The MD5 of a file proved whole, beside it (path + '.md5', md5sum's format)."""
    write_text(path.with_name(path.name + ".md5"), f"{md5}  {path.name}\n")


class _CheckedTarInfo(tarfile.TarInfo):
    """A tar header whose member lies before it (a negative size) is refused: Python's tarfile would read the
    same header again forever (CVE-2025-8194, Python < 3.11.14 / 3.12.12 / 3.13.6)."""

    def _proc_member(self, tarfile_):
        member = super()._proc_member(tarfile_)
        if member.size < 0 or tarfile_.offset <= self.offset:
            raise ValueError(f"{tarfile_.name}: a tar header at byte {self.offset} has a negative size "
                             f"({member.size}); the archive is damaged or crafted and is not read")
        return member


def open_tar(path: str | Path) -> tarfile.TarFile:
    """A tar file for reading (any compression), its headers checked as they are read (see _CheckedTarInfo)."""
    return tarfile.open(path, "r:*", tarinfo=_CheckedTarInfo)


def extract_checkpoint(archive: str | Path, dest: str | Path, member: str | None = None) -> Path:
    """A checkpoint inside a released SpecVQGAN tar.gz (logs/<name>/checkpoints/*.ckpt), copied to dest: `member`
    (a file name, or a path inside the archive), else the single *.ckpt (last.ckpt set aside when there are two)."""
    dest = Path(dest)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, open_tar(archive) as tar:
        tar.extractall(tmp, filter="data")
        found = sorted(Path(tmp).rglob("*.ckpt"))
        if member:
            candidates = [c for c in Path(tmp).rglob("*")
                          if c.is_file() and member in (c.name, c.relative_to(tmp).as_posix())]
        else:
            named = [c for c in found if c.name != "last.ckpt"]
            candidates = named if len(found) > 1 and len(named) == 1 else found
        if len(candidates) != 1:
            listed = [c.relative_to(tmp).as_posix() for c in found]
            raise DownloadError(f"{archive}: expected one checkpoint{f' named {member}' if member else ''} inside, "
                                f"found {listed}")
        copy_file(candidates[0], dest)
    return dest


def unpack_zip(archive: str | Path, dest: str | Path) -> Path:
    """Unpack into a temporary folder beside dest, then rename: a killed unpack leaves no half folder."""
    dest = Path(dest)
    with atomic_path(dest) as tmp, zipfile.ZipFile(archive) as zf:
        tmp.mkdir()
        for info in zf.infolist():
            target = (tmp / info.filename).resolve()
            if not str(target).startswith(str(tmp.resolve())):
                raise DownloadError(f"{archive}: unsafe path {info.filename!r} in archive")
        zf.extractall(tmp)
    return dest
