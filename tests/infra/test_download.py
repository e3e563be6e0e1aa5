"""Downloads: resume, digest checks, atomic results, safe unpacking (a loopback HTTP server, no internet)."""
import hashlib
import io
import zipfile
from types import SimpleNamespace

import pytest

from loopback import ranged, serve, tar_bytes
from i2a.infra.download import (DownloadError, download, extract_checkpoint, record_or_check_md5, unpack_zip)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture()
def server():
    """A file server that honours Range; `.requests` lists the Range header of every request."""
    requests = []

    def respond(path, range_header):
        requests.append(range_header)
        return ranged(PAYLOAD, range_header)

    with serve(respond) as base:
        yield SimpleNamespace(url=f"{base}/file.bin", requests=requests)


def test_download_resumes_a_partial_file_and_checks_md5(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])
    download(server.url, dest, md5=hashlib.md5(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["bytes=1000-"]
    assert not (tmp_path / "file.bin.part").exists()


def test_wrong_md5_leaves_nothing_under_the_final_name(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="does not match"):
        download(server.url, dest, md5="0" * 32)
    assert not dest.exists() and not (tmp_path / "file.bin.part").exists()


def test_unreachable_host_says_what_to_do(tmp_path):
    with pytest.raises(DownloadError, match="copy the file to"):
        download("http://127.0.0.1:9/nothing", tmp_path / "x.bin", retries=1, timeout=2)


def test_md5_is_recorded_then_checked_on_reuse(tmp_path):
    path = tmp_path / "VAS.zip"
    path.write_bytes(b"first")
    record_or_check_md5(path, None)
    assert (tmp_path / "VAS.zip.md5").read_text().split()[0] == hashlib.md5(b"first").hexdigest()
    path.write_bytes(b"changed")
    with pytest.raises(DownloadError, match="differs"):
        record_or_check_md5(path, None)


def test_extract_checkpoint_finds_the_ckpt_in_a_specvqgan_archive(tmp_path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(tar_bytes({"logs/x/checkpoints/epoch_259.ckpt": b"weights", "logs/x/configs/a.yaml": b"c"},
                                  gzip=True))
    out = extract_checkpoint(archive, tmp_path / "vas_codebook.ckpt")
    assert out.read_bytes() == b"weights"


def test_unpack_zip_refuses_paths_outside_the_target(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(DownloadError, match="unsafe path"):
        unpack_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escape.txt").exists()


@pytest.fixture()
def drive():
    """Google Drive's answer for a large file: a warning page whose form leads to the file."""
    def respond(path, range_header):
        if path.startswith("/uc"):
            return 200, (b'<html><body><form id="download-form" action="/download" method="get">'
                         b'<input type="hidden" name="id" value="abc"><input type="hidden" name="export" '
                         b'value="download"><input type="hidden" name="confirm" value="t"></form></body></html>'), \
                "text/html; charset=utf-8"
        if path == "/download?id=abc&export=download&confirm=t":
            return 200, PAYLOAD, "application/octet-stream"
        return 200, b"<html><body>Too many users have viewed or downloaded this file</body></html>", "text/html"

    with serve(respond) as base:
        yield base


def test_google_drive_warning_page_is_followed_to_the_file(drive, tmp_path):
    dest = download(f"{drive}/uc?export=download&id=abc", tmp_path / "VAS.zip", md5=hashlib.md5(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD


def test_a_web_page_instead_of_the_file_says_what_to_do(drive, tmp_path):
    with pytest.raises(DownloadError, match="web page instead of the file.*vas.source: local"):
        download(f"{drive}/quota", tmp_path / "VAS.zip")
    assert list(tmp_path.iterdir()) == []


def test_unpack_vas_lays_out_classes_and_leaves_nothing_half_done(tmp_path):
    from i2a.data.clips import unpack_vas

    archive = tmp_path / "VAS.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for rel in ["VAS/dog/videos/video_00001.mp4", "VAS/dog/videos/video_00002.mp4", "VAS/baby/videos/v 'ü'.mp4",
                    "VAS/README.txt"]:
            zf.writestr(rel, rel)
    counts = unpack_vas(archive, tmp_path / "raw")
    assert counts == {"dog": 2, "baby": 1}
    assert sorted(str(p.relative_to(tmp_path / "raw")) for p in (tmp_path / "raw").rglob("*.mp4")) == [
        "baby/v 'ü'.mp4", "dog/video_00001.mp4", "dog/video_00002.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VAS.zip", "raw"]
    # an archive without class folders fails without leaving a folder behind
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("misc/a.mp4", "x")
    with pytest.raises(ValueError, match="no videos inside class folders"):
        unpack_vas(tmp_path / "other.zip", tmp_path / "raw2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VAS.zip", "other.zip", "raw"]


def _zip_bytes(n_clips: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n_clips):
            zf.writestr(f"VAS/dog/videos/video_{i:05d}.mp4", bytes(range(256)) * (40 + i))
    return buf.getvalue()


def test_a_truncated_first_download_is_never_recorded_as_the_truth(tmp_path):
    """Issue 12.4: with no vas.md5, the first download's MD5 was trusted even when it was truncated, and every later
    run failed 'MD5 differs from the one recorded' until someone deleted VAS.zip.md5."""
    from i2a.data.clips import unpack_vas
    from i2a.infra.download import fetch_archive

    whole = _zip_bytes(3)
    truncated = [True]  # a proxy that drops the connection, announcing the cut file as complete

    def respond(path, range_header):
        return 200, whole[: len(whole) // 2] if truncated[0] else whole, "application/zip"

    dest = tmp_path / "VAS.zip"
    with serve(respond) as base:
        with pytest.raises(DownloadError, match="incomplete or damaged.*moved aside.*run the rule again"):
            fetch_archive(f"{base}/VAS.zip", dest)
        assert not dest.exists() and not (tmp_path / "VAS.zip.md5").exists()
        assert (tmp_path / "VAS.zip.part.bad").exists()
        truncated[0] = False  # the rule's next attempt
        md5 = fetch_archive(f"{base}/VAS.zip", dest)
    assert md5 == hashlib.md5(whole).hexdigest()
    assert (tmp_path / "VAS.zip.md5").read_text().split()[0] == md5
    assert unpack_vas(dest, tmp_path / "raw") == {"dog": 3}


def test_a_configured_md5_is_checked_once_and_recorded(tmp_path, monkeypatch):
    """With vas.md5 the download's digest check proves the archive whole: no zip check and no second hash of a
    multi-GB file; a wrong digest records nothing."""
    import i2a.infra.download as dl

    whole = _zip_bytes(2)
    md5 = hashlib.md5(whole).hexdigest()
    dest = tmp_path / "VAS.zip"

    def not_again(*args, **kwargs):
        raise AssertionError("the archive was read again after its digest was verified")

    monkeypatch.setattr(dl, "check_zip", not_again)
    monkeypatch.setattr(dl, "file_digest", not_again)
    with serve(lambda path, range_header: (200, whole, "application/zip")) as base:
        with pytest.raises(DownloadError, match="md5 .* does not match the expected 0{32}"):
            dl.fetch_archive(f"{base}/VAS.zip", dest, md5="0" * 32)
        assert not dest.exists() and not (tmp_path / "VAS.zip.md5").exists()
        assert dl.fetch_archive(f"{base}/VAS.zip", dest, md5=md5.upper()) == md5
    assert dest.read_bytes() == whole
    assert (tmp_path / "VAS.zip.md5").read_text() == f"{md5}  VAS.zip\n"


def test_a_damaged_archive_is_set_aside_with_its_md5_so_the_next_run_downloads_afresh(tmp_path):
    from i2a.data.clips import unpack_vas

    dest = tmp_path / "VAS.zip"
    dest.write_bytes(_zip_bytes(2)[:-30])  # a zip whose directory was cut off after its MD5 was recorded
    record_or_check_md5(dest, None)
    with pytest.raises(DownloadError, match="damaged.*moved aside.*run the workflow again"):
        unpack_vas(dest, tmp_path / "raw")
    assert not dest.exists() and not (tmp_path / "VAS.zip.md5").exists() and (tmp_path / "VAS.zip.bad").exists()
    assert not (tmp_path / "raw").exists()


def test_a_changed_file_says_exactly_what_to_delete(tmp_path):
    path = tmp_path / "VAS.zip"
    path.write_bytes(b"first")
    record_or_check_md5(path, None)
    path.write_bytes(b"changed")
    with pytest.raises(DownloadError, match=r"delete both .*VAS\.zip and .*VAS\.zip\.md5"):
        record_or_check_md5(path, None)
    with pytest.raises(DownloadError, match="configured .*moved aside"):
        record_or_check_md5(path, "0" * 32)
    assert not path.exists() and (tmp_path / "VAS.zip.bad").exists()


@pytest.mark.parametrize("action", ["file:///etc/hostname#", "http://files.example.org/download", "ftp://127.0.0.1/x"])
def test_a_confirmation_form_is_followed_only_to_the_expected_hosts_over_http_s(tmp_path, action):
    """A page whose form leads to a local file (file://), another host or another scheme is not followed: it used
    to copy the local file into resources/ and log its MD5."""
    page = (f'<html><form action="{action}"><input type="hidden" name="id" value="abc"></form></html>').encode()
    with serve(lambda path, range_header: (200, page, "text/html")) as base:
        with pytest.raises(DownloadError, match="not following"):
            download(f"{base}/uc?id=abc", tmp_path / "VAS.zip", retries=2)  # the page, then what it leads to
    assert list(tmp_path.iterdir()) == []


def test_an_https_download_is_not_confirmed_over_http():
    from i2a.infra.download import followable_confirmation

    drive = "https://drive.google.com/uc?id=abc"
    assert followable_confirmation(drive, "https://drive.usercontent.google.com/download?id=abc")
    assert not followable_confirmation(drive, "http://drive.usercontent.google.com/download?id=abc")
    assert not followable_confirmation(drive, "https://drive.google.com.example.org/download?id=abc")
    assert followable_confirmation("http://127.0.0.1:8000/uc", "http://127.0.0.1:8000/download?id=abc")
