"""A plain PCM WAV's probe from its RIFF header (pure): what it reads, what it leaves to
ffprobe."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import pytest

from worker.media.wav_header import PACKET_BYTES, printed, wav_probe

PATH = Path("/in/connect.wav")


def fmt_chunk(
    channels: int = 2, rate: int = 8000, *, tag: int = 1, bits: int = 16, extra: bytes = b""
) -> bytes:
    block = channels * bits // 8
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits) + extra
    return b"fmt " + struct.pack("<I", len(body)) + body


def chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def wav(*chunks: bytes, riff: bytes = b"RIFF", wave: bytes = b"WAVE") -> bytes:
    body = wave + b"".join(chunks)
    return riff + struct.pack("<I", len(body)) + body


def probe(raw: bytes) -> object:
    return wav_probe(PATH, lambda offset, length: raw[offset : offset + length], len(raw))


def test_a_plain_stereo_wav() -> None:
    samples = 40_000  # 5 s at 8 kHz, stereo: 4 bytes a sample
    raw = wav(fmt_chunk(), chunk(b"LIST", b"INFOISFT\x0e\0\0\0Lavf59.27.100\0"),
              chunk(b"data", bytes(4 * samples)))  # fmt: skip
    read = probe(raw)
    assert read is not None
    header, timeline = read  # type: ignore[misc]
    assert (header.path, header.format_name, header.duration) == (PATH, "wav", 5.0)
    assert (header.video, header.start_time, header.size_bytes) == (None, 0.0, len(raw))
    audio = header.audio
    assert (audio.index, audio.codec_type, audio.codec_name) == (0, "audio", "pcm_s16le")
    assert (audio.sample_rate, audio.channels, audio.time_base) == (8000, 2, Fraction(1, 8000))
    assert (audio.start_time, audio.duration, audio.track_end) == (0.0, 5.0, 5.0)
    # ffmpeg 5.1's packets: 4096 bytes (1024 stereo samples) each, the last one shorter.
    (span,) = timeline.streams
    assert (span.index, span.start, span.end, span.packets) == (0, 0.0, 5.0, 40)
    assert span.last == 39 * 1024 / 8000
    assert timeline.complete


def test_mono_packets_hold_twice_the_samples() -> None:
    read = probe(wav(fmt_chunk(channels=1, rate=16000), chunk(b"data", bytes(2 * 5000))))
    assert read is not None
    _, timeline = read  # type: ignore[misc]
    assert timeline.streams[0].packets == 3  # 2048 + 2048 + 904 samples
    assert timeline.streams[0].last == 4096 / 16000


def test_times_are_the_floats_ffprobe_prints() -> None:
    # 54,441 samples at 44.1 kHz: ffprobe prints 1.234490 (format, whole microseconds) and
    # 1.234490 (stream); the end is the last packet's printed time plus its duration.
    assert printed(54_441, 44_100) == 1.23449
    read = probe(wav(fmt_chunk(rate=44_100), chunk(b"data", bytes(4 * 54_441))))
    assert read is not None
    header, timeline = read  # type: ignore[misc]
    assert header.duration == 1.23449
    per_packet = PACKET_BYTES // 4
    last_pts = (54_441 // per_packet) * per_packet
    assert timeline.streams[0].end == printed(last_pts, 44_100) + printed(54_441 - last_pts, 44_100)


REFUSED = {
    "not RIFF": wav(fmt_chunk(), chunk(b"data", bytes(8)), riff=b"RIFX"),
    "not WAVE": wav(fmt_chunk(), chunk(b"data", bytes(8)), wave=b"AVI "),
    "A-law": wav(fmt_chunk(tag=6, bits=8), chunk(b"data", bytes(8))),
    "extensible": wav(fmt_chunk(tag=0xFFFE), chunk(b"data", bytes(8))),
    "24-bit": wav(fmt_chunk(bits=24), chunk(b"data", bytes(12))),
    "3 channels": wav(fmt_chunk(channels=3), chunk(b"data", bytes(12))),
    "18-byte fmt": wav(fmt_chunk(extra=b"\0\0"), chunk(b"data", bytes(8))),
    "rate 4 kHz": wav(fmt_chunk(rate=4000), chunk(b"data", bytes(8))),
    "rate 96 kHz": wav(fmt_chunk(rate=96_000), chunk(b"data", bytes(8))),
    "no fmt first": wav(chunk(b"LIST", b"INFO"), fmt_chunk(), chunk(b"data", bytes(8))),
    "fact chunk": wav(fmt_chunk(), chunk(b"fact", bytes(4)), chunk(b"data", bytes(8))),
    "no data": wav(fmt_chunk(), chunk(b"LIST", b"INFO")),
    "empty data": wav(fmt_chunk(), chunk(b"data", b"")),
    "half a sample": wav(fmt_chunk(), chunk(b"data", bytes(6))),
    "trailing chunk": wav(fmt_chunk(), chunk(b"data", bytes(8)), chunk(b"LIST", b"INFO")),
    "truncated": wav(fmt_chunk(), chunk(b"data", bytes(8)))[:-2],
    "short header": b"RIFF\0\0\0\0WAV",
    "chunk past the end": wav(fmt_chunk(), b"LIST\xff\xff\x00\x00INFO"),
    "many chunks": wav(fmt_chunk(), *[chunk(b"LIST", b"INFO")] * 8, chunk(b"data", bytes(8))),
}


@pytest.mark.parametrize("raw", REFUSED.values(), ids=REFUSED.keys())
def test_anything_else_is_left_to_ffprobe(raw: bytes) -> None:
    assert probe(raw) is None


def test_wrong_byte_rate_or_block_is_left_to_ffprobe() -> None:
    good = fmt_chunk()
    for offset, value in ((16, 12345), (20, 3)):  # byte rate, block align (in the fmt chunk)
        bad = bytearray(good)
        size = 4 if offset == 16 else 2
        bad[offset : offset + size] = value.to_bytes(size, "little")
        assert probe(wav(bytes(bad), chunk(b"data", bytes(8)))) is None
    assert probe(wav(good, chunk(b"data", bytes(8)))) is not None
