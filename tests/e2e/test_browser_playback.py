"""Every merged output seeks and plays in real browsers: headless Chromium and Firefox ESR,
served over HTTP with Range (as S3 serves them).

The output of every recording of ``tests/data`` (every codec, both output containers: H.264
to MP4, VP8/VP9/AV1 to WebM), merged with the Connect WAV at a call end in its middle, is loaded
into a ``<video>`` element that must report the recording's duration (within a frame), seek
past the call end (into the After Call Work: what reviewers do first), play from there to the
end (at 16x) without a MediaError, then seek back and play the call's start. Outputs are merged
once per module and every file runs in one page per browser (``seek.html``, which posts its
results back to the test's server).

Chromium is the system one (``/usr/bin/chromium``), driven with Playwright (never
``playwright install``); Firefox ESR is started as a process on the same page, as
``tests.recorder`` does (Playwright cannot drive Debian's build). Both are installed by
``.ci/system-deps``.

The one allowed exception is a recording the browser cannot play after a seek itself
(:data:`BROKEN_RECORDINGS`): the page then loads that recording too, and the test requires
that it fails the same way (the same MediaError code), so the exception can never hide a
defect of the merge.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.harness.fixtures_media import CONNECT_WAV, DATA_DIR
from tests.harness.http_server import RangeHandler, serve, url
from tests.recorder import CHROMIUM_FLAGS, FIREFOX, browser_command, browser_process
from worker import media

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
RECORDINGS = sorted(p.name for p in DATA_DIR.iterdir() if p.suffix in (".webm", ".mp4"))
# (browser, recording) the browser itself cannot play after a seek, whatever the merge does:
# Chromium's MP4 recorder writes no new SPS/PPS when the frame size changes (avc1), so after a
# seek past a resize Chromium decodes later frames with the first size's parameters.
BROKEN_RECORDINGS = {("chromium", "chrome-avc1-resize-12s.mp4")}
FRAME_SECONDS = 1 / 30
# Generous: Chromium plays Firefox's VP8 slowly, for its frame timing (the same frames stamped
# at regular times play at once; the recording remuxed is as slow): seconds per second of
# video on a loaded 2-core machine. Every other file takes about 1 s.
PAGE_TIMEOUT_SECONDS = 900.0

# For each case: load, seek past the call end, play to the end at 16x, seek to 0 and play the
# start; every MediaError, the first failure and when each step ended (ms) are reported.
# Results are POSTed back to the server.
PAGE = """<!doctype html>
<meta charset="utf-8"><title>seek</title>
<body><script>
const PARALLEL = 4;  // videos at a time (Chromium's slow Firefox VP8 waits, not the CPU)
const until = (v, name, seconds) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`no ${name} in ${seconds} s`)), seconds * 1000);
  v.addEventListener(name, () => { clearTimeout(timer); resolve(); }, {once: true});
  v.addEventListener('error', () => {
    clearTimeout(timer);
    reject(new Error(`MediaError before ${name}`));
  }, {once: true});
});
async function check(c) {
  const v = document.createElement('video');
  v.muted = true;
  v.preload = 'auto';
  document.body.appendChild(v);
  const r = {src: c.src, errors: [], steps: []};
  const t0 = performance.now();
  const step = (what) => r.steps.push(`${what} ${Math.round(performance.now() - t0)}`);
  v.addEventListener('error', () => r.errors.push(v.error && `${v.error.code} ${v.error.message}`));
  try {
    const loaded = until(v, 'loadedmetadata', 30);
    v.src = c.src;
    await loaded;
    step('loaded');
    r.duration = v.duration;
    r.size = [v.videoWidth, v.videoHeight];
    const seeked = until(v, 'seeked', 120);
    v.currentTime = c.seekTo;
    await seeked;
    step('seeked');
    r.seekedAt = v.currentTime;
    v.playbackRate = 16;
    const ended = until(v, 'ended', 120);
    await v.play();
    await ended;
    step('ended');
    r.endedAt = v.currentTime;
    const back = until(v, 'seeked', 120);
    v.currentTime = 0;
    await back;
    step('back');
    const start = until(v, 'timeupdate', 60);
    await v.play();
    await start;
    v.pause();
    step('paused');
    r.replayedTo = v.currentTime;
    const quality = v.getVideoPlaybackQuality && v.getVideoPlaybackQuality();
    r.frames = quality ? quality.totalVideoFrames : null;
  } catch (e) {
    r.failure = String(e);
  }
  r.error = v.error && v.error.code;
  v.removeAttribute('src');
  v.load();
  v.remove();
  return r;
}
(async () => {
  const cases = await (await fetch('cases.json')).json();
  const results = [];
  const next = async () => { for (let c; (c = cases.shift()); ) results.push(await check(c)); };
  await Promise.all(Array.from({length: PARALLEL}, next));
  const browser = new URL(location).searchParams.get('browser');
  await fetch(`results?browser=${browser}`, {method: 'POST', body: JSON.stringify(results)});
})();
</script>
"""


def _handler(results: dict[str, Any], done: threading.Event) -> type[RangeHandler]:
    class Handler(RangeHandler):
        def do_POST(self) -> None:
            browser = self.path.partition("browser=")[2]
            body = self.rfile.read(int(self.headers["Content-Length"]))
            results[urllib.request.unquote(browser)] = json.loads(body)
            self.send_response(204)
            self.end_headers()
            done.set()

    return Handler


def _merge_all(folder: Path) -> dict[str, media.MergeResult]:
    """Every recording merged with the Connect WAV, its call end in its middle (the
    timestamp: alignment is not what this tests), a few merges at a time."""
    results: dict[str, media.MergeResult] = {}
    limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
    options = media.MergeOptions(align="end")

    async def one(name: str) -> None:
        async with limiter:
            recording = DATA_DIR / name
            info = await media.probe(recording)
            assert info.video is not None
            ext = media.container_for(info.video.codec_name).extension
            request = media.MergeRequest(
                recording=recording,
                connect_audio=DATA_DIR / CONNECT_WAV,
                call_end_seconds=round(info.duration / 2, 2),
                output=folder / f"{Path(name).stem}.{ext}",
                thumbnail=None,
                options=options,
                recording_info=info,
            )
            results[name] = await media.merge(request)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for name in RECORDINGS:
                group.start_soon(one, name)

    anyio.run(main)
    return results


def seek_point(result: media.MergeResult) -> float:
    """Where the page seeks: half a second past the call end, into the After Call Work."""
    return round(result.call_end_seconds + 0.5, 3)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, media.MergeResult]]:
    """The served folder: every output, the broken recordings, the page and its cases."""
    folder = tmp_path_factory.mktemp("playback")
    merged = _merge_all(folder)
    cases = []
    for name in RECORDINGS:
        result = merged[name]
        cases.append({"src": result.output.name, "seekTo": seek_point(result)})
        if any(name == broken for _, broken in BROKEN_RECORDINGS):
            (folder / "recordings").mkdir(exist_ok=True)
            os.symlink(DATA_DIR / name, folder / "recordings" / name)
            cases.append({"src": f"recordings/{name}", "seekTo": seek_point(result)})
    (folder / "cases.json").write_text(json.dumps(cases))
    (folder / "seek.html").write_text(PAGE)
    return folder, merged


def run_page(browser: str, folder: Path) -> dict[str, dict[str, Any]]:
    """Open ``seek.html`` in headless ``browser``; its results by ``src``."""
    results: dict[str, Any] = {}
    done = threading.Event()
    with serve(folder, _handler(results, done)) as server:
        page = url(server, f"seek.html?browser={browser}")
        if browser == FIREFOX:
            with (
                tempfile.TemporaryDirectory(prefix="firefox-profile-") as profile,
                browser_process(browser_command(FIREFOX, page, Path(profile))),
            ):
                assert done.wait(PAGE_TIMEOUT_SECONDS), "Firefox posted no results"
        else:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as driver:
                chromium = driver.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
                )
                try:
                    chromium.new_page().goto(page)
                    assert done.wait(PAGE_TIMEOUT_SECONDS), "Chromium posted no results"
                finally:
                    chromium.close()
        assert server.range_requests > 0  # type: ignore[attr-defined]  # the browsers used Range
    return {r["src"]: r for r in results[browser]}


@pytest.mark.parametrize("browser", ["chromium", FIREFOX])
def test_every_output_seeks_past_the_call_end_and_plays_to_the_end(
    browser: str, site: tuple[Path, dict[str, media.MergeResult]]
) -> None:
    folder, merged = site
    reports = run_page(browser, folder)
    failed = {}
    for name in RECORDINGS:
        result = merged[name]
        report = reports[result.output.name]
        problems = _problems(report, result)
        if (browser, name) in BROKEN_RECORDINGS:
            # Allowed only while the recording itself fails the same way in this browser.
            itself = reports[f"recordings/{name}"]
            alike = report.get("error") is not None and itself.get("error") == report["error"]
            assert problems and alike, f"{name}: not the recording's own failure: {itself} {report}"
            continue
        if problems:
            failed[name] = (problems, report)
    assert not failed, "\n".join(f"{n}: {p} {r}" for n, (p, r) in failed.items())


def _problems(report: dict[str, Any], result: media.MergeResult) -> list[str]:
    """What is wrong with one output's page report (empty: it seeks and plays)."""
    problems = []
    if report.get("failure") or report.get("error") or report["errors"]:
        problems.append(f"failed: {report.get('failure')} {report['errors']} {report['steps']}")
        return problems
    if abs(report["duration"] - result.media_duration_seconds) > FRAME_SECONDS:
        problems.append(f"duration {report['duration']}, expected {result.media_duration_seconds}")
    if abs(report["seekedAt"] - seek_point(result)) > 0.01:
        problems.append(f"seeked to {report['seekedAt']}")
    if abs(report["endedAt"] - report["duration"]) > FRAME_SECONDS:
        problems.append(f"ended at {report['endedAt']}")
    if not report["replayedTo"] > 0 or not report["frames"]:
        problems.append(f"did not play from the start ({report['frames']} frames shown)")
    if not (report["size"][0] > 0 and report["size"][1] > 0):
        problems.append(f"no picture ({report['size']})")
    return problems


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
