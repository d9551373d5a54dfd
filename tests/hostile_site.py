"""A hostile picture host for crawler tests and benchmarks: a real HTTP server on loopback
that serves what a malicious or broken result page may point the crawler at.

    with HostileSite() as site:
        site.url("/good.jpg")         # a normal 400x300 JPEG
        site.url("/wide.png")         # ~40 KB PNG declaring 600000x64 pixels
        site.url("/tall.png")         # ~40 KB PNG declaring 64x600000 pixels
        site.url("/big.png")          # a real 6000x6000 RGBA PNG (36 M pixels, under every cap)
        site.url("/loop")             # redirects to itself for ever
        site.url("/to-file")          # redirects to file:///etc/passwd
        site.url("/to-metadata")      # redirects to the cloud metadata address 169.254.169.254
        site.url("/bad-location")     # a redirect whose Location is not a URL
        site.url("/referer.jpg")      # a good JPEG; site.referers records the Referer it got
"""
from __future__ import annotations

import io
import struct
import threading
import zlib
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=4)
def strip_png(width: int, height: int) -> bytes:
    """A valid all-black greyscale PNG of width x height, a few tens of KB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = [compressor.compress(row) for _ in range(height)]
    body.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", b"".join(body)) + _png_chunk(b"IEND", b""))


@lru_cache(maxsize=2)
def big_png(side: int = 6000) -> bytes:
    image = Image.new("RGBA", (side, side), (200, 30, 30, 255))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


@lru_cache(maxsize=2)
def good_jpeg(width: int = 400, height: int = 300) -> bytes:
    image = Image.new("RGB", (width, height), (30, 120, 200))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


class HostileSite:
    def __init__(self) -> None:
        self.referers: list[str | None] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", content_type: str = "image/png",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                path = self.path.split("?")[0]
                redirects = {"/loop": "/loop", "/to-file": "file:///etc/passwd",
                             "/to-metadata": "http://169.254.169.254/latest/meta-data/",
                             "/bad-location": "http://[::1"}
                if path in redirects:
                    return self._send(302, headers={"Location": redirects[path]}, content_type="text/plain")
                if path == "/good.jpg":
                    return self._send(200, good_jpeg(), "image/jpeg")
                if path == "/referer.jpg":
                    site.referers.append(self.headers.get("Referer"))
                    return self._send(200, good_jpeg(), "image/jpeg")
                if path == "/wide.png":
                    return self._send(200, strip_png(600_000, 64))
                if path == "/tall.png":
                    return self._send(200, strip_png(64, 600_000))
                if path == "/big.png":
                    return self._send(200, big_png())
                return self._send(404, b"no", "text/plain")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> "HostileSite":
        big_png(), strip_png(600_000, 64), strip_png(64, 600_000)  # built before anyone waits on them
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()
