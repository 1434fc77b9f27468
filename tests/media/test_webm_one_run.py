"""A live WebM recording is probed in one ffprobe run with the two-run read's result (issue 18).

Every WebM of ``tests/data`` (Chrome's: no Duration; Firefox's: a Duration of 0, also read
whole by the two runs, since ffprobe reports none), the same recordings stream-copied to a
live WebM (``-live 1``) and to one with a Duration, and a long live WebM made by looping one
(more packets than a one-run probe would hold): ``probe(hint=True)`` (a live WebM: one run,
every packet read as it streams in) equals the two-run read (header, then every packet)
exactly: header, streams, every span's start, end, last frame, packet and discarded counts.
A WebM with a Duration keeps the two runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import anyio
import pytest

from tests.harness.fixtures_media import DATA_DIR
from tests.harness.media_tools import count_runs, ffmpeg
from worker.media import probing
from worker.media.probing import ONE_RUN_MAX_PACKETS, probe

WEBMS = sorted(p.name for p in DATA_DIR.iterdir() if p.suffix == ".webm")


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The ffprobe/ffmpeg runs made (what each was for), through the real :func:`run`."""
    yield count_runs(monkeypatch)


def _two_runs(path: Path) -> probing.MediaInfo:
    """The two-run read, as a WebM without the hint gets it."""
    return anyio.run(probe, path)


def _assert_same(path: Path, runs: list[str], *, live: bool) -> None:
    runs.clear()
    two = _two_runs(path)
    assert len(runs) == 2, runs
    runs.clear()
    one = anyio.run(partial(probe, path, hint=True))
    assert len(runs) == (1 if live else 2), runs
    # Header, streams and the whole timeline, exactly; but for a stream's own start time,
    # which ffprobe prints after the packets it read (a Chromium H.264 WebM at 1 fps: none in
    # the header-only run, its first decode timestamp after every packet). Nothing reads it:
    # the container's start time (where ffmpeg puts t=0) and the timeline are the same.
    assert one.start_time == two.start_time
    assert _streams_unstarted(one) == _streams_unstarted(two)
    assert one.timeline is not None and one.timeline.complete


def _streams_unstarted(info: probing.MediaInfo) -> probing.MediaInfo:
    return replace(
        info,
        video=info.video and replace(info.video, start_time=0.0),
        audio=info.audio and replace(info.audio, start_time=0.0),
    )


@pytest.mark.parametrize("name", WEBMS)
def test_a_browser_webm_reads_the_same_in_one_run(name: str, runs: list[str]) -> None:
    _assert_same(DATA_DIR / name, runs, live=True)


@pytest.mark.parametrize("name", ["chrome-vp8-opus-8s.webm", "firefox-vp8-opus-10s.webm"])
def test_a_remuxed_webm_reads_the_same(name: str, runs: list[str], tmp_path: Path) -> None:
    live, timed = tmp_path / "live.webm", tmp_path / "timed.webm"
    ffmpeg("-i", str(DATA_DIR / name), "-c", "copy", "-live", "1", "-f", "webm", str(live))
    ffmpeg("-i", str(DATA_DIR / name), "-c", "copy", "-f", "webm", str(timed))
    _assert_same(live, runs, live=True)
    _assert_same(timed, runs, live=False)  # a Duration: the two runs, as before


def test_a_long_live_webm_reads_the_same_in_one_run(runs: list[str], tmp_path: Path) -> None:
    """Looped to ~170 s of VP8 and Opus (timestamps continuing across the loops): the same
    read. (That memory does not grow with the packets is shown by
    ``tests/unit/test_webm_header.py``; this file stays under ``ONE_RUN_MAX_PACKETS``.)"""
    path = tmp_path / "long-live.webm"
    source = DATA_DIR / "chrome-vp8-opus-8s.webm"
    ffmpeg("-stream_loop", "20", "-i", str(source), "-c", "copy", "-live", "1", "-f", "webm",
           str(path))  # fmt: skip
    _assert_same(path, runs, live=True)
    info = anyio.run(probe, path)
    assert info.timeline is not None and info.duration > 150
    assert sum(s.packets for s in info.timeline.streams) < ONE_RUN_MAX_PACKETS
