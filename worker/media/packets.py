"""Reading ffprobe's packet lines fast (pure).

A packet scan prints one line per packet: a 60-minute live WebM (no header duration, so read
whole) about 280,000 of them, a 60-minute Connect WAV 21,000. Split into a dict of strings
each and parsed field by field, they cost a job more CPU than all the rest of its Python
(issue 18). Here one regular expression reads a whole chunk of ffprobe's output at a time
(:class:`CompactPackets`: bytes, not decoded lines) or one JSON line
(:func:`json_packet`), each number is converted once, and the packet goes to
:meth:`~worker.media.timeline.TimelineScan.feed_packet` as numbers.

ffprobe prints a packet's fields in its own fixed order, whatever order ``-show_entries``
names them in, and leaves out (JSON) or prints ``N/A`` for (compact) what is unknown; the
expressions rely on that. A line they do not read (side data such as ``skip_samples``, any
unexpected shape) goes to the generic field-by-field reader
(:meth:`~worker.media.timeline.TimelineScan.feed`), so the result is the same either way.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from worker.media.timeline import TimelineScan

# One packet line of ``-of compact=p=0`` without side data (a trailing "|" is an empty side
# data section: WebM's BlockAdditional, not one of the entries asked for).
_COMPACT = re.compile(
    rb"^stream_index=(-?\d+)\|pts_time=([^|\n]*)\|dts_time=([^|\n]*)"
    rb"\|duration_time=([^|\n]*)\|flags=([^|\n]*)\|?$",
    re.MULTILINE,
)
_COMPACT_KEY = b"stream_index="
# One packet of ``-of json=c=1`` (absent fields left out) without side data, or with an empty
# side data list (WebM's BlockAdditional), its lines stripped and joined.
_JSON = re.compile(
    r'^\s*\{ "stream_index": (-?\d+)(?:, "pts_time": "([^"]*)")?(?:, "dts_time": "([^"]*)")?'
    r'(?:, "duration_time": "([^"]*)")?(?:, "flags": "([^"]*)")?'
    r'(?:,\s*"side_data_list": \[\s*\{\s*\}\s*\])?\s*\},?$'
)
_ABSENT = frozenset({b"", b"N/A", "", "N/A"})
# A pathological line (no newline) is cut to its end, as worker.ffmpeg does.
_MAX_LINE_BYTES = 1 << 16


def number(text: bytes | str | None) -> float | None:
    """A finite float from ffprobe's text, or None (``N/A``, absent, malformed)."""
    if text is None or text in _ABSENT:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value - value == 0 else None  # NaN and infinities are not times


class Packet(NamedTuple):
    """One packet's fields as numbers (None: absent)."""

    stream: int  # stream_index
    discarded: bool  # flag D: a packet the demuxer discards (MP4 edit-list priming)
    pts: float | None
    dts: float | None
    duration: float | None


def json_packet(text: str) -> Packet | None:
    """The packet of one ``-of json=c=1`` packet object (its lines stripped and joined), or
    None when it is not a plain packet (side data, another shape: read it with ``json``)."""
    found = _JSON.match(text)
    if found is None:
        return None
    index, pts, dts, duration, flags = found.groups()
    return Packet(int(index), "D" in (flags or ""), number(pts), number(dts), number(duration))


class CompactPackets:
    """Feeds a :class:`TimelineScan` from the raw bytes of a ``-of compact=p=0`` packet scan
    (:func:`worker.media.probing.build_timeline_args`), a chunk at a time.

    A chunk's complete lines are read by one regular expression; when it does not read every
    packet line of the chunk (side data, an unexpected shape), the chunk's lines go to the
    generic reader instead. :meth:`close` reads a last line without a newline.
    """

    def __init__(self, scan: TimelineScan) -> None:
        self._scan = scan
        self._rest = b""

    def feed(self, chunk: bytes) -> None:
        """Take one chunk of output."""
        block = self._rest + chunk
        cut = block.rfind(b"\n") + 1
        self._rest = block[cut:][-_MAX_LINE_BYTES:]
        if cut:
            self._read(block[:cut])

    def close(self) -> None:
        """The end of the output: read what is left."""
        if self._rest:
            self._read(self._rest + b"\n")
            self._rest = b""

    def _read(self, block: bytes) -> None:
        found = _COMPACT.findall(block)
        if len(found) != block.count(_COMPACT_KEY):
            for line in block.split(b"\n"):
                self._scan.feed(line.decode("utf-8", "replace").rstrip("\r"))
            return
        feed = self._scan.feed_packet
        for index, pts, dts, duration, flags in found:
            feed(int(index), b"D" in flags, number(pts), number(dts), number(duration))
