"""The thumbnail: one PNG frame of the recording, near its start."""

from __future__ import annotations

from pathlib import Path

from worker import ffmpeg
from worker.errors import MediaError
from worker.media.commands import base_args
from worker.media.model import Recording
from worker.observability import FFMPEG_FAILURES

THUMBNAIL_AT_SECONDS = 1.0


def thumbnail_time(duration: float) -> float:
    """Where the thumbnail is taken: min(1 s, duration/2)."""
    return max(0.0, min(THUMBNAIL_AT_SECONDS, duration / 2))


def build_thumbnail_args(
    recording: Recording, thumbnail: Path, *, at: float | None = None
) -> list[str]:
    """One PNG frame at ``at`` (default :func:`thumbnail_time`), with a fast input seek
    (``-ss`` before ``-i``: ffmpeg seeks in the container instead of decoding up to it)."""
    when = thumbnail_time(recording.duration) if at is None else at
    args = base_args()
    args += ["-ss", f"{when:.3f}"]
    args += ffmpeg.input_args(recording.path)
    args += ["-map", f"0:{recording.video.index}", "-frames:v", "1", "-an", "-sn", "-dn"]
    args += ["-c:v", "png", "-f", "image2", "-update", "1", "-y", ffmpeg.file_url(thumbnail)]
    return args


def _nonempty_file(path: Path) -> bool:
    # A local stat: fast enough not to need a worker thread.
    return path.is_file() and path.stat().st_size > 0


async def write_thumbnail(recording: Recording, thumbnail: Path, *, timeout: float) -> None:  # noqa: ASYNC109
    """Write the thumbnail; a very short or sparse video may have no frame after the seek
    point, so fall back to the first frame before giving up."""
    for at in (None, 0.0):
        await ffmpeg.run(
            build_thumbnail_args(recording, thumbnail, at=at),
            timeout=timeout,
            what="thumbnail",
        )
        if _nonempty_file(thumbnail):
            return
    FFMPEG_FAILURES.labels(reason="no_thumbnail").inc()
    raise MediaError("thumbnail: ffmpeg wrote no frame")
