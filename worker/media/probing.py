"""Probing a file: ffprobe's header, then the :class:`Timeline` of its packets.

:func:`probe` runs ffprobe through :mod:`worker.ffmpeg` (the allow-lists, the time limit, the
kill on cancellation). When the caller knows what to read (``expected_duration``: the merge's
output; ``one_run``: the Connect audio; ``hint``: an MP4 recording whose movie header declares
its duration, or a live WebM, read whole), format, streams and packets come from one run
(:func:`build_one_run_args`, :class:`~worker.media.onerun.OneRunReader`; a plain PCM WAV,
with ``one_run``, in none: :mod:`worker.media.wav_header`); otherwise twice:
once for the format and streams (:func:`~worker.media.probe_json.parse_probe_json`), once
for the packets (:class:`~worker.media.timeline.TimelineScan`), all of them or, for a long
file with a believable header, its head and tail (the lines read by
:mod:`worker.media.packets`). The argument builders and the parsers are pure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog

from worker import ffmpeg
from worker.errors import MediaError
from worker.limits import FFMPEG_TIMEOUT_BASE_SECONDS, MAX_MEDIA_SECONDS
from worker.media.model import MediaInfo, ProbeHeader
from worker.media.mp4_header import Read, mp4_duration
from worker.media.mp4_tracks import mp4_probe
from worker.media.onerun import OneRunReader
from worker.media.packets import CompactPackets
from worker.media.probe_json import parse_probe_json as parse_probe_json  # re-exported
from worker.media.timeline import (
    HEAD_SECONDS,
    StreamSpan,
    Timeline,
    TimelineScan,
    intervals_suffice,
    last_video_unseen,
    looks_truncated,
    read_back_starts,
    scan_intervals,
    with_last_packet,
)
from worker.media.wav_header import wav_probe
from worker.media.webm_header import webm_live
from worker.observability import FFMPEG_FAILURES

log = structlog.get_logger("worker.media")


PACKET_ENTRIES = (
    "packet=stream_index,pts_time,dts_time,duration_time,flags"
    ":packet_side_data=skip_samples,discard_padding"
)
# A one-run probe holds the packets it read until the header (printed after them) is parsed:
# at most this many (every packet of a 45-minute Connect WAV is about 21,000); a file with
# more is read in two runs instead.
ONE_RUN_MAX_PACKETS = 100_000


def build_probe_args(path: Path) -> list[str]:
    """ffprobe of format and streams, as JSON (pure)."""
    return [
        ffmpeg.FFPROBE,
        "-hide_banner",
        "-v",
        "error",
        "-show_format",
        "-show_streams",
        "-of",
        "json",
        *ffmpeg.input_args(path),
    ]


def build_timeline_args(
    path: Path, intervals: str | None = None, stream: int | None = None
) -> list[str]:
    """ffprobe listing packets' stream, times, flags and skipped samples (pure).

    Demuxing only (no decoding): a pass over the file at disk speed, or over ``intervals``
    (ffprobe's ``-read_intervals``, see :func:`~worker.media.timeline.scan_intervals`); only
    stream ``stream`` when given (an MP4 demuxer then skips the others' data). One line per
    packet, read by :class:`~worker.media.timeline.TimelineScan`.
    """
    return [
        ffmpeg.FFPROBE,
        "-hide_banner",
        "-v",
        "error",
        *(["-read_intervals", intervals] if intervals else []),
        *(["-select_streams", str(stream)] if stream is not None else []),
        "-show_entries",
        PACKET_ENTRIES,
        "-of",
        "compact=p=0",
        *ffmpeg.input_args(path),
    ]


def build_one_run_args(path: Path, intervals: str | None, *, whole: bool = False) -> list[str]:
    """ffprobe of format, streams and packets in one run (pure): the packets of ``intervals``,
    every one (``whole``) or the first :data:`ONE_RUN_MAX_PACKETS`, as compact JSON (one
    packet a line), read by :class:`~worker.media.onerun.OneRunReader`."""
    read = [] if whole else ["-read_intervals", intervals or f"%+#{ONE_RUN_MAX_PACKETS}"]
    return [
        ffmpeg.FFPROBE,
        "-hide_banner",
        "-v",
        "error",
        *read,
        "-show_format",
        "-show_streams",
        "-show_entries",
        PACKET_ENTRIES,
        "-of",
        "json=c=1",
        *ffmpeg.input_args(path),
    ]


# A duration hint (an MP4's movie header, read before ffprobe runs) and ffprobe's header may
# differ by the streams' offsets; more than this and the hint is not used.
HINT_TOLERANCE = 1.0


async def probe(
    path: Path,
    *,
    timeout: float = FFMPEG_TIMEOUT_BASE_SECONDS,  # noqa: ASYNC109
    expected_duration: float | None = None,
    one_run: bool = False,
    hint: bool = False,
) -> MediaInfo:
    """Probe ``path`` with the allow-lists and read its :class:`Timeline` from its packets
    (all of them, or the head and tail of a long file with a believable header).

    In one ffprobe run when the caller knows what to read: the head and tail (or every packet)
    of a file of ``expected_duration`` (the merge's output), or with ``one_run`` every packet
    (the Connect audio), or with ``hint`` when an MP4's movie header declares its duration
    (:func:`~worker.media.mp4_header.mp4_duration`, the recording; ffprobe's header must then
    agree) or a WebM's declares none (:func:`~worker.media.webm_header.webm_live`: every
    packet, read as it streams in); a file that then turns out otherwise is read in two
    runs, as without. With ``one_run``, a plain PCM WAV is read from its header in Python
    (:func:`~worker.media.wav_header.wav_probe`; any other file goes to ffprobe); so is,
    with ``expected_duration``, a faststart MP4 (:func:`~worker.media.mp4_tracks.mp4_probe`).

    Raises :class:`MediaError` (or a subclass) for files ffprobe refuses or cannot read,
    :class:`worker.errors.MediaTimeout` past ``timeout``.
    """
    path = Path(path)
    # A plain PCM WAV (the Connect audio) read from its header: no ffprobe run at all.
    read = _local_read(path, wav_probe) if one_run and expected_duration is None else None
    if read is None and expected_duration is not None:
        # The merge's MP4 output: its movie header's sample tables, no ffprobe run (issue 18).
        read = _local_read(path, lambda p, r, n: mp4_probe(p, r, n, expected_duration))
    hinted = _duration_hint(path) if hint and expected_duration is None else None
    live = hint and hinted is None and expected_duration is None and _live_webm(path)
    if read is None and (one_run or expected_duration is not None or hinted is not None or live):
        read = await _read_in_one_run(
            path, timeout, expected_duration or hinted, hinted is not None, live=live
        )
    if read is None:
        header = await _read_header(path, timeout)
        timeline = await _read_timeline(header, timeout)
    else:
        header, timeline = read
    if looks_truncated(header.duration, timeline.duration, header.size_bytes):
        FFMPEG_FAILURES.labels(reason="truncated").inc()
        raise MediaError(
            f"{path.name} is truncated: its header says {header.duration:.3f} s, "
            f"its media ends at {timeline.duration:.3f} s"
        )
    info = MediaInfo(
        path=path,
        format_name=header.format_name,
        duration=timeline.duration,
        video=header.video,
        audio=header.audio,
        start_time=header.start_time,
        size_bytes=header.size_bytes,
        timeline=timeline,
        header_duration=header.duration,
    )
    _log_probed(info, timeline)
    return info


async def _read_in_one_run(
    path: Path,
    timeout: float,  # noqa: ASYNC109
    expected_duration: float | None,
    hinted: bool = False,
    *,
    live: bool = False,
) -> tuple[ProbeHeader, Timeline] | None:
    """Header and timeline from one ffprobe run; None when the file needs the two-run read
    (a header that calls for other intervals or, ``hinted``, disagrees with the expected
    duration; too many packets; intervals that fell short). ``live``: every packet, read as
    it streams in (a live WebM)."""
    size = _size(path)
    intervals = None if expected_duration is None else scan_intervals(expected_duration, size)
    reader = OneRunReader(streaming=live)
    await ffmpeg.run(
        build_one_run_args(path, intervals[0] if intervals else None, whole=live),
        timeout=timeout + size / 20e6,  # a demux pass over the file, as the packet scan's
        what=f"probe of {path.name}",
        on_stdout_line=reader.feed,
    )
    header = _checked(parse_probe_json(path, reader.header_text(), size))
    if hinted and not _agrees(header.duration, expected_duration):
        return None
    rates = {s.index: s.sample_rate for s in (header.video, header.audio) if s is not None}
    if intervals is None:
        if live and scan_intervals(header.duration, size) is not None:
            return None  # ffprobe found a duration after all: the two runs read head and tail
        if not live and reader.packets >= ONE_RUN_MAX_PACKETS:
            return None
        timeline = reader.timeline(rates, complete=True)
    else:
        timeline = reader.timeline(rates, complete=False)
        wanted = scan_intervals(header.duration, size)
        if wanted is None or timeline is None:
            return None
        if not intervals_suffice(timeline, intervals[1], len(rates)):
            return None
        if header.video is not None:
            timeline = await _read_back_video(
                path, header.video.index, timeline, intervals[1], timeout + size / 20e6
            )
    if timeline is None or not 0 < timeline.duration <= MAX_MEDIA_SECONDS:
        return None
    return header, timeline


async def _read_header(path: Path, timeout: float) -> ProbeHeader:  # noqa: ASYNC109
    """ffprobe's format and streams of a non-empty file with a video or an audio stream."""
    size = _size(path)
    lines: list[str] = []
    await ffmpeg.run(
        build_probe_args(path),
        timeout=timeout,
        what=f"probe of {path.name}",
        on_stdout_line=lines.append,
    )
    return _checked(parse_probe_json(path, "\n".join(lines), size))


def _checked(header: ProbeHeader) -> ProbeHeader:
    if header.video is None and header.audio is None:
        FFMPEG_FAILURES.labels(reason="no_streams").inc()
        raise MediaError(f"{header.path.name} has neither video nor audio")
    return header


def _duration_hint(path: Path) -> float | None:
    """The duration an MP4 recording's movie header declares, read from its boxes, or None."""
    return _local_read(path, lambda _path, read, size: mp4_duration(read, size))


def _live_webm(path: Path) -> bool:
    """Whether the file is a WebM whose header declares no duration (read from its EBML)."""
    return bool(_local_read(path, lambda _path, read, size: webm_live(read, size)))


T = TypeVar("T")


def _local_read(path: Path, parse: Callable[[Path, Read, int], T | None]) -> T | None:
    """``parse(path, read, size)`` of a regular file's header (a few small local reads: no
    worker thread), or None (an unreadable file: the ffprobe run that follows reports it)."""
    try:
        if not path.is_file():  # a regular file only: opening a FIFO would wait
            return None
        with path.open("rb") as file:

            def read(offset: int, length: int) -> bytes:
                file.seek(offset)
                return file.read(length)

            return parse(path, read, path.stat().st_size)
    except OSError:
        return None


def _agrees(header: float | None, hint: float | None) -> bool:
    return header is not None and hint is not None and abs(header - hint) <= HINT_TOLERANCE


def _size(path: Path) -> int:
    """The size of a non-empty file (a local stat: fast enough not to need a worker thread)."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise MediaError(f"{path.name}: cannot read ({error.strerror})") from None
    if size == 0:
        FFMPEG_FAILURES.labels(reason="invalid_data").inc()
        raise MediaError(f"{path.name} is empty (0 bytes)")
    return size


async def _read_timeline(header: ProbeHeader, timeout: float) -> Timeline:  # noqa: ASYNC109
    """The packets' timeline: the head and tail of a long file with a believable header when
    they suffice, else every packet."""
    path, size = header.path, header.size_bytes
    streams = [s for s in (header.video, header.audio) if s is not None]
    rates = {s.index: s.sample_rate for s in streams}
    # Reading every packet is a demux pass (no decoding): allow for the file's size.
    scan_timeout = timeout + size / 20e6
    timeline: Timeline | None = None
    intervals = scan_intervals(header.duration, size)
    if intervals is not None:
        timeline = await _scan(path, rates, scan_timeout, intervals[0])
        if timeline is not None and not intervals_suffice(timeline, intervals[1], len(rates)):
            timeline = None  # the header misled the seek: read every packet instead
        if timeline is not None and header.video is not None:
            timeline = await _read_back_video(
                path, header.video.index, timeline, intervals[1], scan_timeout
            )
    if timeline is None:
        timeline = await _scan(path, rates, scan_timeout, None)
    if timeline is None or not 0 < timeline.duration <= MAX_MEDIA_SECONDS:
        FFMPEG_FAILURES.labels(reason="invalid_data").inc()
        raise MediaError(f"{path.name}: no readable packets")
    return timeline


async def _read_back_video(
    path: Path,
    index: int,
    timeline: Timeline,
    tail_from: float,
    timeout: float,  # noqa: ASYNC109
) -> Timeline:
    """``timeline`` with the last packet of its video (stream ``index``), read from further
    back when the head and tail reads show none past the head
    (:func:`~worker.media.timeline.last_video_unseen`).

    Only the video stream's packets, from ever further back to the end of the file
    (:func:`~worker.media.timeline.read_back_starts`); one scan's span at a time in memory.
    """
    if not last_video_unseen(timeline, index):
        return timeline
    for start in read_back_starts(tail_from, timeline.origin + HEAD_SECONDS):
        found = await _scan(path, {index: None}, timeout, f"{start:.3f}%", stream=index)
        span = found.stream(index) if found is not None else None
        if span is not None:
            log.info("last_frame_read_back", file=path.name, start=round(start, 3))
            return with_last_packet(timeline, span)
    return timeline


async def _scan(
    path: Path,
    rates: dict[int, int | None],
    timeout: float,  # noqa: ASYNC109
    intervals: str | None,
    *,
    stream: int | None = None,
) -> Timeline | None:
    scanner = TimelineScan(rates)
    lines = CompactPackets(scanner)
    await ffmpeg.run(
        build_timeline_args(path, intervals, stream),
        timeout=timeout,
        what=f"packet scan of {path.name}",
        on_stdout_bytes=lines.feed,
    )
    lines.close()
    return scanner.timeline(complete=intervals is None)


def _log_probed(info: MediaInfo, timeline: Timeline) -> None:
    header = info.header_duration
    video, audio = info.video, info.audio
    log.info(
        "media_probed",
        file=info.path.name,
        format=info.format_name,
        duration=round(info.duration, 3),
        header_duration=(round(header, 3) or None) if header is not None else None,
        origin=round(timeline.origin, 3),
        streams={
            f"{kind} {s.codec_name}": _span_summary(timeline.relative(s.index))
            for kind, s in (("video", video), ("audio", audio))
            if s is not None
        },
        video=video and f"{video.codec_name} {video.width}x{video.height}",
        audio=audio and f"{audio.codec_name} {audio.sample_rate} Hz {audio.channels} ch",
    )


def _span_summary(span: StreamSpan | None) -> str:
    if span is None:
        return "no packets"
    return f"{span.start:.3f}-{span.end:.3f} s, {span.packets} packets"
