"""Merged outputs play in a real browser: headless Chromium, served over HTTP with Range.

For outputs of both containers (WebM and MP4, resized and static-screen recordings), a
``<video>`` element must report the recording's duration (within a frame), play to the end
without a MediaError (at 16x), and seek to a point after the call end (the ACW part).
Chromium is the system one (``/usr/bin/chromium``, installed by ``.ci/system-deps``), driven
with Playwright; ``playwright install`` is never run.
"""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.harness.fixtures_media import CONNECT_WAV, DATA_DIR
from tests.harness.http_server import serve, url
from tests.recorder import CHROMIUM_FLAGS
from worker import media

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# (recording, output container): both containers, resized and static-end screens.
OUTPUTS = [
    ("chrome-vp8-resize-12s.webm", "webm"),
    ("chrome-vp9-static-end-12s.webm", "webm"),
    ("chrome-h264-resize-12s.webm", "mp4"),
    ("chrome-avc1-static-end-12s.mp4", "mp4"),
    ("chrome-vp9-mp4-static-end-10s.mp4", "webm"),  # VP9 from MP4 (1/30000) into WebM
    ("chrome-h264-1fps-resize-12s.webm", "mp4"),  # 1 fps, resized, no decode times
]
FRAME_SECONDS = 1 / 30

# Loads one file, reports its duration, plays it to the end at 16x, then seeks to `seekTo`.
PLAY = """
async ([src, seekTo]) => {
  const v = document.createElement('video');
  v.muted = true;
  v.preload = 'auto';
  document.body.appendChild(v);
  const errors = [];
  v.addEventListener('error', () => errors.push(v.error && `${v.error.code} ${v.error.message}`));
  const once = (name) => new Promise((resolve, reject) => {
    v.addEventListener(name, resolve, {once: true});
    const fail = () => reject(new Error(`${name}: ${errors.join('; ')}`));
    v.addEventListener('error', fail, {once: true});
  });
  const loaded = once('loadedmetadata');
  v.src = src;
  await loaded;
  const duration = v.duration;
  const size = [v.videoWidth, v.videoHeight];
  v.playbackRate = 16;
  const ended = once('ended');
  await v.play();
  await ended;
  const endedAt = v.currentTime;
  const seeked = once('seeked');
  v.currentTime = seekTo;
  await seeked;
  return {duration, size, endedAt, seekedAt: v.currentTime, error: v.error && v.error.code,
          errors};
}
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, media.MergeResult]:
    """The merged outputs, in one served folder (call end 3 s before the end)."""
    folder = tmp_path_factory.mktemp("playback")
    results = {}
    for name, ext in OUTPUTS:
        recording = DATA_DIR / name
        info = anyio.run(media.probe, recording)
        request = media.MergeRequest(
            recording=recording,
            connect_audio=DATA_DIR / CONNECT_WAV,
            call_end_seconds=round(info.duration - 3.0, 2),
            output=folder / f"{Path(name).stem}.{ext}",
            thumbnail=None,
            recording_info=info,
        )
        results[name] = anyio.run(media.merge, request)
    return results


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.parametrize(("name", "ext"), OUTPUTS)
def test_output_plays_to_the_end_and_seeks_into_the_acw(
    name: str, ext: str, outputs: dict[str, media.MergeResult], browser: Any
) -> None:
    result = outputs[name]
    assert result.output.suffix == f".{ext}"
    expected = result.media_duration_seconds
    seek_to = round(result.call_end_seconds + 1.5, 3)
    with serve(result.output.parent) as server:
        page = browser.new_page()
        try:
            page.goto(url(server, ""))  # same origin as the media
            report = page.evaluate(PLAY, [url(server, result.output.name), seek_to])
        finally:
            page.close()
        assert server.range_requests > 0  # type: ignore[attr-defined]  # the browser used Range
    assert report["error"] is None and report["errors"] == [], report
    assert report["duration"] == pytest.approx(expected, abs=FRAME_SECONDS), report
    assert report["endedAt"] == pytest.approx(report["duration"], abs=FRAME_SECONDS), report
    assert report["seekedAt"] == pytest.approx(seek_to, abs=0.01), report
    assert report["size"][0] > 0 and report["size"][1] > 0


def test_range_server_answers_partial_content(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    (tmp_path / "x.webm").write_bytes(data)
    with serve(tmp_path) as server:
        request = urllib.request.Request(url(server, "x.webm"), headers={"Range": "bytes=100-199"})
        with urllib.request.urlopen(request) as answer:
            assert answer.status == 206
            assert answer.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
            assert answer.read() == data[100:200]
        tail = urllib.request.Request(url(server, "x.webm"), headers={"Range": "bytes=-10"})
        with urllib.request.urlopen(tail) as answer:
            assert answer.read() == data[-10:]
        with urllib.request.urlopen(url(server, "x.webm")) as answer:
            assert answer.status == 200 and answer.read() == data
        assert server.range_requests == 2  # type: ignore[attr-defined]
