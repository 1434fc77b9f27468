"""The duration an MP4's movie header (``moov/mvhd``) declares, read from its boxes (pure).

Only a hint for the recording's probe (:func:`worker.media.probing.probe`): knowing the
duration before ffprobe runs lets one run read the header and the head and tail packets a
long file needs, instead of one run for the header and a second for the packets. ffprobe's
own reading of the header decides (a hint it contradicts is dropped, and the file is read in
two runs as without it), so a file this reader does not understand only costs that run.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

# Boxes looked at before giving up (a well-formed file has a handful at the top level).
MAX_BOXES = 64
_UNKNOWN_32 = 0xFFFFFFFF

Read = Callable[[int, int], bytes]  # read(offset, length): at most length bytes from offset


def boxes_of(read: Read, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload offset, box end) of the boxes between ``start`` and ``end``."""
    found: list[tuple[bytes, int, int]] = []
    offset = start
    while offset + 8 <= end and len(found) < MAX_BOXES:
        head = read(offset, 16)
        if len(head) < 8:
            break
        size, kind = struct.unpack(">I4s", head[:8])
        payload = offset + 8
        if size == 1:  # a 64-bit size follows the type
            if len(head) < 16:
                break
            size = struct.unpack(">Q", head[8:16])[0]
            payload = offset + 16
        elif size == 0:  # to the end of the enclosing box (or file)
            size = end - offset
        if size < payload - offset or offset + size > end:
            break
        found.append((kind, payload, offset + size))
        offset += size
    return found


def mp4_duration(read: Read, size: int) -> float | None:
    """The duration in seconds ``moov/mvhd`` declares, or None (not an MP4 starting with an
    ``ftyp`` box, no movie header, an unknown or zero duration: a fragmented MP4's)."""
    top = boxes_of(read, 0, size)
    if not top or top[0][0] != b"ftyp":
        return None
    moov = next((box for box in top if box[0] == b"moov"), None)
    if moov is None:
        return None
    mvhd = next((box for box in boxes_of(read, moov[1], moov[2]) if box[0] == b"mvhd"), None)
    if mvhd is None:
        return None
    body = read(mvhd[1], 32)
    if not body:
        return None
    if body[0] == 1:  # version 1: 64-bit times
        if len(body) < 32:
            return None
        timescale, duration = (int(n) for n in struct.unpack(">IQ", body[20:32]))
        unknown = duration == 0xFFFFFFFFFFFFFFFF
    else:
        if len(body) < 20:
            return None
        timescale, duration = (int(n) for n in struct.unpack(">II", body[12:20]))
        unknown = duration == _UNKNOWN_32
    if timescale == 0 or duration == 0 or unknown:
        return None
    return duration / timescale
