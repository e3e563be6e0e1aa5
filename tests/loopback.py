"""Download tests against a real HTTP server on 127.0.0.1 (no internet): one server, each test says what it answers."""
from __future__ import annotations

import http.server
import io
import tarfile
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

# (path, Range header or None) -> (status, body, content type)
Responder = Callable[[str, "str | None"], "tuple[int, bytes, str]"]


@contextmanager
def serve(respond: Responder) -> Iterator[str]:
    """Serve `respond`'s answers; yields the base URL (http://127.0.0.1:<port>)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            status, body, content_type = respond(self.path, self.headers.get("Range"))
            if status >= 400:
                self.send_error(status)
                return
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", content_type)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def ranged(body: bytes, range_header: str | None, content_type: str = "application/octet-stream"):
    """A file server's answer: the whole body (200), or from the Range start on (206)."""
    start = int(range_header.split("=")[1].split("-")[0]) if range_header else 0
    return (206 if start else 200), body[start:], content_type


def tar_bytes(members: dict[str, bytes], gzip: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
