"""ffprobe's command lines for probing a file (pure): header, packets, or both in one run.

Run by :func:`worker.media.probing.probe`; every input behind the allow-lists
(:func:`worker.ffmpeg_inputs.input_args`).
"""

from __future__ import annotations

from pathlib import Path

from worker import ffmpeg_inputs as ffmpeg

PACKET_ENTRIES = (
    "packet=stream_index,pts_time,dts_time,duration_time,flags"
    ":packet_side_data=skip_samples,discard_padding"
)
# A one-run probe holds the packets it read until the header (printed after them) is parsed:
# at most this many (every packet of a 45-minute Connect WAV is about 21,000); a file with
# more is read in two runs instead.
ONE_RUN_MAX_PACKETS = 100_000


def build_probe_args(path: Path) -> list[str]:
    """ffprobe of format and streams, as JSON (pure)."""
    return [
        ffmpeg.FFPROBE,
        "-hide_banner",
        "-v",
        "error",
        "-show_format",
        "-show_streams",
        "-of",
        "json",
        *ffmpeg.input_args(path),
    ]


def build_timeline_args(
    path: Path, intervals: str | None = None, stream: int | None = None
) -> list[str]:
    """ffprobe listing packets' stream, times, flags and skipped samples (pure).

    Demuxing only (no decoding): a pass over the file at disk speed, or over ``intervals``
    (ffprobe's ``-read_intervals``, see :func:`~worker.media.timeline.scan_intervals`); only
    stream ``stream`` when given (an MP4 demuxer then skips the others' data). One line per
    packet, read by :class:`~worker.media.timeline.TimelineScan`.
    """
    return [
        ffmpeg.FFPROBE,
        "-hide_banner",
        "-v",
        "error",
        *(["-read_intervals", intervals] if intervals else []),
        *(["-select_streams", str(stream)] if stream is not None else []),
        "-show_entries",
        PACKET_ENTRIES,
        "-of",
        "compact=p=0",
        *ffmpeg.input_args(path),
    ]


def build_one_run_args(path: Path, intervals: str | None) -> list[str]:
    """ffprobe of format, streams and packets in one run (pure): the packets of ``intervals``
    or the first :data:`ONE_RUN_MAX_PACKETS`, as compact JSON (one packet a line), read by
    :class:`~worker.media.onerun.OneRunReader`."""
    return [
        ffmpeg.FFPROBE,
        "-hide_banner",
        "-v",
        "error",
        "-read_intervals",
        intervals or f"%+#{ONE_RUN_MAX_PACKETS}",
        "-show_format",
        "-show_streams",
        "-show_entries",
        PACKET_ENTRIES,
        "-of",
        "json=c=1",
        *ffmpeg.input_args(path),
    ]
