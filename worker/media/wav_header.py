"""A plain PCM WAV's probe, read from its RIFF header in Python (pure): no ffprobe run.

The Connect audio is a 16-bit PCM WAV; ffprobe's run for it costs a job about 0.1 s of CPU
just to start (issue 18). :func:`wav_probe` gives what that run gives (header, streams, the
timeline of ffmpeg 5.1's WAV packets) for the one shape it knows: ``RIFF``/``WAVE``, a
16-byte PCM ``fmt `` chunk (16-bit, 1 or 2 channels), only ``LIST`` chunks between it and
the ``data`` chunk, and a ``data`` chunk that ends exactly at the end of the file. Anything
else (other codecs or layouts, a truncated or padded file, trailing chunks, an odd header)
gives None, and ffprobe reads the file as before, with its errors.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

from worker.media.model import ProbeHeader, StreamInfo
from worker.media.mp4_header import Read
from worker.media.timeline import StreamSpan, Timeline

# ffmpeg 5.1's WAV demuxer reads PCM in packets of at most this many bytes (whole blocks).
PACKET_BYTES = 4096
# Chunks looked at before the data chunk (a Connect WAV has fmt, maybe LIST, then data).
MAX_CHUNKS = 8
_PCM = 1
_SAMPLE_RATES = range(8000, 48001)


def _chunks(read: Read, size: int) -> list[tuple[bytes, int, int]] | None:
    """(id, payload offset, payload size) of the chunks up to and including ``data``; None
    when the file is not RIFF/WAVE or a chunk runs past the end of the file."""
    head = read(0, 12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    found: list[tuple[bytes, int, int]] = []
    offset = 12
    while len(found) < MAX_CHUNKS and offset + 8 <= size:
        chunk = read(offset, 8)
        if len(chunk) < 8:
            return None
        kind, length = struct.unpack("<4sI", chunk)
        found.append((kind, offset + 8, length))
        if kind == b"data":
            return found
        offset += 8 + length + (length & 1)  # chunks are padded to an even size
        if offset > size:
            return None
    return None


def _pcm_format(read: Read, offset: int, length: int) -> tuple[int, int] | None:
    """(channels, sample rate) of a 16-byte 16-bit PCM ``fmt `` chunk whose byte rate and
    block size agree; None otherwise."""
    if length != 16:
        return None
    body = read(offset, 16)
    if len(body) < 16:
        return None
    tag, channels, rate, byte_rate, block, bits = struct.unpack("<HHIIHH", body)
    if tag != _PCM or bits != 16 or channels not in (1, 2) or rate not in _SAMPLE_RATES:
        return None
    if block != 2 * channels or byte_rate != rate * block:
        return None
    return channels, rate


def wav_probe(path: Path, read: Read, size: int) -> tuple[ProbeHeader, Timeline] | None:
    """The probe of a plain 16-bit PCM WAV of ``size`` bytes (see the module), as ffprobe's
    run would give it; None for anything else."""
    chunks = _chunks(read, size)
    if chunks is None or chunks[0][0] != b"fmt " or any(k != b"LIST" for k, *_ in chunks[1:-1]):
        return None
    pcm = _pcm_format(read, chunks[0][1], chunks[0][2])
    _, data_offset, data_size = chunks[-1]
    if pcm is None or data_offset + data_size != size:
        return None
    channels, rate = pcm
    block = 2 * channels
    samples, remainder = divmod(data_size, block)
    # (A 32-bit data size holds at most about 6 hours at 48 kHz stereo: never past
    # MAX_MEDIA_SECONDS, the probe's limit.)
    if remainder or samples == 0:
        return None
    return _probe(path, size, channels, rate, samples)


def printed(ticks: int, rate: int) -> float:
    """``ticks`` of ``1/rate`` s as ffprobe prints a time (``ticks * av_q2d(tb)``, ``%f``)
    and the probe parses it back, so that both reads give the same floats."""
    return float(f"{ticks * (1 / rate):f}")


def _probe(
    path: Path, size: int, channels: int, rate: int, samples: int
) -> tuple[ProbeHeader, Timeline]:
    """What ffprobe says of a PCM WAV of ``samples`` samples: its header (the file's duration
    in whole microseconds, rounded to nearest) and its packets' timeline."""
    per_packet = PACKET_BYTES // (2 * channels)
    packets = -(-samples // per_packet)
    last_pts = (packets - 1) * per_packet
    duration = printed(samples, rate)
    stream = StreamInfo(
        index=0,
        codec_type="audio",
        codec_name="pcm_s16le",
        start_time=0.0,
        duration=duration,
        sample_rate=rate,
        channels=channels,
        width=None,
        height=None,
        time_base=Fraction(1, rate),
        track_end=duration,
    )
    micros = (samples * 1_000_000 + rate // 2) // rate
    header = ProbeHeader(path, "wav", printed(micros, 1_000_000), None, stream, 0.0, size)
    last = printed(last_pts, rate)
    end = last + printed(samples - last_pts, rate)
    return header, Timeline((StreamSpan(0, 0.0, end, last, packets),), complete=True)
