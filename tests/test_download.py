"""Downloads: resume, digest checks, atomic results, safe unpacking (a loopback HTTP server, no internet)."""
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from i2a.download import (DownloadError, download, extract_checkpoint, record_or_check_md5, unpack_zip)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class RangeHandler(http.server.BaseHTTPRequestHandler):
    requests: list = []

    def do_GET(self):  # noqa: N802
        RangeHandler.requests.append(self.headers.get("Range"))
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()


def test_download_resumes_a_partial_file_and_checks_md5(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])
    download(server, dest, md5=hashlib.md5(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD
    assert RangeHandler.requests == ["bytes=1000-"]
    assert not (tmp_path / "file.bin.part").exists()


def test_wrong_md5_leaves_nothing_under_the_final_name(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="does not match"):
        download(server, dest, md5="0" * 32)
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
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in [("logs/x/checkpoints/epoch_259.ckpt", b"weights"), ("logs/x/configs/a.yaml", b"c")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = extract_checkpoint(archive, tmp_path / "vas_codebook.ckpt")
    assert out.read_bytes() == b"weights"


def test_unpack_zip_refuses_paths_outside_the_target(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(DownloadError, match="unsafe path"):
        unpack_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escape.txt").exists()
