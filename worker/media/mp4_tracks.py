"""The tracks of a non-fragmented MP4, read from its movie header ``moov`` (pure).

The merge's MP4 output is written with ``+faststart`` (the ``moov`` at the front): its video
and audio tracks' sample tables say what ffprobe's packet scan would (issue 18: the output
check without an ffprobe run). Per track (``trak``): the handler (``vide``/``soun``; the
chapters' ``text`` track is skipped), the ``mdhd`` timescale, the ``stts`` sample durations,
the ``ctts`` composition offsets, the ``stsz`` sample count and the ``elst`` edit list, read
as ffmpeg's MP4 demuxer presents them: the one edit's ``media_time`` shifts the track's
times back (B-frames' composition shift, AAC's priming), an empty edit before it forward (a
late track); whole samples before the edit are discarded (the priming packet, flag ``D``).

Anything this reader does not expect gives None, never a guess (the caller then runs
ffprobe): a fragmented MP4 (``moof``/``mvex``), a missing or short box, more than one
non-empty edit, a sample that straddles the edit's start, a sample count that the tables
disagree on, more than one video or audio track, or any other kind of track.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path

from worker.media.model import ProbeHeader, StreamInfo
from worker.media.mp4_header import Read, boxes_of
from worker.media.timeline import StreamSpan, Timeline, scan_intervals

# Samples read at most per track, in the event loop (about 0.7 us each: 150,000 cost about
# what the ffprobe run does, 0.1 s). A 30-minute recording's output (30 fps video 54,000,
# 48 kHz AAC 84,000) is read here; longer ones by ffprobe, its head and tail only.
MAX_SAMPLES = 150_000
# Sample-table entries at most per table (ffmpeg writes one per run of equal values).
MAX_ENTRIES = MAX_SAMPLES
_CONTAINERS = (b"trak", b"mdia", b"minf", b"stbl", b"edts")
_SKIPPED_HANDLERS = (b"text",)  # the chapters' track, which the output check ignores
# The output's tracks (worker.media.containers.MP4: H.264/HEVC video, AAC audio); any other
# codec may carry demuxer side data (Opus's skipped samples) that this reader does not model.
_HANDLED = frozenset(
    [(b"vide", c) for c in (b"avc1", b"avc3", b"hvc1", b"hev1")] + [(b"soun", b"mp4a")]
)


@dataclass(frozen=True)
class Mp4Track:
    """One video or audio track as ffmpeg's demuxer presents it (seconds, on the file's
    clock): the same numbers as :class:`~worker.media.timeline.StreamSpan`, plus where the
    container says the track ends (its presentation start plus its edited duration)."""

    index: int  # the stream index ffmpeg gives it (the order of the ``trak`` boxes)
    kind: str  # "video" or "audio"
    codec: str  # the sample entry's type (avc1, mp4a...)
    # The sample entry's own fields: (width, height) of a video, (channels, rate) of an audio.
    entry: tuple[int, int]
    start: float
    end: float
    last: float
    packets: int
    discarded: int
    in_order: bool
    track_end: float


@dataclass(frozen=True)
class Mp4Tracks:
    """The movie's declared duration (``mvhd``) and its video and audio tracks."""

    duration: float
    video: Mp4Track | None
    audio: Mp4Track | None


class _Unusual(Exception):
    """Something this reader does not handle: the caller falls back to ffprobe."""


def mp4_tracks(read: Read, size: int) -> Mp4Tracks | None:
    """The tracks of a faststart, non-fragmented MP4 from its ``moov``, or None (anything
    unusual: see the module's docstring). ``read(offset, length)`` reads the file."""
    try:
        return _tracks(read, size)
    except (_Unusual, struct.error, ZeroDivisionError):
        return None


def _tracks(read: Read, size: int) -> Mp4Tracks:
    top = boxes_of(read, 0, size)
    kinds = [kind for kind, _, _ in top]
    if not kinds or kinds[0] != b"ftyp" or kinds.count(b"moov") != 1 or b"moof" in kinds:
        raise _Unusual("not one moov, or fragmented")
    if top[-1][2] != size:
        raise _Unusual("boxes do not reach the end of the file")
    _, start, end = top[kinds.index(b"moov")]
    children = boxes_of(read, start, end)
    if any(kind == b"mvex" for kind, _, _ in children):
        raise _Unusual("fragmented")
    movie_scale, movie_duration = _scale_and_duration(_body(read, children, b"mvhd"))
    tracks: dict[str, Mp4Track] = {}
    index = 0
    for kind, payload, box_end in children:
        if kind != b"trak":
            continue
        track = _track(read, payload, box_end, index, movie_scale)
        index += 1
        if track is None:
            continue
        if track.kind in tracks:
            raise _Unusual("a second track of one kind")
        tracks[track.kind] = track
    if not tracks:
        raise _Unusual("no video or audio track")
    return Mp4Tracks(movie_duration / movie_scale, tracks.get("video"), tracks.get("audio"))


def _track(read: Read, start: int, end: int, index: int, movie_scale: int) -> Mp4Track | None:
    """One ``trak`` (None: a skipped chapters track)."""
    boxes = _tree(read, start, end)
    handler = _body(read, boxes, b"hdlr", 12)[8:12]
    if handler in _SKIPPED_HANDLERS:
        return None
    description = _body(read, boxes, b"stsd", 44)
    codec = description[12:16]
    if (handler, codec) not in _HANDLED:
        raise _Unusual("another kind of track or codec")
    scale, media_duration = _scale_and_duration(_body(read, boxes, b"mdhd"))
    deltas = _pairs(read, boxes, b"stts", signed=False)
    offsets = _pairs(read, boxes, b"ctts", signed=True) if _has(boxes, b"ctts") else []
    count = struct.unpack(">I", _body(read, boxes, b"stsz", 12)[8:12])[0]
    if count > MAX_SAMPLES:
        raise _Unusual("too many samples")
    if sum(n for n, _ in deltas) != count or (offsets and sum(n for n, _ in offsets) != count):
        raise _Unusual("sample tables disagree")
    if any(offset < 0 for _, offset in offsets):
        raise _Unusual("negative composition offsets (ffmpeg's dts_shift)")
    empty, media_time, segment = _edit(read, boxes)
    # ffmpeg's stream duration: the media's, cut to the edit's (rescaled, rounded to nearest).
    duration = min(media_duration, _rescale(segment, scale, movie_scale))
    samples = _Samples(_rescale(empty, scale, movie_scale) - media_time, media_time, duration)
    samples.feed(deltas, offsets)
    if not samples.presented or samples.first != samples.shift + media_time:
        raise _Unusual("no samples, or the first not at the track's start")
    return Mp4Track(
        index=index,
        kind="video" if handler == b"vide" else "audio",
        codec=codec.decode("latin-1"),
        entry=_entry_fields(handler, description),
        start=samples.first / scale,
        end=samples.end / scale,
        last=samples.last / scale,
        packets=samples.presented,
        discarded=samples.discarded,
        in_order=samples.in_order,
        # ffprobe's start_time + duration: the first presented sample plus the stream duration.
        track_end=(samples.first + duration) / scale,
    )


class _Samples:
    """The presented samples' span, in the track's ticks, as ffmpeg's MP4 demuxer gives its
    packets: times shifted by ``shift`` (an empty edit less the edit's ``media_time``); whole
    samples before ``media_time`` discarded (AAC's priming); without composition offsets the
    last sample in decoding order lasting to the stream ``duration`` (``next_dts`` of
    ffmpeg's ``mov_read_packet``: a late track's last sample ends short, see
    :mod:`worker.media.check`)."""

    def __init__(self, shift: int, media_time: int, duration: int) -> None:
        self.shift, self.media_time, self.duration = shift, media_time, duration
        self.first = self.last = self.end = 0
        self.presented = self.discarded = 0
        self.in_order = True
        self._previous = 0  # the last presented sample's time, in decoding order

    def feed(self, deltas: list[tuple[int, int]], offsets: list[tuple[int, int]]) -> None:
        """Take the ``stts`` and ``ctts`` tables (every sample, in decoding order)."""
        shifts = chain.from_iterable(repeat(offset, n) for n, offset in offsets)
        count = sum(n for n, _ in deltas)
        dts = 0
        for n, delta in deltas:
            for _ in range(n):
                count -= 1
                cts = dts + (next(shifts) if offsets else 0)
                # ffmpeg's mov_read_packet: a track without composition offsets has its
                # last packet last to the stream's duration, one with them its stts delta.
                length = delta if count or offsets else self.duration - (dts + self.shift)
                if length < 0:
                    raise _Unusual("the last sample starts after the stream's end")
                self._sample(cts, delta, length)
                dts += delta

    def _sample(self, cts: int, delta: int, length: int) -> None:
        if cts + delta <= self.media_time:
            self.discarded += 1
            return
        if cts < self.media_time:
            raise _Unusual("a sample straddles the edit's start")
        pts = cts + self.shift
        if self.presented == 0:
            self.first = self.last = pts
            self.end = pts + length
        else:
            self.in_order = self.in_order and pts >= self._previous
            self.first, self.last = min(self.first, pts), max(self.last, pts)
            self.end = max(self.end, pts + length)
        self._previous = pts
        self.presented += 1


def _rescale(value: int, to: int, origin: int) -> int:
    """``value * to / origin`` rounded to the nearest, half up (ffmpeg's ``av_rescale``)."""
    return (2 * value * to + origin) // (2 * origin)


def _edit(read: Read, boxes: list[tuple[bytes, int, int]]) -> tuple[int, int, int]:
    """(empty edit, media_time, segment duration) of the edit list: an optional empty edit
    (a late track) then one edit at normal rate (the movie's timescale but ``media_time``)."""
    if not _has(boxes, b"elst"):
        raise _Unusual("no edit list")
    body = _body(read, boxes, b"elst", 8)
    version, count = body[0], struct.unpack(">I", body[4:8])[0]
    if version not in (0, 1) or count not in (1, 2):
        raise _Unusual("edit list")
    layout, width = (">IiHH", 12) if version == 0 else (">QqHH", 20)
    entries = [
        struct.unpack(layout, body[8 + i * width : 8 + (i + 1) * width]) for i in range(count)
    ]
    empty = 0
    if count == 2:
        if entries[0][1] != -1:
            raise _Unusual("two non-empty edits")
        empty = entries[0][0]
    segment, media_time, rate, fraction = entries[-1]
    if media_time < 0 or (rate, fraction) != (1, 0):
        raise _Unusual("an empty or non-normal-rate edit")
    return empty, media_time, segment


def _tree(read: Read, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """Every box under a ``trak``, depth first (the containers' children included)."""
    found: list[tuple[bytes, int, int]] = []
    for box in boxes_of(read, start, end):
        found.append(box)
        if box[0] in _CONTAINERS:
            found.extend(_tree(read, box[1], box[2]))
    return found


def _has(boxes: list[tuple[bytes, int, int]], kind: bytes) -> bool:
    return any(box[0] == kind for box in boxes)


def _entry_fields(handler: bytes, description: bytes) -> tuple[int, int]:
    """(width, height) of a visual sample entry, (channels, rate) of an audio one: fixed
    offsets in the ``stsd`` payload (ISO/IEC 14496-12: VisualSampleEntry, AudioSampleEntry)."""
    if handler == b"vide":
        return struct.unpack(">HH", description[40:44])
    channels, rate = struct.unpack(">H6xI", description[32:44])
    # ISO MP4 muxers write 2 as the entry's channel count whatever the stream holds: the
    # AAC decoder configuration in its esds says how many.
    return _aac_channels(description[44:]) or channels, rate >> 16  # rate: 16.16 fixed point


def _aac_channels(children: bytes) -> int | None:
    """The channel configuration of the AudioSpecificConfig in an ``esds`` among an audio
    sample entry's ``children`` (ISO/IEC 14496-1 descriptors); None if absent or unusual."""
    at = children.find(b"esds")
    if at < 4:
        return None
    data, pos = children[at + 8 : at - 4 + int.from_bytes(children[at - 4 : at], "big")], 0
    for tag in (3, 4, 5):  # ES_Descriptor > DecoderConfigDescriptor > DecoderSpecificInfo
        if pos >= len(data) or data[pos] != tag:
            return None
        pos += 1
        for _ in range(4):  # the descriptor's length: up to four 7-bit groups
            pos += 1
            if pos > len(data) or not data[pos - 1] & 0x80:
                break
        if tag == 3:
            flags = data[pos + 2] if pos + 2 < len(data) else 0
            pos += 3 + 2 * bool(flags & 0x80) + 2 * bool(flags & 0x20)
            if flags & 0x40:
                return None  # a URL instead of a stream
        elif tag == 4:
            pos += 13
    config = int.from_bytes(data[pos : pos + 4].ljust(4, b"\0"), "big")
    if config >> 27 == 31 or (config >> 23) & 0xF == 15:
        return None  # an escaped object type or explicit rate: not what the merge writes
    return (config >> 19) & 0xF or None


def _body(read: Read, boxes: list[tuple[bytes, int, int]], kind: bytes, least: int = 0) -> bytes:
    """The whole payload of the one box ``kind`` (at least ``least`` bytes)."""
    found = [box for box in boxes if box[0] == kind]
    if len(found) != 1:
        raise _Unusual(f"{len(found)} {kind!r} boxes")
    _, start, end = found[0]
    body = read(start, end - start)
    if len(body) != end - start or len(body) < least:
        raise _Unusual(f"short {kind!r}")
    return body


def _scale_and_duration(body: bytes) -> tuple[int, int]:
    """(timescale, duration) of an ``mvhd`` or ``mdhd`` payload (version 0 or 1)."""
    if body[0] == 1:
        scale, duration = struct.unpack(">IQ", body[20:32])
    elif body[0] == 0:
        scale, duration = struct.unpack(">II", body[12:20])
    else:
        raise _Unusual("header version")
    if scale == 0:
        raise _Unusual("zero timescale")
    return int(scale), int(duration)


def _pairs(
    read: Read, boxes: list[tuple[bytes, int, int]], kind: bytes, *, signed: bool
) -> list[tuple[int, int]]:
    """The (count, value) entries of an ``stts`` or ``ctts`` table."""
    body = _body(read, boxes, kind, 8)
    count = struct.unpack(">I", body[4:8])[0]
    if count > MAX_ENTRIES or len(body) < 8 + 8 * count:
        raise _Unusual(f"{kind!r} entries")
    layout = ">Ii" if signed else ">II"
    return [(int(n), int(v)) for n, v in struct.iter_unpack(layout, body[8 : 8 + 8 * count])]


# ffprobe's names for the output's sample entries and its MP4 demuxer.
_CODEC_NAMES = {"avc1": "h264", "avc3": "h264", "hvc1": "hevc", "hev1": "hevc", "mp4a": "aac"}
FORMAT_NAME = "mov,mp4,m4a,3gp,3g2,mj2"


def mp4_probe(
    path: Path, read: Read, size: int, expected_duration: float
) -> tuple[ProbeHeader, Timeline] | None:
    """The header and timeline the ffprobe run of the merge's output (one run, head and tail
    beyond :data:`~worker.media.timeline.INTERVAL_MIN_SECONDS`) would give, from the MP4's
    ``moov``; None when it is not an MP4 this reader handles (:func:`mp4_tracks`).

    The timeline is marked incomplete where that run reads only the head and tail
    (:func:`~worker.media.timeline.scan_intervals` of ``expected_duration``), so the output
    check compares the same frame counts either way.
    """
    tracks = mp4_tracks(read, size)
    if tracks is None:
        return None
    found = [t for t in (tracks.video, tracks.audio) if t is not None]
    timeline = Timeline(
        tuple(
            StreamSpan(t.index, t.start, t.end, t.last, t.packets, t.discarded, t.in_order)
            for t in sorted(found, key=lambda t: t.index)
        ),
        complete=scan_intervals(expected_duration, size) is None,
    )
    header = ProbeHeader(
        path=path,
        format_name=FORMAT_NAME,
        duration=tracks.duration or None,
        video=_stream_info(tracks.video),
        audio=_stream_info(tracks.audio),
        start_time=timeline.origin,
        size_bytes=size,
    )
    return header, timeline


def _stream_info(track: Mp4Track | None) -> StreamInfo | None:
    """What the output check reads of a stream (its index, where its track ends) and what the
    logs show (the sample entry's size, channels and rate)."""
    if track is None:
        return None
    return StreamInfo(
        index=track.index,
        codec_type=track.kind,
        codec_name=_CODEC_NAMES[track.codec],
        start_time=track.start,
        duration=track.track_end - track.start,
        sample_rate=track.entry[1] if track.kind == "audio" else None,
        channels=track.entry[0] if track.kind == "audio" else None,
        width=track.entry[0] if track.kind == "video" else None,
        height=track.entry[1] if track.kind == "video" else None,
        track_end=track.track_end,
    )
