"""An MP4's tracks from its ``moov`` (worker.media.mp4_tracks), on hand-built boxes: the
numbers ffmpeg's demuxer gives, and None (ffprobe instead) for anything unusual."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from worker.media.mp4_tracks import mp4_probe, mp4_tracks


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def full(kind: bytes, payload: bytes, version: int = 0) -> bytes:
    return box(kind, struct.pack(">B3x", version) + payload)


def table(kind: bytes, entries: Sequence[tuple[int, int]], fmt: str = ">II") -> bytes:
    body = struct.pack(">I", len(entries)) + b"".join(struct.pack(fmt, *e) for e in entries)
    return full(kind, body)


def elst(edits: Sequence[tuple[int, int]], version: int = 0) -> bytes:
    """(segment duration, media_time) edits at normal rate."""
    fmt = ">IiHH" if version == 0 else ">QqHH"
    body = struct.pack(">I", len(edits)) + b"".join(struct.pack(fmt, d, m, 1, 0) for d, m in edits)
    return box(b"edts", full(b"elst", body, version))


VIDEO_SIZE = (640, 360)
AUDIO_LAYOUT = (2, 48000)  # channels, rate


def sample_entry(handler: bytes) -> bytes:
    """A VisualSampleEntry (width, height) or AudioSampleEntry (channels, 16.16 rate) body."""
    if handler == b"vide":
        return bytes(6) + struct.pack(">H", 1) + bytes(16) + struct.pack(">HH", *VIDEO_SIZE)
    channels, rate = AUDIO_LAYOUT
    return (
        bytes(6) + struct.pack(">H", 1) + bytes(8) + struct.pack(">HH4xI", channels, 16, rate << 16)
    )


def trak(
    handler: bytes,
    codec: bytes,
    scale: int,
    deltas: Sequence[tuple[int, int]],
    edits: Sequence[tuple[int, int]] | None,
    *,
    offsets: Sequence[tuple[int, int]] | None = None,
    count: int | None = None,
    media: int | None = None,
) -> bytes:
    samples = sum(n for n, _ in deltas)
    mdhd = full(b"mdhd", struct.pack(">IIII", 0, 0, scale, media or sum(n * d for n, d in deltas)))
    hdlr = full(b"hdlr", struct.pack(">I4s", 0, handler) + bytes(12))
    stsd = full(b"stsd", struct.pack(">I", 1) + box(codec, sample_entry(handler)))
    stbl = stsd + table(b"stts", deltas)
    if offsets is not None:
        stbl += table(b"ctts", offsets, ">Ii")
    stbl += full(b"stsz", struct.pack(">II", 0, samples if count is None else count))
    mdia = box(b"mdia", mdhd + hdlr + box(b"minf", box(b"stbl", stbl)))
    return box(b"trak", (elst(edits) if edits is not None else b"") + mdia)


FTYP = box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41")
MVHD = full(b"mvhd", struct.pack(">IIII", 0, 0, 1000, 4000) + bytes(80))
# 4 s: 60 frames at 15 fps (timescale 15360), AAC at 16 kHz with its 1024-sample priming.
VIDEO = trak(b"vide", b"avc1", 15360, [(60, 1024)], [(4000, 0)])
AUDIO = trak(b"soun", b"mp4a", 16000, [(63, 1024), (1, 1024)], [(4000, 1024)])
CHAPTERS = trak(b"text", b"text", 1000, [(2, 2000)], [(4000, 0)])


def mp4(*traks: bytes, extra: bytes = b"") -> bytes:
    return FTYP + box(b"moov", MVHD + b"".join(traks) + extra) + box(b"mdat", bytes(100))


def tracks_of(data: bytes):  # type: ignore[no-untyped-def]
    return mp4_tracks(lambda offset, length: data[offset : offset + length], len(data))


def test_video_audio_and_chapters() -> None:
    found = tracks_of(mp4(VIDEO, AUDIO, CHAPTERS))
    assert found is not None and found.duration == 4.0
    video, audio = found.video, found.audio
    assert video is not None and audio is not None
    assert (video.index, video.start, video.end, video.packets, video.discarded) == (0, 0, 4, 60, 0)
    assert video.last == pytest.approx(59 / 15) and video.track_end == 4.0
    # The priming packet is discarded; the last packet lasts to the edit's end (4 s).
    assert (audio.index, audio.packets, audio.discarded, audio.start) == (1, 63, 1, 0.0)
    assert audio.end == 4.0 and audio.last == 62 * 1024 / 16000


def test_a_late_track_is_shifted_and_its_last_sample_ends_at_the_stream_duration() -> None:
    late = trak(b"vide", b"avc1", 1000, [(9, 100), (1, 1000)], [(500, -1), (1900, 0)])
    found = tracks_of(mp4(late, AUDIO))
    assert found is not None and found.video is not None
    video = found.video
    assert (video.start, video.last, video.track_end) == (0.5, 1.4, 2.4)
    assert video.end == 1.9  # ffmpeg: the stream's duration, not shifted (worker.media.check)
    # Its last sample starting after that duration: ffmpeg's packet keeps another length.
    later = trak(b"vide", b"avc1", 1000, [(9, 100), (1, 1000)], [(1500, -1), (1900, 0)])
    assert tracks_of(mp4(later, AUDIO)) is None


def test_composition_offsets_shift_by_the_edit_and_keep_their_durations() -> None:
    # I P B B: decoded 0 1 2 3, presented 0 3 1 2 (offsets 2, 4, 1, 1 frames; shift 2).
    bframes = trak(b"vide", b"avc1", 1000, [(4, 10)], [(40, 20)],
                   offsets=[(1, 20), (1, 40), (2, 10)])  # fmt: skip
    found = tracks_of(mp4(bframes, AUDIO))
    assert found is not None and found.video is not None
    video = found.video
    assert (video.start, video.last, video.end, video.packets) == (0.0, 0.03, 0.04, 4)
    assert not video.in_order


def test_mp4_probe_gives_the_header_and_timeline() -> None:
    data = mp4(VIDEO, AUDIO, CHAPTERS)
    found = mp4_probe(Path("out.mp4"), lambda o, n: data[o : o + n], len(data), 4.0)
    assert found is not None
    header, timeline = found
    assert header.video is not None and header.audio is not None
    assert (header.video.codec_name, header.audio.codec_name) == ("h264", "aac")
    assert (header.video.width, header.video.height) == VIDEO_SIZE
    assert (header.audio.channels, header.audio.sample_rate) == AUDIO_LAYOUT
    assert header.duration == 4.0 and timeline.complete and timeline.duration == 4.0


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(box(b"EBML", bytes(40)), id="not an MP4"),
        pytest.param(FTYP + box(b"mdat", bytes(10)), id="no moov"),
        pytest.param(mp4(VIDEO, AUDIO)[:-20], id="cut file"),
        pytest.param(mp4(VIDEO, AUDIO) + box(b"moof", bytes(8)), id="fragmented"),
        pytest.param(mp4(VIDEO, AUDIO, extra=box(b"mvex", bytes(8))), id="mvex"),
        pytest.param(mp4(VIDEO, VIDEO, AUDIO), id="two video tracks"),
        pytest.param(mp4(trak(b"subt", b"tx3g", 1000, [(1, 10)], [(10, 0)]), AUDIO), id="other"),
        pytest.param(mp4(trak(b"vide", b"vp09", 1000, [(1, 10)], [(10, 0)])), id="vp9"),
        pytest.param(mp4(trak(b"vide", b"avc1", 1000, [(4, 10)], None)), id="no edits"),
        pytest.param(
            mp4(trak(b"vide", b"avc1", 1000, [(4, 10)], [(20, 0), (20, 20)])), id="two edits"
        ),
        pytest.param(mp4(trak(b"vide", b"avc1", 1000, [(4, 10)], [(40, 5)])), id="straddles"),
        pytest.param(mp4(trak(b"vide", b"avc1", 1000, [(4, 10)], [(40, 0)], count=5)), id="count"),
        pytest.param(
            mp4(trak(b"vide", b"avc1", 1000, [(4, 10)], [(40, 0)], offsets=[(3, 0)])), id="ctts"
        ),
        pytest.param(
            mp4(trak(b"vide", b"avc1", 1000, [(4, 10)], [(40, 0)], offsets=[(4, -10)])),
            id="negative ctts",
        ),
        pytest.param(
            mp4(trak(b"vide", b"avc1", 1000, [(4, 10)], [(40, 0)], media=25)),
            id="last sample past the duration",
        ),
        pytest.param(mp4(trak(b"soun", b"mp4a", 0, [(4, 10)], [(40, 0)])), id="zero timescale"),
    ],
)
def test_anything_unusual_falls_back(data: bytes) -> None:
    assert tracks_of(data) is None


def test_too_many_samples_fall_back_before_any_is_read() -> None:
    # One stts entry claiming 4 billion samples (and the stsz count agreeing).
    huge = trak(b"vide", b"avc1", 1000, [(2**32 - 1, 1)], [(40, 0)], media=1)
    assert tracks_of(mp4(huge, AUDIO)) is None


def test_a_truncated_stts_falls_back() -> None:
    data = mp4(VIDEO, AUDIO)
    # The video's stts claims more entries than it holds.
    at = data.index(b"stts") + 8
    broken = data[:at] + struct.pack(">I", 1000) + data[at + 4 :]
    assert tracks_of(broken) is None
