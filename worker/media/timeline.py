"""The one definition of a file's timeline, read from its packets (SPEC §5).

From the earliest timestamp of any stream (ffmpeg shifts every input so that it is 0) to the
end of the last sample of any stream, audio or video. All durations and offsets of the merge
are on that shifted timeline, which is also where ``callEnd`` is measured from (the start of
the Komorebi recording).

:class:`TimelineScan` builds a :class:`Timeline` from ffprobe's packet lines, the same way with
or without a header duration (MediaRecorder WebM has none): every packet, or for a long file
with a believable header its first and last seconds (:func:`scan_intervals`); a header
promising clearly more than the packets hold is a truncated file (:func:`looks_truncated`).
When the head and tail show no video past the head, the video alone is read from further
back (:func:`last_video_unseen`, :func:`read_back_starts`): the last frame, which the merge
holds to the end, is known by its time on long files too. Everything here is pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from worker.limits import MAX_MEDIA_SECONDS
from worker.media._parse import parse_float, parse_int

# A header that claims fewer bits per second than this for the whole file is not believed
# (e.g. "3 hours" on a 400 kB file): screen recordings, even of a static screen, and speech
# audio stay well above it.
MIN_PLAUSIBLE_BITRATE = 4000.0
# A believable header duration this much longer than the packets' timeline means that the file
# was cut (a fragmented MP4's index promising samples that are not there): the larger of the two.
TRUNCATION_MIN_SECONDS = 1.0
TRUNCATION_MIN_SHARE = 0.05
# A file with a believable header duration longer than this is read in two intervals, its
# first seconds (the origin) and its last (the end), not packet by packet: ffprobe seeks with
# the container's index. (MediaRecorder WebM has no header: read whole.)
INTERVAL_MIN_SECONDS = 120.0
HEAD_SECONDS = 20.0
TAIL_SECONDS = 30.0
# A scan of every stream before their rates are known (a live WebM's one-run probe) keeps the
# packets with skipped or discarded samples until they are (a few: the first audio packet's
# pre-skip, the last's padding); past this many it gives up (the probe reads in two runs).
MAX_DEFERRED_PACKETS = 1000


@dataclass(frozen=True)
class StreamSpan:
    """Where one stream's samples lie on its file's own clock (seconds), from its packets."""

    index: int
    start: float  # the first presented sample (discarded priming and skipped samples excluded)
    end: float  # the end of the last sample: max(pts + duration)
    last: float  # the start of the last sample (for video: the frame held to the end)
    packets: int  # presented packets (frames)
    discarded: int = 0  # packets the demuxer marks discarded (still copied by ffmpeg)
    in_order: bool = True  # presentation times never go back in file order (no reordering)


@dataclass(frozen=True)
class Timeline:
    """The one definition of a file's timeline, used by the plan, the merge and the check.

    ``origin`` is the earliest timestamp of any stream (ffmpeg shifts every input by it, so it
    is t=0 of the merge and of ``callEnd``); ``end`` is the end of the last sample of any
    stream, audio or video: a static screen emits no video frames while the microphone goes on,
    and the last picture stays on screen until the last sound. Both come from the packets
    (:class:`TimelineScan`), the same way for files with and without a header duration.
    """

    streams: tuple[StreamSpan, ...]
    complete: bool = True  # every packet read (False: only the head and the tail; counts partial)

    @property
    def origin(self) -> float:
        """The earliest timestamp of any stream (the file's t=0 for ffmpeg)."""
        return min(span.start for span in self.streams)

    @property
    def end(self) -> float:
        """The end of the last sample of any stream, on the file's own clock."""
        return max(span.end for span in self.streams)

    @property
    def duration(self) -> float:
        """How long the file lasts: from the first sample of any stream to the last's end."""
        return self.end - self.origin

    def stream(self, index: int) -> StreamSpan | None:
        """The span of stream ``index`` (None when it has no packets)."""
        return next((span for span in self.streams if span.index == index), None)

    def relative(self, index: int) -> StreamSpan | None:
        """Stream ``index``'s span with times relative to :attr:`origin`."""
        span = self.stream(index)
        if span is None:
            return None
        o = self.origin
        return replace(span, start=span.start - o, end=span.end - o, last=span.last - o)


@dataclass(slots=True)
class _SpanSoFar:
    """One stream's span while packets are still being fed (see :class:`TimelineScan`)."""

    start: float
    end: float
    last: float
    packets: int = 1


class TimelineScan:
    """Builds a :class:`Timeline` from ffprobe packet lines (see
    :func:`worker.media.commands.build_timeline_args`).

    Per stream: the first presented sample is the smallest packet time, where packets that
    the demuxer marks discarded (flag ``D``: MP4 edit-list priming) do not count and an
    audio packet's skipped samples (Opus pre-skip in MP4) move its start; the end is the
    largest ``pts + duration``, less the samples a packet discards at its end (WebM
    DiscardPadding). ``streams`` maps the streams read to their sample rates (None for video);
    other streams' packets (subtitles, data, a cover picture) are ignored.
    """

    def __init__(self, streams: dict[int, int | None] | None) -> None:
        self._rates = streams  # None: every stream, the rates given to timeline()
        self._deferred: list[tuple[int, float, float, int, int]] = []
        self._spans: dict[int, _SpanSoFar] = {}
        self._discarded: dict[int, int] = {}
        self._previous: dict[int, float] = {}  # the last packet's time, in file order
        self._reordered: set[int] = set()
        self._overflow = False  # more deferred packets than MAX_DEFERRED_PACKETS

    def feed(self, line: str) -> None:
        """Take one output line (lines without a timed packet are ignored)."""
        self.feed_values(dict(part.split("=", 1) for part in line.split("|") if "=" in part))

    def feed_values(self, values: dict[str, str]) -> None:
        """Take one packet's fields (``stream_index``, ``pts_time``... as ffprobe prints them)."""
        index = parse_int(values.get("stream_index"))
        if index is None:
            return
        self.feed_packet(
            index,
            "D" in values.get("flags", ""),
            parse_float(values.get("pts_time")),
            parse_float(values.get("dts_time")),
            parse_float(values.get("duration_time")),
            parse_int(values.get("skip_samples")) or 0,
            parse_int(values.get("discard_padding")) or 0,
        )

    def feed_packet(
        self,
        index: int,
        discarded: bool,
        pts: float | None,
        dts: float | None,
        duration: float | None,
        skip_samples: int = 0,
        discard_padding: int = 0,
    ) -> None:
        """Take one packet as numbers (None: absent; see :mod:`worker.media.packets`)."""
        if self._rates is not None and index not in self._rates:
            return
        if discarded:
            self._discarded[index] = self._discarded.get(index, 0) + 1
            return
        when = dts if pts is None else pts
        if when is None:
            return
        previous = self._previous.get(index)
        if previous is not None and when < previous:
            self._reordered.add(index)
        self._previous[index] = when
        if self._rates is None and (skip_samples or discard_padding):
            # Its start and end need the stream's rate, not known yet: kept until timeline().
            if len(self._deferred) < MAX_DEFERRED_PACKETS:
                self._deferred.append((index, when, duration or 0.0, skip_samples, discard_padding))
            else:
                self._overflow = True
            start, end = math.inf, -math.inf  # the span's count, last and order only
        else:
            rate = self._rates.get(index) if self._rates is not None else None
            start, end = _bounds(when, duration or 0.0, skip_samples, discard_padding, rate)
        span = self._spans.get(index)
        if span is None:
            self._spans[index] = _SpanSoFar(start, end, when)
        else:
            if start < span.start:
                span.start = start
            if end > span.end:
                span.end = end
            if when > span.last:
                span.last = when
            span.packets += 1

    def timeline(
        self, *, complete: bool = True, rates: dict[int, int | None] | None = None
    ) -> Timeline | None:
        """The timeline of what was fed (None when no packet had a time, or, for a scan of
        every stream, more than :data:`MAX_DEFERRED_PACKETS` needed their rates); a scan of
        every stream is given here the streams to keep and their ``rates``."""
        if self._rates is None:
            if rates is None or self._overflow:
                return None
            self._settle(rates)
        spans = [(i, s) for i, s in sorted(self._spans.items()) if rates is None or i in rates]
        if not spans:
            return None
        return Timeline(
            tuple(
                StreamSpan(
                    index,
                    span.start,
                    span.end,
                    span.last,
                    span.packets,
                    self._discarded.get(index, 0),
                    in_order=index not in self._reordered,
                )
                for index, span in spans
            ),
            complete=complete,
        )

    def _settle(self, rates: dict[int, int | None]) -> None:
        """The deferred packets' starts and ends, now that the rates are known."""
        for index, when, duration, skip, padding in self._deferred:
            start, end = _bounds(when, duration, skip, padding, rates.get(index))
            span = self._spans[index]
            span.start, span.end = min(span.start, start), max(span.end, end)
        self._deferred.clear()


def _bounds(
    when: float, duration: float, skip: int, padding: int, rate: int | None
) -> tuple[float, float]:
    """A packet's first presented sample and its end: skipped samples (Opus pre-skip) move
    its start, discarded ones (WebM DiscardPadding) its end; they count only with a rate."""
    start, end = when, when + duration
    if rate:
        start += skip / rate
        end -= padding / rate
    return start, end


def header_duration_plausible(duration: float | None, size_bytes: int) -> bool:
    """Whether a header duration can be believed for a file of ``size_bytes``."""
    if duration is None or not 0 < duration <= MAX_MEDIA_SECONDS:
        return False
    return size_bytes * 8 / duration >= MIN_PLAUSIBLE_BITRATE


def looks_truncated(
    header_duration: float | None, timeline_duration: float, size_bytes: int
) -> bool:
    """Whether a believable header promises clearly more media than the packets hold (pure).

    A header that claims an implausible length (see :func:`header_duration_plausible`) is
    ignored instead: the packets are the truth.
    """
    if header_duration is None or not header_duration_plausible(header_duration, size_bytes):
        return False
    missing = header_duration - timeline_duration
    return missing > max(TRUNCATION_MIN_SECONDS, TRUNCATION_MIN_SHARE * header_duration)


def scan_intervals(header_duration: float | None, size_bytes: int) -> tuple[str, float] | None:
    """``-read_intervals`` for a long file with a believable header, and where its tail
    starts (pure); None: read every packet.

    The head gives the origin (every stream starts there: a muxer interleaves by time), the
    tail, read to the end of the file whatever the header says, gives the end.
    """
    if header_duration is None or not header_duration_plausible(header_duration, size_bytes):
        return None
    if header_duration < INTERVAL_MIN_SECONDS:
        return None
    tail = header_duration - TAIL_SECONDS
    return f"%+{HEAD_SECONDS:g},{tail:.3f}%", tail


def intervals_suffice(timeline: Timeline, tail_from: float, streams: int) -> bool:
    """Whether the head and tail reads found every stream's start and the file's end: each
    stream began in the head, and the tail held packets (none if the header promised more
    than the file holds, which the full scan then shows)."""
    return (
        len(timeline.streams) == streams
        and all(span.start < tail_from for span in timeline.streams)
        and timeline.end >= tail_from
    )


def last_video_unseen(timeline: Timeline, index: int) -> bool:
    """Whether the head and tail reads may have missed stream ``index``'s last packet (pure):
    none of its packets lies past the head (the head read shows only its first
    :data:`HEAD_SECONDS`; the tail read, to the end of the file, shows every packet after
    where its seek landed, so one video packet there means the last one was read too)."""
    span = timeline.stream(index)
    return span is not None and span.last < timeline.origin + HEAD_SECONDS


def read_back_starts(tail_from: float, head_until: float) -> list[float]:
    """Where the reads that look for the last video packet before the tail start (pure), when
    the tail showed none (a screen static for longer than the tail, in a file whose seek did
    not land on an earlier keyframe; ffmpeg's MP4 and WebM seeks normally do):
    :data:`TAIL_SECONDS`, twice, four times... further back than the tail, the last at the
    head's end. Each read goes to the end of the file, so the first that finds a video packet
    has found the last one; the doubling keeps their total within twice the last one's."""
    starts: list[float] = []
    back = TAIL_SECONDS
    while tail_from - back > head_until:
        starts.append(tail_from - back)
        back *= 2
    return [*starts, head_until]


def with_last_packet(timeline: Timeline, found: StreamSpan) -> Timeline:
    """``timeline`` with the last packet a read further back found for one stream (pure): its
    end and last frame; its packet count stays that of the head and the tail (partial)."""
    spans = tuple(
        replace(span, end=max(span.end, found.end), last=max(span.last, found.last))
        if span.index == found.index
        else span
        for span in timeline.streams
    )
    return replace(timeline, streams=spans)
