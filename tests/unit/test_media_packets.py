"""The fast readers of ffprobe's packet lines (worker.media.packets, worker.media.onerun):
each must give exactly the Timeline the generic field-by-field reader gives."""

from __future__ import annotations

import json

import pytest

from worker.media.onerun import OneRunReader
from worker.media.packets import CompactPackets, Packet, json_packet, number
from worker.media.timeline import Timeline, TimelineScan

RATES: dict[int, int | None] = {0: None, 1: 48000}

# What ffprobe -of compact=p=0 prints: plain packets, WebM's empty side data section (a
# trailing "|" and a blank line), N/A times, MP4 priming marked discarded, side data the fast
# expression does not read, a stream not asked for, B-frame reordering.
COMPACT_LINES = [
    "stream_index=1|pts_time=-0.021333|dts_time=-0.021333|duration_time=0.021333|flags=KD",
    "stream_index=0|pts_time=0.000000|dts_time=0.000000|duration_time=0.008000|flags=K_|",
    "",
    "stream_index=1|pts_time=0.000000|dts_time=0.000000|duration_time=0.021333|flags=K_",
    "stream_index=0|pts_time=0.066667|dts_time=0.033333|duration_time=N/A|flags=__|",
    "",
    "stream_index=0|pts_time=0.033333|dts_time=0.066667|duration_time=0.033333|flags=__",
    "stream_index=2|pts_time=0.050000|dts_time=0.050000|duration_time=0.020000|flags=K_",
    "stream_index=1|pts_time=N/A|dts_time=0.021333|duration_time=0.021333|flags=K_",
    "stream_index=0|pts_time=N/A|dts_time=N/A|duration_time=N/A|flags=K_",
    "stream_index=1|pts_time=0.042666|dts_time=0.042666|duration_time=0.021333|flags=K_"
    "|discard_padding=480",
]


def generic(lines: list[str], rates: dict[int, int | None] = RATES) -> Timeline | None:
    scan = TimelineScan(rates)
    for line in lines:
        scan.feed(line)
    return scan.timeline()


def fast(data: bytes, chunk: int, rates: dict[int, int | None] = RATES) -> Timeline | None:
    scan = TimelineScan(rates)
    reader = CompactPackets(scan)
    for at in range(0, len(data), chunk):
        reader.feed(data[at : at + chunk])
    reader.close()
    return scan.timeline()


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 16])
def test_compact_reader_gives_the_generic_timeline_at_any_chunk_size(chunk: int) -> None:
    expected = generic(COMPACT_LINES)
    assert expected is not None
    assert fast("\n".join(COMPACT_LINES).encode(), chunk) == expected
    # The side data was read (the audio's end moved back by 480 samples), the reordering seen.
    audio, video = expected.stream(1), expected.stream(0)
    assert audio is not None and video is not None
    assert audio.end == pytest.approx(0.042666 + 0.021333 - 0.01)
    assert (audio.discarded, audio.packets) == (1, 3)
    assert not video.in_order


def test_compact_reader_on_plain_packets_only() -> None:
    lines = [
        f"stream_index={i % 2}|pts_time={i / 30:.6f}|dts_time={i / 30:.6f}"
        f"|duration_time=0.033333|flags={'K_' if i % 90 == 0 else '__'}"
        for i in range(3000)
    ]
    data = ("\n".join(lines) + "\n").encode()
    assert fast(data, 4096) == generic(lines)
    timeline = fast(data, 4096)
    assert timeline is not None and timeline.stream(0) is not None
    assert timeline.end == pytest.approx(2999 / 30 + 0.033333)


def test_compact_reader_keeps_a_last_line_without_newline() -> None:
    data = b"stream_index=0|pts_time=1.000000|dts_time=1.000000|duration_time=0.5|flags=K_"
    timeline = fast(data, 1 << 16)
    assert timeline is not None
    assert (timeline.origin, timeline.end) == (1.0, 1.5)


def test_number_reads_finite_floats_only() -> None:
    assert number(b"0.021333") == pytest.approx(0.021333)
    assert number("-1.5") == -1.5
    for absent in (None, b"N/A", "N/A", b"", b"nan", "inf", b"-inf", b"12abc"):
        assert number(absent) is None


def json_lines(packets: list[dict[str, object]]) -> list[str]:
    """Packets as ffprobe -of json=c=1 prints them (side data lists on lines of their own)."""
    lines = ["{", '    "packets": [']
    for n, packet in enumerate(packets):
        comma = "," if n < len(packets) - 1 else ""
        side = packet.pop("side_data_list", None)
        text = "        " + json.dumps(packet, separators=(", ", ": ")).replace("{", "{ ", 1)
        text = text[:-1] + " }"
        if side is None:
            lines.append(text + comma)
        else:
            lines.append(text[:-2] + ",")
            lines.append('            "side_data_list": [')
            lines += [f"                {{ {json.dumps(s)[1:-1]} }}" for s in side]  # type: ignore[union-attr]
            lines.append("            ] }" + comma)
    lines += ["    ],", '    "streams": [', "    ]", "}"]
    return lines


def test_json_packet_reads_plain_packets_and_refuses_side_data() -> None:
    assert json_packet(
        '{ "stream_index": 1, "pts_time": "0.040000", "dts_time": "0.040000", '
        '"duration_time": "0.060000", "flags": "KD" },'
    ) == Packet(1, True, 0.04, 0.04, 0.06)
    assert json_packet('{ "stream_index": 0, "dts_time": "2.5", "flags": "K_" }') == Packet(
        0, False, None, 2.5, None
    )
    assert json_packet(
        '{ "stream_index": 0, "pts_time": "0.0", "flags": "K_","side_data_list": [{  }] },'
    ) == Packet(0, False, 0.0, None, None)
    side = '{ "stream_index": 1, "flags": "K_","side_data_list": [{ "skip_samples": 312 }] }'
    assert json_packet(side) is None


def test_one_run_reader_gives_the_generic_timeline() -> None:
    packets: list[dict[str, object]] = [
        {"stream_index": 1, "pts_time": "-0.021333", "dts_time": "-0.021333",
         "duration_time": "0.021333", "flags": "KD"},
        {"stream_index": 0, "pts_time": "0.000000", "dts_time": "0.000000",
         "duration_time": "0.008000", "flags": "K_", "side_data_list": [{}]},
        {"stream_index": 1, "pts_time": "0.000000", "dts_time": "0.000000",
         "duration_time": "0.021333", "flags": "K_",
         "side_data_list": [{"side_data_type": "Skip Samples", "skip_samples": 312}]},
        {"stream_index": 0, "dts_time": "0.033333", "flags": "__"},
        {"stream_index": 1, "pts_time": "0.021333", "dts_time": "0.021333",
         "duration_time": "0.021333", "flags": "K_",
         "side_data_list": [{"side_data_type": "Skip Samples", "discard_padding": 480}]},
    ]  # fmt: skip
    compact = [
        "|".join(
            [f"{k}={v}" for k, v in p.items() if k != "side_data_list"]
            + [f"{k}={v}" for s in p.get("side_data_list", []) for k, v in s.items()]  # type: ignore[attr-defined]
        )
        for p in packets
    ]
    expected = generic(compact)
    reader = OneRunReader()
    for line in json_lines([dict(p) for p in packets]):
        reader.feed(line)
    assert reader.packets == len(packets)
    assert reader.timeline(RATES, complete=True) == expected
    assert json.loads(reader.header_text()) == {"packets": [], "streams": []}
    audio = expected.stream(1) if expected else None
    assert audio is not None
    assert audio.start == pytest.approx(312 / 48000)
    assert audio.end == pytest.approx(0.042666 - 0.01)
