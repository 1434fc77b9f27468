"""Every real browser recording of ``tests/data`` through the merge, checked by content.

Parametrized over all ``*.webm``/``*.mp4`` files there (resized windows, odd sizes, static
screens, 1 fps, late video, Firefox, VP8/VP9/H.264 WebM and MP4, stereo, muted and silent
stretches), at two call ends: one before the 5 s seek threshold, one 3 s before the end.
Each output must have

- the recording's timeline duration (first to last sample of any stream, measured here from
  the packets, independently of the engine): container, packets and decoded audio;
- the recording's video frames, hashed at their native size, at their original times;
- the call (440/660 Hz) up to the call end, then the microphone's 1000 Hz where the recorder
  played it (silence where it was muted), to the end of the ACW: a static screen keeps it.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.fixtures_media import (
    AGENT_TONE,
    CONNECT_WAV,
    CUSTOMER_TONE,
    DATA_DIR,
    RECORDING_TONE,
)
from tests.harness.media_checks import (
    GUARD,
    Segment,
    assert_same_video_and_duration,
    assert_timeline,
    decoded,
    input_duration,
    run_merge,
)
from tests.harness.media_tools import (
    band_share,
    decode_pcm,
    decode_times,
    ffprobe_json,
    frame_sizes,
    packet_times,
    rms,
    start_time,
    stream_end,
    timeline_origin,
    transition_time,
    window,
)
from tests.recorder import RECORDINGS
from worker import media
from worker.config import AudioSettings

FILES = sorted(p.name for p in DATA_DIR.iterdir() if p.suffix in (".webm", ".mp4"))
PAGE_PARAMS = {rec.name: rec.params for rec in RECORDINGS}
CONNECT_SECONDS = 5.0
# The recorder schedules silences on the audio clock, which starts a few tens of ms before
# MediaRecorder does: windows this close to a scheduled edge are not judged.
SCHEDULE_MARGIN = 0.25


@dataclass(frozen=True)
class Microphone:
    """Where a recording's own audio is a tone, on its timeline (seconds from its start)."""

    start: float
    end: float
    silences: tuple[tuple[float, float], ...]  # scheduled by the recorder page

    def segments(self, begin: float, end: float) -> list[Segment]:
        """Tone and silence segments of the microphone between ``begin`` and ``end``."""
        scheduled = {edge for pair in self.silences for edge in pair}
        edges = {begin, end, *(e for e in (self.start, self.end, *scheduled) if begin < e < end)}
        points = sorted(edges)
        out = []
        for lo, hi in itertools.pairwise(points):
            mid = (lo + hi) / 2
            muted = any(a <= mid < b for a, b in self.silences)
            kind = "recording" if self.start <= mid < self.end and not muted else "silence"
            lo += SCHEDULE_MARGIN if lo in scheduled else 0.0
            hi -= SCHEDULE_MARGIN if hi in scheduled else 0.0
            out.append(Segment(lo, hi, kind))
        return out


@functools.cache
def microphone(name: str) -> Microphone | None:
    """The tone plan of a recording: from its packets and the recorder's page parameters."""
    path = DATA_DIR / name
    times = packet_times(path, "a:0")
    if not times:
        return None
    params = PAGE_PARAMS.get(name, {})
    silences = []
    if "silentUntil" in params:
        silences.append((0.0, float(params["silentUntil"])))
    if "mute" in params:
        lo, hi = (float(v) for v in params["mute"].split(":"))
        silences.append((lo, hi))
    start = times[0] - timeline_origin(path)
    end = stream_end(path, "a:0")
    silences += dropouts(path, start, end, silences)
    return Microphone(start, end, tuple(silences))


def dropouts(
    path: Path, start: float, end: float, scheduled: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Where the browser's own recording lost its tone (a run of 20 ms or more at digital
    silence outside the page's scheduled silences): the merge keeps such a gap as it is, so
    the expected plan must too (chrome-vp9-silent-lead has 80 ms of it at 9.24 s)."""
    rate, hop = 16000, 160  # 10 ms frames
    pcm = decode_pcm(path, rate=rate)
    quiet = [rms(pcm[i : i + hop, 0]) < 0.005 for i in range(0, pcm.shape[0] - hop + 1, hop)]
    found, run_start = [], None
    for index, is_quiet in enumerate([*quiet, False]):
        at = index * hop / rate
        if is_quiet and run_start is None:
            run_start = at
        elif not is_quiet and run_start is not None:
            inside = start < run_start and at < end
            planned = any(a - 0.05 <= run_start and at <= b + 0.05 for a, b in scheduled)
            if at - run_start >= 0.02 and inside and not planned:
                found.append((run_start, at))
            run_start = None
    return found


def expected(name: str, call_end: float, duration: float) -> list[Segment]:
    """The merged audio: silence, the 5 s call ending at ``call_end``, then the microphone."""
    segs = []
    if call_end > CONNECT_SECONDS:
        segs.append(Segment(0.0, call_end - CONNECT_SECONDS, "silence"))
    segs.append(Segment(max(0.0, call_end - CONNECT_SECONDS), call_end, "connect"))
    mic = microphone(name)
    if mic is None:
        segs.append(Segment(call_end, duration, "silence"))
    else:
        segs += mic.segments(call_end, duration)
    return [s for s in segs if s.end - s.start > 2 * GUARD + 0.02]


def call_end_at(name: str, when: str) -> float:
    """``early``: 3 s (before the 5 s seek threshold); ``late``: 3 s before the end."""
    return 3.0 if when == "early" else round(input_duration(DATA_DIR / name) - 3.0, 2)


CASES = [(name, when) for name in FILES for when in ("early", "late")]


def extension(name: str) -> str:
    codec = media.container_for(_video_codec(name))
    return codec.extension


@functools.cache
def _video_codec(name: str) -> str:
    streams = ffprobe_json(DATA_DIR / name)["streams"]
    assert isinstance(streams, list)
    return next(str(s["codec_name"]) for s in streams if s["codec_type"] == "video")


@pytest.mark.parametrize(("name", "when"), CASES, ids=[f"{n}-{w}" for n, w in CASES])
def test_recording_merges_whole_and_in_place(name: str, when: str, tmp_path: Path) -> None:
    recording = DATA_DIR / name
    call_end = call_end_at(name, when)
    result = run_merge(recording, DATA_DIR / CONNECT_WAV, call_end, tmp_path, ext=extension(name))
    duration = result.media_duration_seconds
    assert not result.call_end_clamped
    assert result.connect_audio_offset_seconds == pytest.approx(call_end - CONNECT_SECONDS)
    assert_same_video_and_duration(result.output, recording, result, AudioSettings())
    assert_timeline(result.output, expected(name, call_end, duration))


# Call ends where a merge meets the recording's edges, on recordings whose last frame is
# seconds before their end (static screens or 1 fps), whose video starts late, whose video
# time base is not the output's (VP9 in MP4 -> WebM), whose first frames have no decode
# times (H.264 WebM at 1 fps).
EDGE_RECORDINGS = [
    "chrome-vp9-mp4-static-end-10s.mp4",
    "chrome-h264-late-video-static-12s.webm",
    "chrome-h264-1fps-resize-12s.webm",
    "chrome-avc1-static-end-12s.mp4",
    "chrome-vp8-static-end-12s.webm",
]
EDGES = ["zero", "half-second", "before-last-frame", "static-screen", "end", "beyond"]
EDGE_CASES = [(name, edge) for name in EDGE_RECORDINGS for edge in EDGES]


def edge_call_end(name: str, edge: str) -> float:
    """The call end of ``edge`` on ``name``'s timeline (computed at run time)."""
    path = DATA_DIR / name
    duration = input_duration(path)
    last_frame = packet_times(path, "v:0")[-1] - timeline_origin(path)
    return {
        "zero": 0.0,
        "half-second": 0.5,
        "before-last-frame": round(last_frame - 0.05, 3),
        "static-screen": round((last_frame + duration) / 2, 3),
        "end": round(duration, 3),
        "beyond": round(duration + 5.0, 3),
    }[edge]


@pytest.mark.parametrize(("name", "edge"), EDGE_CASES, ids=[f"{n}-{e}" for n, e in EDGE_CASES])
def test_call_end_at_the_recordings_edges(name: str, edge: str, tmp_path: Path) -> None:
    recording = DATA_DIR / name
    call_end = edge_call_end(name, edge)
    result = run_merge(
        recording, DATA_DIR / CONNECT_WAV, call_end, tmp_path, ext=extension(name), thumbnail=True
    )
    duration = result.media_duration_seconds
    assert result.call_end_clamped is (edge == "beyond")
    assert result.call_end_seconds == pytest.approx(min(call_end, duration))
    assert_same_video_and_duration(result.output, recording, result, AudioSettings())
    assert_timeline(result.output, expected(name, result.call_end_seconds, duration))
    if 1.0 < call_end < duration - 0.5:  # the call gives way to the microphone there
        pcm = decoded(result.output, 1)
        switch = transition_time(pcm, 16000, call_end, (CUSTOMER_TONE, AGENT_TONE), RECORDING_TONE)
        assert switch == pytest.approx(call_end, abs=0.010)
    assert result.thumbnail is not None
    png = result.thumbnail.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # The picture at 1 s: these recordings are not resized before 4 s.
    width, height = (int.from_bytes(png[i : i + 4], "big") for i in (16, 20))
    assert f"{width}x{height}" == frame_sizes(recording)[0]


def _sounds_to_the_end(name: str) -> bool:
    """Has a microphone that the recorder did not silence in its last second (cheap: this
    runs at collection)."""
    streams = ffprobe_json(DATA_DIR / name)["streams"]
    assert isinstance(streams, list)
    params = PAGE_PARAMS.get(name, {})
    ends = [float(params.get("silentUntil", 0))]
    if "mute" in params:
        ends.append(float(params["mute"].split(":")[1]))
    last_silence = max(ends)
    seconds = float(params.get("secs", 10))
    return any(s["codec_type"] == "audio" for s in streams) and last_silence < seconds - 1.5


@pytest.mark.parametrize("name", [n for n in FILES if _sounds_to_the_end(n)])
def test_acw_audio_reaches_the_last_second(name: str, tmp_path: Path) -> None:
    """The microphone's last second is in the output, however early the last frame was."""
    mic = microphone(name)
    assert mic is not None
    call_end = call_end_at(name, "late")
    result = run_merge(
        DATA_DIR / name, DATA_DIR / CONNECT_WAV, call_end, tmp_path, ext=extension(name)
    )
    last = window(decoded(result.output, 1), 16000, mic.end - 1.0, mic.end - GUARD)
    assert band_share(last, 16000, RECORDING_TONE) > 0.8
    assert result.media_duration_seconds >= mic.end - 0.001


def test_static_screen_recordings_end_long_after_their_last_frame() -> None:
    """The fixtures really have the quirk the tests above rely on."""
    static = [n for n in FILES if "static" in PAGE_PARAMS.get(n, {}) and n.startswith("chrome")]
    assert len(static) >= 4
    for name in static:
        path = DATA_DIR / name
        assert stream_end(path, "v:0") < stream_end(path, "a:0") - 3.0, name


def test_resized_recordings_change_frame_size() -> None:
    # avc1 MP4 is left out: Chromium writes no new parameter sets there, so decoders keep
    # the first size (its frames still hash equal in the output: the same bytes decoded).
    resized = [n for n in FILES if "resize" in PAGE_PARAMS.get(n, {}) and "avc1" not in n]
    assert len(resized) >= 4
    for name in resized:
        sizes = frame_sizes(DATA_DIR / name)
        assert len(set(sizes)) >= 3, (name, set(sizes))


def test_low_frame_rate_h264_webm_has_frames_without_decode_times() -> None:
    """The fixture has the quirk: ffmpeg gives its first frames no dts and its video no start
    time, so the container starts at the audio, after the first frame."""
    path = DATA_DIR / "chrome-h264-1fps-resize-12s.webm"
    assert decode_times(path)[0] is None
    streams = ffprobe_json(path)["streams"]
    assert isinstance(streams, list)
    video = next(s for s in streams if s["codec_type"] == "video")
    assert video.get("start_time", "N/A") == "N/A"
    assert start_time(path) > packet_times(path, "v:0")[0]


def test_late_video_starts_after_the_audio() -> None:
    path = DATA_DIR / "chrome-vp8-late-video-10s.webm"
    assert packet_times(path, "v:0")[0] > packet_times(path, "a:0")[0] + 0.5


def test_stereo_48k_output_of_a_stereo_microphone(tmp_path: Path) -> None:
    name = "chrome-vp8-stereo-muted-10s.webm"
    audio = AudioSettings(channels=2, sample_rate=48000, bitrate="96k")
    call_end = 3.0
    result = run_merge(
        DATA_DIR / name, DATA_DIR / CONNECT_WAV, call_end, tmp_path, ext="webm", audio=audio
    )
    assert_same_video_and_duration(result.output, DATA_DIR / name, result, audio)
    assert_timeline(
        result.output, expected(name, call_end, result.media_duration_seconds), stereo=True
    )
    assert decode_pcm(result.output, channels=2).shape[1] == 2


def test_every_recorder_recording_is_committed_small_and_described() -> None:
    readme = (DATA_DIR / "README.md").read_text()
    for rec in RECORDINGS:
        path = DATA_DIR / rec.name
        assert path.is_file(), f"{rec.name}: run `make recordings`"
        assert path.stat().st_size < 1_000_000, rec.name
        assert f"| `{rec.name}` |" in readme, f"{rec.name} is not in tests/data/README.md"


@pytest.fixture(scope="module")
def long_recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3-minute files made of a real recording looped (stream copy), with a header duration:
    an MP4 (H.264) and a WebM (VP8), and the MP4 cut at 60 %."""
    from tests.harness.media_tools import FFMPEG, _run

    folder = tmp_path_factory.mktemp("long")
    out = {}
    for name, source in (
        ("long.mp4", "chrome-h264-resize-12s.webm"),
        ("long.webm", "chrome-vp8-static-end-12s.webm"),
    ):
        path = folder / name
        loop = [*FFMPEG, "-stream_loop", "14", "-i", str(DATA_DIR / source), "-c", "copy"]
        _run([*loop, *(["-movflags", "+faststart"] if name.endswith("mp4") else []), str(path)])
        out[name] = path
    data = out["long.mp4"].read_bytes()
    cut = folder / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    out["cut.mp4"] = cut
    return out


@pytest.mark.parametrize("name", ["long.mp4", "long.webm"])
def test_long_file_read_in_intervals_has_the_same_timeline(
    name: str, long_recordings: dict[str, Path], tmp_path: Path
) -> None:
    import anyio

    path = long_recordings[name]
    info = anyio.run(media.probe, path)
    assert info.timeline is not None and not info.timeline.complete  # head and tail only
    assert info.duration == pytest.approx(input_duration(path), abs=0.001)
    assert info.duration > 170
    result = run_merge(
        path, DATA_DIR / CONNECT_WAV, info.duration - 30, tmp_path, ext=name[-4:].strip(".")
    )
    assert result.media_duration_seconds == pytest.approx(info.duration)
    last = window(decoded(result.output, 1), 16000, info.duration - 1.0, info.duration - GUARD)
    assert band_share(last, 16000, RECORDING_TONE) > 0.8


def test_long_file_cut_short_is_refused_as_truncated(long_recordings: dict[str, Path]) -> None:
    import anyio

    from worker.errors import MediaError

    # The header promises 3 minutes; the tail read finds nothing, the full read 1.8 minutes.
    with pytest.raises(MediaError, match=r"truncated: its header says 179\.\d+ s, its media ends"):
        anyio.run(media.probe, long_recordings["cut.mp4"])
