"""The wide search's packet-size coarse pass (issue 19), on synthetic packet sizes: the
envelope, when there is none (CBR), and the search finding a placed reference and its rival.
The real-media check is in tests/media/test_sync_packets_media.py."""

from __future__ import annotations

import numpy as np
import pytest

from worker.media import sync_packets
from worker.media.sync_packets import STEP
from worker.media.sync_search import Candidate


def _speech_like(seconds: float, seed: int) -> np.ndarray:
    """Packet sizes (bytes per 20 ms) of a VBR encode of on/off speech: bursts of 0.2-1.5 s
    at ~60-120 bytes, pauses at ~8 bytes."""
    rng = np.random.default_rng(seed)
    count = round(seconds / STEP)
    sizes = np.full(count, 8.0)
    at = 0
    while at < count:
        length = int(rng.integers(10, 75))
        if rng.random() < 0.6:
            sizes[at : at + length] = rng.uniform(60, 120, size=min(length, count - at))
        at += length + int(rng.integers(5, 40))
    return sizes


def _packets(sizes: np.ndarray, per_packet: int = 1) -> bytes:
    """ffprobe csv lines for ``sizes`` grouped ``per_packet`` steps to a packet."""
    lines = []
    for first in range(0, sizes.size, per_packet):
        chunk = sizes[first : first + per_packet]
        lines.append(f"{first * STEP:.6f},{chunk.size * STEP:.6f},{int(chunk.sum())}")
        lines.append("")  # ffprobe prints empty side-data lines between some packets
    return "\n".join(lines).encode()


def test_parse_packets_reads_times_durations_sizes_and_skips_the_rest() -> None:
    raw = b"-0.006500,0.020000,58,\n\n0.013500,N/A,61\nnonsense\n0.0335,0.02\n"
    times, durations, sizes = sync_packets.parse_packets(raw)
    assert times.tolist() == [-0.0065, 0.0135]
    assert durations.tolist() == [0.02, 0.0]
    assert sizes.tolist() == [58.0, 61.0]


def test_the_envelope_spreads_a_long_packet_over_its_steps() -> None:
    sizes = _speech_like(20, seed=1)
    times, durations, packet_sizes = sync_packets.parse_packets(_packets(sizes, per_packet=3))
    envelope = sync_packets.packet_envelope(times, durations, packet_sizes)
    assert envelope is not None
    assert envelope.size == sizes.size
    # Each 60 ms packet's bytes are shared by its three steps.
    assert np.allclose(np.expm1(envelope[:3]), packet_sizes[0] / 3)


def test_constant_sizes_carry_no_envelope() -> None:
    sizes = np.full(1000, 160.0)
    sizes[::7] = 161.0  # CBR's byte of padding now and then
    parsed = sync_packets.parse_packets(_packets(sizes))
    assert sync_packets.packet_envelope(*parsed) is None
    assert sync_packets.packet_envelope(*sync_packets.parse_packets(_packets(sizes[:20]))) is None


def test_the_search_finds_the_reference_and_a_rival_copy() -> None:
    signal_sizes = _speech_like(600, seed=2)
    reference = np.log(signal_sizes[20000:21500] ** 2)  # 30 s from 400 s: "energy"
    signal_sizes[5000:6500] = signal_sizes[20000:21500]  # the same words again at 100 s
    signal = sync_packets.packet_envelope(
        *sync_packets.parse_packets(_packets(signal_sizes, per_packet=3))
    )
    assert signal is not None
    found = sync_packets.search(signal, reference, min_lag_seconds=-24, max_lag_seconds=570)
    places = sorted(round(c.seconds, 2) for c in found[:2])
    assert places == [100.0, 400.0]
    assert found[0].score > 0.9 and found[1].score > 0.9
    assert all(c.score < 0.5 for c in found[2:])


def test_the_search_keeps_to_the_lag_range_and_reaches_before_the_signal() -> None:
    signal_sizes = _speech_like(120, seed=3)
    reference = np.log(np.concatenate([np.full(500, 8.0), signal_sizes[:1000]]) ** 2)
    signal = sync_packets.packet_envelope(*sync_packets.parse_packets(_packets(signal_sizes)))
    assert signal is not None
    found = sync_packets.search(signal, reference, min_lag_seconds=-24, max_lag_seconds=80)
    assert round(found[0].seconds, 2) == -10.0
    bounded = sync_packets.search(signal, reference, min_lag_seconds=0, max_lag_seconds=80)
    assert all(0 <= c.seconds <= 80 for c in bounded)
    assert all(abs(c.seconds + 10) > 1 for c in bounded)


def test_energy_envelope_is_log_energy_per_step() -> None:
    rate = 8000
    samples = np.concatenate([np.zeros(160), np.full(160, 0.5), np.full(100, 1.0)]).astype(
        np.float32
    )
    envelope = sync_packets.energy_envelope(samples, rate)
    assert envelope.size == 2
    assert envelope[0] == np.log(sync_packets.ENERGY_FLOOR)
    assert abs(envelope[1] - np.log(0.25 + sync_packets.ENERGY_FLOOR)) < 1e-12


def test_a_weak_best_match_proposes_nothing() -> None:
    strong = [Candidate(10.0, 0.7), Candidate(40.0, 0.3)]
    assert sync_packets.usable(strong) == strong
    assert sync_packets.usable([Candidate(10.0, 0.3), Candidate(40.0, 0.2)]) == []
    assert sync_packets.usable([]) == []


def test_regular_output_is_parsed_at_once_as_line_by_line() -> None:
    raw = b"-0.006500,0.020000,58,\n\n" + _packets(_speech_like(30, seed=5), per_packet=3)
    raw += b"1.5,N/A,40\nnan,0.02,40\n"
    assert sync_packets._parse_regular(raw) is not None  # the fast path taken
    fast = sync_packets.parse_packets(raw)
    slow = sync_packets._parse_lines(raw)
    for ours, theirs in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert fast[0].size == slow[0].size > 100


@pytest.mark.parametrize(
    "raw",
    [b"1,2,3\n4,5\n6,7,8,9\n", b"1,,3\n", b",1,2,3\n", b"1,2,3\n0.5,0.02,x\n", b"1,2,3,4\n"],
)
def test_irregular_output_is_parsed_line_by_line(raw: bytes) -> None:
    assert sync_packets._parse_regular(raw) is None
    parsed = sync_packets.parse_packets(raw)
    for ours, theirs in zip(parsed, sync_packets._parse_lines(raw), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_the_reader_parses_streamed_output_block_by_block_as_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sync_packets, "READ_BLOCK_BYTES", 10_000)  # ~24 blocks
    raw = b"-0.006500,0.020000,58,\n\n" + _packets(_speech_like(600, seed=6), per_packet=3)
    reader = sync_packets.PacketReader()
    parse = sync_packets.parse_packets
    blocks: list[bytes] = []
    monkeypatch.setattr(sync_packets, "parse_packets", lambda raw: blocks.append(raw) or parse(raw))
    for at in range(0, len(raw), 1000):  # chunks that cut lines anywhere
        reader.feed(raw[at : at + 1000])
    streamed = reader.finish()
    for ours, theirs in zip(streamed, parse(raw), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert len(blocks) > 20 and all(block.endswith(b"\n") for block in blocks[:-1])
    assert all(part.size == 0 for part in sync_packets.PacketReader().finish())
