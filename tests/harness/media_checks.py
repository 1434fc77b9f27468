"""Checks of a merged file by content: the expected audio timeline (silence, Connect tones, the
recording's tone) window by window, decoded video frames and durations, and the cached merge
the media tests share (one merge per distinct request)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from tests.harness.fixtures_media import (
    AGENT_TONE,
    CUSTOMER_TONE,
    HEAD_TONE,
    RECORDING_TONE,
)
from tests.harness.media_tools import (
    Samples,
    band_share,
    decode_pcm,
    framemd5,
    packet_times,
    probe_duration,
    rms,
    stream_ends,
    timeline_duration,
    timeline_end,
    timeline_origin,
    window,
)
from worker import media
from worker.config import AudioSettings
from worker.media.model import MediaInfo
from worker.media.mp4_tracks import mp4_probe

GUARD = 0.05  # seconds skipped at each boundary (codec transitions, frame rounding)


STEP = 0.1  # analysis window


SILENCE_RMS = 0.003


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    kind: str  # silence | connect | head | recording


def run_merge(
    recording: Path,
    connect: Path,
    call_end: float,
    out_dir: Path,
    *,
    ext: str,
    align: str = "end",
    audio: AudioSettings | None = None,
    thumbnail: bool = False,
) -> media.MergeResult:
    key = (recording, connect, call_end, ext, align, audio, thumbnail)
    if key in _MERGED and _MERGED[key].output.exists():
        return _MERGED[key]  # the same merge another test already made and checked
    options = media.MergeOptions(align=align, audio=audio or AudioSettings())  # type: ignore[arg-type]
    request = media.MergeRequest(
        recording=recording,
        connect_audio=connect,
        call_end_seconds=call_end,
        output=out_dir / f"recording.{ext}",
        thumbnail=out_dir / "thumbnail.png" if thumbnail else None,
        options=options,
    )
    result = anyio.run(media.merge, request)
    _MERGED[key] = result
    return result


_MERGED: dict[tuple[object, ...], media.MergeResult] = {}


def expected_segments(
    duration: float,
    call_end: float,
    connect_duration: float,
    *,
    align: str = "end",
    recording_audio_start: float | None = 0.0,
    head: float = 0.0,
) -> list[Segment]:
    """The audio timeline a correct merge produces (``head``: seconds of HEAD_TONE at the
    Connect file's start)."""
    c = min(call_end, duration)
    segs: list[Segment] = []
    # Where the Connect file's t=0 lands.
    conn_start = c - connect_duration if align == "end" else 0.0
    if conn_start > 0:
        segs.append(Segment(0.0, conn_start, "silence"))
    if head and conn_start + head > 0:
        segs.append(Segment(max(0.0, conn_start), min(c, conn_start + head), "head"))
    call_from = max(0.0, conn_start + head)
    call_to = min(c, conn_start + connect_duration)
    if call_to > call_from:
        segs.append(Segment(call_from, call_to, "connect"))
    if call_to < c:
        segs.append(Segment(call_to, c, "silence"))
    if recording_audio_start is None:
        segs.append(Segment(c, duration, "silence"))
    else:
        if recording_audio_start > c:
            segs.append(Segment(c, recording_audio_start, "silence"))
        segs.append(Segment(max(c, recording_audio_start), duration, "recording"))
    return [s for s in segs if s.end - s.start > 2 * GUARD + 0.02]


def assert_timeline(path: Path, segments: list[Segment], *, stereo: bool = False) -> None:
    """Window-by-window tone checks of ``path``'s audio against ``segments``."""
    rate = 16000
    channels = 2 if stereo else 1
    pcm = decoded(path, channels)
    for seg in segments:
        # The span inside the guards, tiled with windows of about STEP: at least one window,
        # so a segment shorter than STEP + 2 GUARD is checked too (never silently skipped).
        inner = seg.end - seg.start - 2 * GUARD
        assert inner > 0.0199, f"{seg} is too short to check: expected_segments must drop it"
        count = max(1, int(inner / STEP + 1e-9))
        length = inner / count
        for i in range(count):
            t = seg.start + GUARD + i * length
            where = f"{path.name} {seg.kind} window {t:.3f}-{t + length:.3f}s"
            left = window(pcm, rate, t, t + length, 0)
            right = window(pcm, rate, t, t + length, channels - 1)
            both = (left + right) / 2
            if seg.kind == "silence":
                assert rms(left) < SILENCE_RMS and rms(right) < SILENCE_RMS, where
            elif seg.kind == "head":
                assert band_share(both, rate, HEAD_TONE) > 0.8, where
            elif seg.kind == "connect":
                assert band_share(both, rate, HEAD_TONE) < 0.05, where
                assert band_share(both, rate, RECORDING_TONE) < 0.05, where
                if stereo:
                    assert band_share(left, rate, CUSTOMER_TONE) > 0.8, where
                    assert band_share(right, rate, AGENT_TONE) > 0.8, where
                else:
                    call = band_share(both, rate, CUSTOMER_TONE) + band_share(
                        both, rate, AGENT_TONE
                    )
                    assert call > 0.8, where
            elif seg.kind == "recording":
                assert band_share(left, rate, RECORDING_TONE) > 0.8, where
                assert band_share(right, rate, RECORDING_TONE) > 0.8, where


def assert_same_video_and_duration(
    output: Path, recording: Path, result: media.MergeResult, audio: AudioSettings
) -> None:
    """Output: the input's video frames (native size) at their original times, and the
    output (container, packets, decoded audio) as long as the recording's timeline."""
    assert framemd5(output) == input_frames(recording), "video frames differ: re-encoded?"
    shift = timeline_origin(recording)  # the merge's t=0: the recording's first sample
    original = [t - shift for t in input_video_times(recording)]
    assert packet_times(output) == pytest.approx(original, abs=0.0015)
    frame = 0.020 if output.suffix == ".webm" else 1024 / audio.sample_rate
    tolerance = frame + media.CONTAINER_ROUNDING_SECONDS
    expected = result.media_duration_seconds
    # The recording's timeline (first to last sample of any stream), measured independently.
    assert abs(input_duration(recording) - expected) < 0.002
    pcm = decoded(output, 1)
    assert abs(pcm.shape[0] / 16000 - expected) <= tolerance
    assert abs(probe_duration(output) - expected) <= tolerance
    # The output is on the recording's timeline: its end (not its audio priming's start).
    assert abs(timeline_end(output) - expected) <= tolerance
    # Each track as long as the recording: the video's last frame held to the end.
    for kind, end in stream_ends(output).items():
        assert abs(end - expected) <= tolerance, f"{output.name}: {kind} track ends at {end}"


@functools.cache
def decoded(path: Path, channels: int) -> Samples:
    """16 kHz PCM of a (never rewritten) output file."""
    return decode_pcm(path, rate=16000, channels=channels)


@functools.cache
def input_frames(path: Path) -> list[str]:
    """framemd5 of an input (inputs never change during a session)."""
    return framemd5(path)


@functools.cache
def input_duration(path: Path) -> float:
    return timeline_duration(path)


@functools.cache
def input_video_times(path: Path) -> list[float]:
    return packet_times(path)


# ffprobe prints seconds with 6 decimals (a track's start and duration each rounded).
PRINTED = 2e-6


def moov_info(path: Path, expected: float) -> MediaInfo:
    """The output read from its ``moov`` only (it must be one this reader handles)."""
    with path.open("rb") as file:

        def read(offset: int, length: int) -> bytes:
            file.seek(offset)
            return file.read(length)

        found = mp4_probe(path, read, path.stat().st_size, expected)
    assert found is not None, f"{path.name}: the moov reader fell back"
    header, timeline = found
    return MediaInfo(path, header.format_name, timeline.duration, header.video, header.audio,
                     timeline=timeline, header_duration=header.duration)  # fmt: skip


def assert_moov_reads_as_ffprobe(
    output: Path, expected: float, theirs: MediaInfo, counts: dict[int, int] | None = None
) -> None:
    """The merge's MP4 ``output`` read from its ``moov`` as ffprobe read it (``theirs``):
    starts, ends, last frames and track ends to ffprobe's printed precision, packet counts
    exactly (a head and tail read's: against ``counts``, ffprobe's count of every packet,
    discarded ones included)."""
    ours = moov_info(output, expected)
    assert ours.timeline is not None and theirs.timeline is not None
    assert ours.header_duration == pytest.approx(theirs.header_duration, abs=PRINTED)
    for mine, real in ((ours.video, theirs.video), (ours.audio, theirs.audio)):
        assert (mine is None) == (real is None), output
        if mine is None or real is None:
            continue
        assert mine.index == real.index and mine.codec_name == real.codec_name
        # What the logs show. (The video's size is the sample entry's, the first frame's: a
        # recording that changes size reads otherwise in ffprobe's decoder.)
        for field in ("channels", "sample_rate"):
            assert getattr(mine, field) == getattr(real, field), field
        assert mine.track_end == pytest.approx(real.track_end, abs=PRINTED)
        a, b = ours.timeline.stream(mine.index), theirs.timeline.stream(real.index)
        assert a is not None and b is not None
        if counts is None:
            assert (a.packets, a.discarded, a.in_order) == (b.packets, b.discarded, b.in_order)
        else:
            assert a.packets + a.discarded == counts[mine.index]
        for field in ("start", "end", "last"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), abs=PRINTED), field
    assert ours.timeline.duration == pytest.approx(theirs.timeline.duration, abs=PRINTED)
