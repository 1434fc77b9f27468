"""A live WebM told from its EBML (worker.media.webm_header), and the one-run reader that
streams its packets (worker.media.onerun with ``streaming``), on hand-built input."""

from __future__ import annotations

import struct
import tracemalloc

import pytest

from worker.media.onerun import OneRunReader
from worker.media.timeline import MAX_DEFERRED_PACKETS, TimelineScan
from worker.media.webm_header import WebmInfo, webm_info, webm_live

UNKNOWN = b"\x01\xff\xff\xff\xff\xff\xff\xff"  # an unknown size (8 bytes, all ones)


def size(n: int) -> bytes:
    return bytes([0x80 | n]) if n < 0x7F else struct.pack(">BQ", 0x01, n)[:1] + n.to_bytes(7, "big")


def element(ident: int, payload: bytes, *, unknown: bool = False) -> bytes:
    head = ident.to_bytes((ident.bit_length() + 7) // 8, "big")
    return head + (UNKNOWN if unknown else size(len(payload))) + payload


EBML = element(0x1A45DFA3, element(0x4286, b"\x01") + element(0x4282, b"webm"))
CLUSTER = element(0x1F43B675, element(0xE7, b"\x00") + bytes(50), unknown=True)


def webm(info: bytes, *, doc: bytes = EBML, unknown: bool = True, before: bytes = b"") -> bytes:
    body = before + element(0x1549A966, info) + element(0x1654AE6B, bytes(30)) + CLUSTER
    return doc + element(0x18538067, body, unknown=unknown)


def info_of(data: bytes) -> WebmInfo | None:
    return webm_info(lambda offset, length: data[offset : offset + length], len(data))


SCALE = element(0x2AD7B1, (1_000_000).to_bytes(3, "big"))
APP = element(0x4D80, b"Chrome") + element(0x5741, b"Chrome")


def test_no_duration_in_an_unknown_size_segment_is_live() -> None:
    data = webm(SCALE + APP, before=element(0xEC, bytes(8)))  # a Void before the Info
    assert info_of(data) == WebmInfo("webm", None)
    assert webm_live(lambda o, n: data[o : o + n], len(data))


@pytest.mark.parametrize("unknown", [True, False])
def test_a_duration_is_read_in_the_timestamp_scale(unknown: bool) -> None:
    duration = element(0x4489, struct.pack(">d", 8026.0))
    assert info_of(webm(SCALE + duration, unknown=unknown)) == WebmInfo("webm", 8.026)
    scaled = element(0x2AD7B1, (1000).to_bytes(2, "big")) + element(
        0x4489, struct.pack(">f", 4_000_000.0)
    )
    assert info_of(webm(scaled)) == WebmInfo("webm", 4.0)
    assert not webm_live(lambda o, n: webm(SCALE + duration)[o : o + n], 10**6)


def test_a_zero_duration_is_live() -> None:
    """Firefox's MediaRecorder writes a Duration of 0."""
    info = info_of(webm(element(0x4489, struct.pack(">d", 0.0))))
    assert info is not None and info.live


def test_matroska_is_read_and_other_files_are_not() -> None:
    matroska = element(0x1A45DFA3, element(0x4282, b"matroska"))
    assert info_of(webm(SCALE, doc=matroska)) == WebmInfo("matroska", None)
    other = element(0x1A45DFA3, element(0x4282, b"mkv3d"))
    assert info_of(webm(SCALE, doc=other)) is None
    assert info_of(b"\x00\x00\x00\x18ftypisom" + bytes(100)) is None
    assert info_of(b"") is None


def test_truncated_or_odd_files_are_none() -> None:
    data = webm(SCALE + APP)
    info_at = data.index(bytes.fromhex("1549a966"))
    for cut in (3, 20, len(EBML) + 6, info_at + 3, info_at + 10):
        assert info_of(data[:cut]) is None, cut
    # No Info before the first Cluster; an Info after it is not looked for.
    no_info = EBML + element(0x18538067, element(0x1654AE6B, bytes(30)) + CLUSTER, unknown=True)
    assert info_of(no_info) is None
    # A Duration of another size, or NaN, is not a duration.
    assert info_of(webm(element(0x4489, b"\x00\x00"))) is None
    assert info_of(webm(element(0x4489, struct.pack(">d", float("nan"))))) is None
    # An Info too large to be a muxer's.
    assert info_of(webm(APP + element(0xEC, bytes(5000)))) is None


def _packet_line(index: int, pts: float, side: str = "") -> str:
    extra = f', "side_data_list": [{{ {side} }}]' if side else ""
    return (
        f'{{ "stream_index": {index}, "pts_time": "{pts:.6f}", "dts_time": "{pts:.6f}", '
        f'"duration_time": "0.020000", "flags": "K_"{extra} }},'
    )


HEADER = [
    "{",
    '    "packets": [',
    "    ],",
    '    "streams": [',
    '        { "index": 0, "codec_type": "audio", "sample_rate": "48000" }',
    "    ]",
    "}",
]


def _streamed(packets: int) -> OneRunReader:
    reader = OneRunReader(streaming=True)
    reader.feed(HEADER[0])
    reader.feed(HEADER[1])
    reader.feed(_packet_line(0, 0.0, '"skip_samples": 312, "discard_padding": 0'))
    for n in range(1, packets):
        reader.feed(_packet_line(n % 2, n * 0.02))
    reader.feed(_packet_line(0, packets * 0.02, '"skip_samples": 0, "discard_padding": 480'))
    for line in HEADER[2:]:
        reader.feed(line)
    return reader


def test_a_streamed_read_equals_the_kept_one() -> None:
    """Packets with skipped or discarded samples wait for the rate; other streams (1: not in
    the header's rates) are left out, as a scan given the rates leaves them."""
    streamed = _streamed(1000)
    kept = OneRunReader()
    for line in HEADER[:2]:
        kept.feed(line)
    kept.feed(_packet_line(0, 0.0, '"skip_samples": 312, "discard_padding": 0'))
    for n in range(1, 1000):
        kept.feed(_packet_line(n % 2, n * 0.02))
    kept.feed(_packet_line(0, 20.0, '"skip_samples": 0, "discard_padding": 480'))
    for line in HEADER[2:]:
        kept.feed(line)
    assert streamed.packets == kept.packets == 1001
    rates: dict[int, int | None] = {0: 48000}
    timeline = streamed.timeline(rates, complete=True)
    assert timeline == kept.timeline(rates, complete=True)
    assert timeline is not None and [s.index for s in timeline.streams] == [0]
    audio = timeline.streams[0]
    assert audio.start == pytest.approx(312 / 48000) and audio.end == pytest.approx(20.01)
    assert streamed.header_text() == kept.header_text()


def test_a_streamed_read_does_not_grow_with_its_packets() -> None:
    def held(packets: int) -> int:
        tracemalloc.start()
        reader = _streamed(packets)
        current = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert reader.packets == packets + 1
        return current

    small, large = held(2_000), held(40_000)
    assert large - small < 4096, (small, large)  # kept packets would be ~50 bytes each


def test_too_many_rate_dependent_packets_give_no_timeline() -> None:
    scan = TimelineScan(None)
    for n in range(MAX_DEFERRED_PACKETS + 1):
        scan.feed_packet(0, False, n * 0.02, None, 0.02, 0, 480)
    assert scan.timeline(rates={0: 48000}) is None
    assert scan.timeline() is None  # a scan of every stream needs the rates
