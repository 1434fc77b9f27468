"""A small threaded HTTP server on 127.0.0.1 (a free port) serving one folder, with Range.

Browsers fetch media with ``Range: bytes=N-`` requests and need ``206 Partial Content``
answers to seek; Python's ``SimpleHTTPRequestHandler`` ignores Range, so this one adds it
(single ranges, which is what media elements ask for). Used by the browser playback test
and by the recorder (which also receives uploads: see ``tests.recorder``).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files from ``directory`` with single-range ``Range`` support; quiet logs."""

    def __init__(self, *args: Any, directory: str, **kwargs: Any) -> None:
        super().__init__(*args, directory=directory, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests report what matters; access logs would only be noise

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def send_head(self) -> BinaryIO | None:  # type: ignore[override]
        wanted = _RANGE.match(self.headers.get("Range", "").strip())
        path = Path(self.translate_path(self.path))
        if wanted is None or not path.is_file():
            return super().send_head()  # type: ignore[return-value]
        size = path.stat().st_size
        first, last = wanted.groups()
        if first == "":  # suffix range: the last N bytes
            start, end = max(0, size - int(last or 0)), size - 1
        else:
            start, end = int(first), min(size - 1, int(last)) if last else size - 1
        if start >= size or start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        handle = path.open("rb")
        handle.seek(start)
        self.server.range_requests += 1  # type: ignore[attr-defined]
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return handle

    def copyfile(self, source: Any, outputfile: Any) -> None:
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            super().copyfile(source, outputfile)
            return
        self._remaining = None
        while remaining > 0:
            block = source.read(min(64 * 1024, remaining))
            if not block:
                break
            remaining -= len(block)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                outputfile.write(block)


RangeHandler.extensions_map = {
    **http.server.SimpleHTTPRequestHandler.extensions_map,
    ".webm": "video/webm",
    ".mp4": "video/mp4",
    ".html": "text/html; charset=utf-8",
}


@contextlib.contextmanager
def serve(
    directory: Path, handler: type[RangeHandler] = RangeHandler
) -> Iterator[http.server.ThreadingHTTPServer]:
    """Serve ``directory`` on 127.0.0.1 (free port) in a thread; stopped on exit."""

    def make(*args: Any, **kwargs: Any) -> RangeHandler:
        return handler(*args, directory=os.fspath(directory), **kwargs)

    with run_server(make, name="http-range") as server:
        server.range_requests = 0  # type: ignore[attr-defined]  # 206 answers given
        yield server


@contextlib.contextmanager
def run_server(handler: Any, *, name: str) -> Iterator[http.server.ThreadingHTTPServer]:
    """A threading HTTP server with ``handler`` on 127.0.0.1 (a free port), serving in a
    daemon thread; shut down and joined on exit."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def url(server: http.server.ThreadingHTTPServer, name: str) -> str:
    """The URL of ``name`` (a file in the served folder)."""
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}/{name}"
