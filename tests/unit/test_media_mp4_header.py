"""The MP4 movie header's duration (worker.media.mp4_header): a probe hint read from boxes."""

from __future__ import annotations

import struct

import pytest

from worker.media.mp4_header import MAX_BOXES, mp4_duration


def box(kind: bytes, payload: bytes, *, large: bool = False) -> bytes:
    if large:
        return struct.pack(">I4sQ", 1, kind, 16 + len(payload)) + payload
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def mvhd(timescale: int, duration: int, *, version: int = 0) -> bytes:
    if version == 1:
        body = struct.pack(">B3xQQIQ", 1, 0, 0, timescale, duration)
    else:
        body = struct.pack(">B3xIIII", 0, 0, 0, timescale, duration)
    return box(b"mvhd", body + bytes(80))


def reader(data: bytes):  # type: ignore[no-untyped-def]
    return lambda offset, length: data[offset : offset + length]


def duration_of(data: bytes) -> float | None:
    return mp4_duration(reader(data), len(data))


FTYP = box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41")


def test_faststart_and_moov_at_the_end_alike() -> None:
    moov = box(b"moov", mvhd(15360, 15360 * 600 + 338) + box(b"trak", bytes(40)))
    mdat = box(b"mdat", bytes(1000))
    expected = (15360 * 600 + 338) / 15360
    assert duration_of(FTYP + moov + mdat) == pytest.approx(expected)
    assert duration_of(FTYP + mdat + moov) == pytest.approx(expected)
    # A 64-bit mdat (a recording over 4 GiB) and a version-1 header.
    moov1 = box(b"moov", mvhd(1000, 3_600_022, version=1))
    assert duration_of(FTYP + box(b"mdat", bytes(64), large=True) + moov1) == 3600.022


@pytest.mark.parametrize(
    "data",
    [
        b"",
        box(b"moov", mvhd(1000, 5000)),  # no ftyp first: not read
        FTYP + box(b"mdat", bytes(10)),  # no movie header
        FTYP + box(b"moov", box(b"trak", bytes(8))),
        FTYP + box(b"moov", mvhd(1000, 0)),  # a fragmented MP4's: duration in the fragments
        FTYP + box(b"moov", mvhd(1000, 0xFFFFFFFF)),  # unknown
        FTYP + box(b"moov", mvhd(0, 5000)),
        FTYP + box(b"moov", mvhd(1000, 5000))[:-60],  # cut inside the movie header's box
        FTYP + struct.pack(">I4s", 4, b"free") + box(b"moov", mvhd(1000, 5000)),  # bad size
        b"\x1a\x45\xdf\xa3" + bytes(60),  # Matroska
    ],
)
def test_no_duration_when_the_boxes_do_not_say(data: bytes) -> None:
    assert duration_of(data) is None


def test_gives_up_after_many_boxes() -> None:
    filler = box(b"free", b"") * MAX_BOXES
    assert duration_of(FTYP + filler + box(b"moov", mvhd(1000, 5000))) is None
    assert duration_of(FTYP + box(b"free", b"") + box(b"moov", mvhd(1000, 5000))) == 5.0
