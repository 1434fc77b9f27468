"""Whether a WebM is "live" (no Duration in its segment's Info), read from its EBML (pure).

Only a hint for the recording's probe (:func:`worker.media.probing.probe`), as
:mod:`worker.media.mp4_header` is for MP4: a live WebM (Chromium's MediaRecorder output: no
Duration, no Cues, an unknown-size Segment) is read packet by packet whatever ffprobe's
header says, so one run can print the header and every packet, read as they stream in
(:class:`~worker.media.onerun.OneRunReader` with ``streaming``). Read up to the first Cluster:
the EBML header's DocType, then the Segment's Info (its Duration). Anything unexpected is
None, and the file is read in two runs as without the hint.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from worker.media.mp4_header import Read

# Elements looked at before giving up (a live WebM has a handful before its first Cluster).
MAX_ELEMENTS = 64
# The largest EBML header or Info read whole (a muxer's are well under a kilobyte).
MAX_HEADER_BYTES = 4096
_EBML = 0x1A45DFA3
_DOC_TYPE = 0x4282
_SEGMENT = 0x18538067
_INFO = 0x1549A966
_CLUSTER = 0x1F43B675
_TIMESTAMP_SCALE = 0x2AD7B1
_DURATION = 0x4489
_DOC_TYPES = (b"webm", b"matroska")


@dataclass(frozen=True)
class WebmInfo:
    """What a WebM's header declares: its DocType and its Info's Duration (seconds; None
    when absent)."""

    doc_type: str
    duration: float | None

    @property
    def live(self) -> bool:
        """No duration (or 0: Firefox's MediaRecorder writes one, of 0): read every packet."""
        return not self.duration


def _vint(data: bytes, at: int, keep_marker: bool) -> tuple[int, int, bool] | None:
    """(value, length, all ones: an unknown size) of the EBML variable-size integer at
    ``at``, or None (cut short, or no length marker)."""
    if at >= len(data) or data[at] == 0:
        return None
    length = 9 - data[at].bit_length()
    if at + length > len(data):
        return None
    value = int.from_bytes(data[at : at + length], "big")
    payload = value & ((1 << (7 * length)) - 1)
    return (value if keep_marker else payload), length, payload == (1 << (7 * length)) - 1


def _element(data: bytes, at: int) -> tuple[int, int, int | None] | None:
    """(ID, payload offset within ``data``, payload size or None: unknown) at ``at``."""
    ident = _vint(data, at, keep_marker=True)
    if ident is None or ident[1] > 4:
        return None
    size = _vint(data, at + ident[1], keep_marker=False)
    if size is None:
        return None
    return ident[0], at + ident[1] + size[1], None if size[2] else size[0]


def _children(data: bytes) -> dict[int, bytes]:
    """The first payload of each child element of a master element's whole ``data``."""
    found: dict[int, bytes] = {}
    at = 0
    while at < len(data) and len(found) < MAX_ELEMENTS:
        element = _element(data, at)
        if element is None:
            break
        ident, payload, size = element
        if size is None:
            break
        found.setdefault(ident, data[payload : payload + size])
        at = payload + size
    return found


def _master(read: Read, offset: int, size: int | None) -> bytes | None:
    """A master element's whole payload (at most :data:`MAX_HEADER_BYTES`), or None."""
    if size is None or size > MAX_HEADER_BYTES:
        return None
    data = read(offset, size)
    return data if len(data) == size else None


def webm_info(read: Read, size: int) -> WebmInfo | None:
    """The DocType and Info of a WebM or Matroska file, or None (another file, an Info after
    the first Cluster or none, anything unexpected)."""
    head = read(0, 64)
    ebml = _element(head, 0)
    if ebml is None or ebml[0] != _EBML:
        return None
    header = _master(read, ebml[1], ebml[2])
    doc_type = _children(header).get(_DOC_TYPE, b"").rstrip(b"\0") if header else b""
    if doc_type not in _DOC_TYPES or ebml[2] is None:
        return None
    offset = ebml[1] + ebml[2]
    segment = _element(read(offset, 16), 0)
    if segment is None or segment[0] != _SEGMENT:
        return None
    offset += segment[1]
    for _ in range(MAX_ELEMENTS):
        element = _element(read(offset, 16), 0)
        if element is None:
            return None
        ident, payload, length = element
        if ident == _CLUSTER or length is None:
            return None
        if ident == _INFO:
            info = _master(read, offset + payload, length)
            return None if info is None else _read_info(doc_type.decode(), info)
        offset += payload + length
        if offset >= size:
            return None
    return None


def _read_info(doc_type: str, info: bytes) -> WebmInfo | None:
    children = _children(info)
    scale = int.from_bytes(children.get(_TIMESTAMP_SCALE, b""), "big") or 1_000_000
    duration = children.get(_DURATION)
    if duration is None:
        return WebmInfo(doc_type, None)
    if len(duration) not in (4, 8):
        return None
    ticks = struct.unpack(">f" if len(duration) == 4 else ">d", duration)[0]
    if ticks != ticks:  # NaN: not a duration
        return None
    return WebmInfo(doc_type, ticks * scale / 1e9)


def webm_live(read: Read, size: int) -> bool:
    """Whether the file is a WebM (or Matroska) whose header declares no duration."""
    info = webm_info(read, size)
    return info is not None and info.live
