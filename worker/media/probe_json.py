"""ffprobe's JSON header read (pure): the streams the merge uses and the duration claimed.

Read from :func:`worker.media.probing.build_probe_args`'s output, or the header part of a
one-run probe (:class:`~worker.media.onerun.OneRunReader`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.errors import MediaError
from worker.media._parse import parse_clock, parse_float, parse_fraction, parse_int
from worker.media.model import ProbeHeader, StreamInfo


def _stream(raw: dict[str, Any]) -> StreamInfo:
    return StreamInfo(
        index=int(raw["index"]),
        codec_type=str(raw.get("codec_type", "")),
        codec_name=str(raw.get("codec_name", "unknown")),
        start_time=parse_float(raw.get("start_time")) or 0.0,
        duration=parse_float(raw.get("duration")),
        sample_rate=parse_int(raw.get("sample_rate")),
        channels=parse_int(raw.get("channels")),
        width=parse_int(raw.get("width")),
        height=parse_int(raw.get("height")),
        time_base=parse_fraction(raw.get("time_base")),
        reorder_delay=parse_int(raw.get("has_b_frames")) or 0,
        track_end=_track_end(raw),
    )


def _track_end(raw: dict[str, Any]) -> float | None:
    duration = parse_float(raw.get("duration"))
    if duration is not None:
        return (parse_float(raw.get("start_time")) or 0.0) + duration
    return parse_clock((raw.get("tags") or {}).get("DURATION"))


def parse_probe_json(path: Path, text: str, size_bytes: int) -> ProbeHeader:
    """The header from ffprobe's JSON: the first video stream (not a cover picture), the
    first audio stream and the duration the header claims (None when absent or zero)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise MediaError(f"{path.name}: ffprobe output is not JSON") from None
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    video = next(
        (
            _stream(s)
            for s in streams
            if s.get("codec_type") == "video"
            and not (s.get("disposition") or {}).get("attached_pic")
        ),
        None,
    )
    audio = next((_stream(s) for s in streams if s.get("codec_type") == "audio"), None)
    return ProbeHeader(
        path=path,
        format_name=str(fmt.get("format_name", "unknown")),
        duration=parse_float(fmt.get("duration")) or None,
        video=video,
        audio=audio,
        start_time=parse_float(fmt.get("start_time")) or 0.0,
        size_bytes=size_bytes,
    )
