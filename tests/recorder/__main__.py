"""``python -m tests.recorder [--out tests/data] [NAME ...]``: (re)make the recordings.

Serves ``recorder.html`` on 127.0.0.1 (free port), opens it once per recording in headless
Chromium or Firefox ESR (each with a new profile), waits for the page to upload its blob,
stops the browser (by its process group), and finally rewrites the generated table of
``tests/data/README.md``. Needs ``chromium`` and ``firefox-esr`` (``.ci/system-deps``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from tests.harness.http_server import RangeHandler, serve, url
from tests.recorder import RECORDINGS, Recording, browser_command, browser_process

HERE = Path(__file__).parent
DATA = HERE.parent / "data"
TABLE_START = "<!-- recorder table start: made by `python -m tests.recorder` -->"
TABLE_END = "<!-- recorder table end -->"


class _Uploads:
    """What the page reported: uploaded files and log lines, shared with the handler."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.done: dict[str, threading.Event] = {}
        self.messages: list[str] = []
        self.lock = threading.Lock()

    def expect(self, name: str) -> threading.Event:
        with self.lock:
            return self.done.setdefault(name, threading.Event())


def _handler(uploads: _Uploads) -> type[RangeHandler]:
    class Handler(RangeHandler):
        def do_GET(self) -> None:
            parts = urllib.parse.urlparse(self.path)
            if parts.path == "/log":
                query = urllib.parse.parse_qs(parts.query)
                uploads.messages.append(parts.query)
                for name in query.get("done", []):
                    uploads.expect(name).set()
                self.send_response(204)
                self.end_headers()
                return
            super().do_GET()

        def do_POST(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            name = Path(query["name"][0]).name  # a bare file name, never a path
            data = self.rfile.read(int(self.headers["Content-Length"]))
            (uploads.out / name).write_bytes(data)
            self.send_response(200)
            self.end_headers()

    return Handler


def record(recording: Recording, server: Any, uploads: _Uploads, timeout: float = 90) -> Path:
    """Record one file into ``uploads.out``; raises RuntimeError when the page fails."""
    done = uploads.expect(recording.name)
    done.clear()
    page = url(server, "recorder.html") + "?" + urllib.parse.urlencode(recording.query())
    with tempfile.TemporaryDirectory(prefix="recorder-profile-") as profile:
        command = browser_command(recording.browser, page, Path(profile))
        with browser_process(command):
            if not done.wait(timeout):
                raise RuntimeError(f"{recording.name}: no upload ({uploads.messages[-3:]})")
    return uploads.out / recording.name


def readme_table(folder: Path) -> str:
    """The generated README table: one line per recording (how made, what quirk, facts)."""
    from tests.harness.media_tools import stream_end

    rows = [
        "| file | made with | quirk | size | video end | audio end |",
        "|---|---|---|---|---|---|",
    ]
    for rec in RECORDINGS:
        path = folder / rec.name
        if not path.exists():
            continue
        params = " ".join(f"{k}={v}" for k, v in rec.params.items()) or "defaults"
        audio = "none" if "noaudio" in rec.params else f"{stream_end(path, 'a:0'):.3f} s"
        rows.append(
            f"| `{rec.name}` | {rec.browser}, `{rec.mime}`, {params} | {rec.quirk} | "
            f"{path.stat().st_size // 1024} kB | {stream_end(path, 'v:0'):.3f} s | {audio} |"
        )
    return "\n".join(rows)


def update_readme(folder: Path) -> None:
    """Replace the generated table in ``folder/README.md`` (appended when absent)."""
    readme = folder / "README.md"
    text = readme.read_text() if readme.exists() else ""
    block = f"{TABLE_START}\n{readme_table(folder)}\n{TABLE_END}"
    if TABLE_START in text and TABLE_END in text:
        head, rest = text.split(TABLE_START, 1)
        text = head + block + rest.split(TABLE_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.recorder", description=__doc__)
    parser.add_argument("names", nargs="*", help="recordings to make (default: all)")
    parser.add_argument("--out", type=Path, default=DATA, help="folder (default tests/data)")
    args = parser.parse_args(argv)
    chosen = [r for r in RECORDINGS if not args.names or r.name in args.names]
    if not chosen:
        parser.error("no such recording: " + ", ".join(args.names))
    for tool in ("chromium", "firefox-esr"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (make system-deps)", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    uploads = _Uploads(args.out)
    with serve(HERE, _handler(uploads)) as server:
        for rec in chosen:
            path = record(rec, server, uploads, timeout=rec.seconds + 60)
            print(f"{path.name}: {path.stat().st_size // 1024} kB", flush=True)
    update_readme(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
