"""The thumbnail: one PNG frame of the recording, near its start.

Usually written by the merge's own run (:func:`~worker.media.commands.build_merge_args`);
:func:`finish_thumbnail` runs ffmpeg for it only when that run found no frame.
"""

from __future__ import annotations

from pathlib import Path

from worker import ffmpeg
from worker.errors import MediaError
from worker.media.commands import base_args, thumbnail_output_args
from worker.media.commands import thumbnail_time as thumbnail_time  # re-exported
from worker.media.model import Recording
from worker.observability import FFMPEG_FAILURES


def build_thumbnail_args(
    recording: Recording, thumbnail: Path, *, at: float | None = None
) -> list[str]:
    """One PNG frame at ``at`` (default :func:`thumbnail_time`), with a fast input seek
    (``-ss`` before ``-i``: ffmpeg seeks in the container instead of decoding up to it).

    Run on its own only when the merge's run wrote none (its window had no frame,
    :func:`~worker.media.commands.build_merge_args`)."""
    when = thumbnail_time(recording.duration) if at is None else at
    args = base_args()
    args += ["-ss", f"{when:.3f}"]
    args += ffmpeg.input_args(recording.path)
    args += thumbnail_output_args(0, recording.video.index, thumbnail)
    return args


def _nonempty_file(path: Path) -> bool:
    # A local stat: fast enough not to need a worker thread.
    return path.is_file() and path.stat().st_size > 0


async def finish_thumbnail(recording: Recording, thumbnail: Path, *, timeout: float) -> None:  # noqa: ASYNC109
    """The thumbnail the merge's run wrote, or (none written: no frame in its window) one
    taken on its own (:func:`write_thumbnail`)."""
    if not _nonempty_file(thumbnail):
        await write_thumbnail(recording, thumbnail, timeout=timeout)


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
