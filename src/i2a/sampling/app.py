"""`i2a app`: a local web page to try a model. Upload a picture or a short video; hear (HTML audio), see (the
labelled spectrogram figure) and download (WAV) the sounds `i2a generate` makes of it.

    i2a app --config config/demo.yaml --run clip-s5          # then open http://127.0.0.1:8000/

The standard library's HTTP server, one request generating at a time: a page for one person on their own
machine, bound to 127.0.0.1 unless --host says otherwise. Uploads are bounded (--max-upload-mb); a bad one gets a
page saying why, as the CLI says it.
"""
from __future__ import annotations

import html
import logging
import re
import tempfile
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from i2a.data.clips import VIDEO_SUFFIXES
from i2a.sampling.inputs import IMAGE_SUFFIXES
from i2a.sampling.loop import generate

log = logging.getLogger("i2a.sampling.app")

MAX_SAMPLES = 8
DRAIN_LIMIT = 4  # an upload too large is still read (and dropped) up to this many times the largest taken
STYLE = ("body{font-family:sans-serif;max-width:52em;margin:2em auto;padding:0 1em}"
         ".error{color:#a00;border:1px solid #a00;padding:.5em}img{max-width:100%}")


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>").encode()


class UploadError(ValueError):
    """An upload the page cannot use; the message says why."""


def parse_upload(content_type: str, body: bytes) -> tuple[str, bytes, dict[str, str]]:
    """(file name, file bytes, the other form fields) of a multipart/form-data body."""
    if not content_type.startswith("multipart/form-data"):
        raise UploadError("send the form (multipart/form-data)")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    name, data, fields = "", b"", {}
    for part in message.iter_parts():
        field = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            name, data = part.get_filename(), part.get_payload(decode=True) or b""
        elif field:
            fields[field] = (part.get_payload(decode=True) or b"").decode("utf-8", "replace").strip()
    if not data:
        raise UploadError("no file was uploaded: choose an image or a video")
    return name, data, fields


class App:
    """The model, the folder the sounds are written to, and a lock: one generation at a time."""

    def __init__(self, model, samples: int = 2, seed: int = 0, max_upload: int = 50 * 2 ** 20,
                 workdir: str | Path | None = None):
        self.model, self.samples, self.seed, self.max_upload = model, samples, seed, max_upload
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="i2a-app-")
        self.root = Path(workdir or self._tmp.name)
        self.lock = threading.Lock()
        self.count = 0

    def form(self) -> bytes:
        return _page(f"i2a: sound for a picture ({self.model.name})", f"""
<p>Upload an image ({", ".join(IMAGE_SUFFIXES)}) or a short video: the model <b>{html.escape(self.model.name)}</b>
({html.escape(self.model.spec.features)} features) generates {self.model.seconds:g} s of sound for it.</p>
<form method="post" action="/generate" enctype="multipart/form-data">
<p><input type="file" name="file" id="file" accept="image/*,video/*" required></p>
<p><label>samples <input type="number" name="samples" min="1" max="{MAX_SAMPLES}" value="{self.samples}"></label>
<label>seed <input type="number" name="seed" min="0" value="{self.seed}"></label></p>
<p><button type="submit" id="generate">Generate</button></p></form>""")

    def generate(self, name: str, data: bytes, fields: dict[str, str]) -> bytes:
        """The results page for one upload; UploadError when it cannot be used."""
        suffix = Path(name).suffix.lower()
        if suffix not in (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES):
            raise UploadError(f"{name!r} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video "
                              f"({', '.join(VIDEO_SUFFIXES)})")
        try:
            samples = int(fields.get("samples") or self.samples)
            seed = int(fields.get("seed") or self.seed)
        except ValueError:
            raise UploadError("samples and seed must be whole numbers") from None
        if not 1 <= samples <= MAX_SAMPLES:
            raise UploadError(f"samples must be from 1 to {MAX_SAMPLES}, got {samples}")
        with self.lock:
            self.count += 1
            job = f"{self.count:05d}"
            upload = self.root / "uploads" / job / f"upload{suffix}"
            upload.parent.mkdir(parents=True)
            upload.write_bytes(data)
            try:
                result = generate(self.model, [upload], self.root / "out" / job, samples=samples, seed=seed,
                                  progress=False)[0]
            except ValueError as err:  # the sampling checks: a seed out of range
                raise UploadError(str(err)) from None
            finally:
                upload.unlink(missing_ok=True)
        if result.error:
            raise UploadError(f"{name}: {result.error}")
        items = "".join(
            f"<li><audio controls preload='auto' src='/files/{job}/{wav.name}'></audio> "
            f"<a download='{html.escape(Path(name).stem)}_sample{k:02d}.wav' href='/files/{job}/{wav.name}'>"
            f"download sample {k} (WAV)</a></li>" for k, wav in enumerate(result.wavs))
        return _page(f"{name}: {samples} sound(s) from {self.model.name}", f"""
<ol id="sounds">{items}</ol>
<p><img id="spectrogram" alt="the generated spectrograms" src="/files/{job}/{result.spectrogram.name}"></p>
<p><a href="/">another picture</a></p>""")

    def file(self, path: str) -> Path | None:
        """An output under /files/<job>/<name>, or None (nothing outside the output folder is ever served)."""
        match = re.fullmatch(r"/files/(\d{5})/([A-Za-z0-9_.-]+\.(?:wav|png))", path)
        if not match:
            return None
        found = self.root / "out" / match[1] / match[2]
        return found if found.is_file() else None


class Handler(BaseHTTPRequestHandler):
    app: App  # set on the server's handler class by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str = "text/html; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, _page("Nothing generated", f"<p class='error' id='error'>{html.escape(message)}</p>"
                                                      "<p><a href='/'>try another file</a></p>"))

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/":
            return self._send(HTTPStatus.OK, self.app.form())
        found = self.app.file(self.path)
        if found is None:
            return self._error(HTTPStatus.NOT_FOUND, f"{self.path} is not here")
        kind = "audio/wav" if found.suffix == ".wav" else "image/png"
        self._send(HTTPStatus.OK, found.read_bytes(), kind)

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/generate":
            return self._error(HTTPStatus.NOT_FOUND, f"{self.path} is not here")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(HTTPStatus.LENGTH_REQUIRED, "the upload must say its length")
        if length > self.app.max_upload:
            # a sender that is still writing its body when the answer comes sees a broken pipe, not the answer:
            # an upload up to DRAIN_LIMIT times the largest taken is read and dropped first
            if length <= DRAIN_LIMIT * self.app.max_upload:
                for start in range(0, length, 2 ** 20):
                    self.rfile.read(min(2 ** 20, length - start))
            self.close_connection = True
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the upload is {length / 2 ** 20:.1f} MiB, more than this page takes "
                               f"({self.app.max_upload / 2 ** 20:.0f} MiB; i2a app --max-upload-mb): give a smaller "
                               "picture or a shorter video, or use i2a generate")
        try:
            page = self.app.generate(*parse_upload(self.headers.get("Content-Type", ""), self.rfile.read(length)))
        except UploadError as err:
            return self._error(HTTPStatus.BAD_REQUEST, str(err))
        self._send(HTTPStatus.OK, page)


def make_server(app: App, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server for `app` (port 0: any free port; server.server_address says which), not yet serving."""
    handler = type("AppHandler", (Handler,), {"app": app})
    return ThreadingHTTPServer((host, port), handler)
