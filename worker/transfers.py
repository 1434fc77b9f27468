"""A job's traffic with the object store (SPEC §1 steps 2, 3 and 8, SPEC §5's key search).

Before anything is downloaded the recording object is checked (permanent first: a missing
recording, or one that can never fit under ``SCRATCH_MAX_BYTES``, is not worth waiting for);
the Connect recording is found by its message key or a prefix search; both inputs are
downloaded side by side, and the unified recording and its thumbnail uploaded side by side.
Missing objects become the typed errors :func:`worker.outcome.decide` understands: a missing
recording is permanent, a missing Connect recording may still be on its way (transient).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import structlog

from worker import media
from worker.config import Settings
from worker.errors import (
    ConnectAudioNotReady,
    ObjectNotFound,
    RecordingNotFound,
    ScratchFull,
    TooLargeForScratch,
    first_error,
)
from worker.keys import RecordingKeys, choose_connect_audio
from worker.messages import JobMessage
from worker.observability import stage
from worker.protocols import MergeInputs, Store

log = structlog.get_logger(__name__)

THUMBNAIL_CONTENT_TYPE = "image/png"
THUMBNAIL_NAME = "thumbnail.png"


async def check_recording(store: Store, settings: Settings, key: str, workdir: Path) -> None:
    """The recording object exists and could ever fit in scratch (SPEC §6: permanent first).

    :class:`RecordingNotFound` when absent, :class:`TooLargeForScratch` when it can never be
    downloaded under ``SCRATCH_MAX_BYTES`` (or onto the scratch disk at all). A disk that is
    only full right now is left to the download (transient when shared).
    """
    try:
        head = await store.head(settings.input_bucket, key)
    except ObjectNotFound:
        raise RecordingNotFound(f"recording object {key} is not in the input bucket") from None
    try:
        store.check_fits(workdir, head.size)
    except TooLargeForScratch:
        raise
    except ScratchFull:
        pass  # full right now: the download decides (it may have room by then)


async def find_connect_audio(
    job: JobMessage, keys: RecordingKeys, store: Store, settings: Settings
) -> str:
    """The key of the Connect recording (SPEC §5).

    The message's ``connectAudioKey`` when given; else a prefix search over the creationDate
    day and the next one, newest of several. None found: :class:`ConnectAudioNotReady`.
    """
    if job.connect_audio_key:
        return job.connect_audio_key
    candidates = []
    for prefix in keys.connect_audio_prefixes:
        candidates += await store.list_prefix(settings.ac_audio_bucket, prefix)
    chosen = choose_connect_audio(candidates, recording_id=job.recording_id)
    if len(candidates) > 1:
        log.info(
            "connect_audio_candidates", chosen=chosen.key, candidates=[c.key for c in candidates]
        )
    return chosen.key


async def download_inputs(
    job: JobMessage,
    store: Store,
    settings: Settings,
    recording_key: str,
    connect_key: str,
    workdir: Path,
) -> MergeInputs:
    """Download the Komorebi recording and the Connect audio into ``workdir``, side by side;
    what the merge needs next."""
    recording = workdir / ("recording-input" + _suffix(recording_key, ".mp4"))
    connect = workdir / ("connect-audio" + _suffix(connect_key, ".wav"))
    with stage("download"):
        await both(
            lambda: download_recording(store, settings, recording_key, recording),
            lambda: download_connect_audio(store, settings, connect_key, connect),
        )
    return MergeInputs(
        recording=recording,
        connect_audio=connect,
        call_end_seconds=job.call_end_seconds,
        workdir=workdir,
        thumbnail=workdir / THUMBNAIL_NAME,
        name=f"recording {job.recording_id}",
        options=media.MergeOptions(
            align=settings.align,
            audio=settings.audio,
            loudness_target=settings.loudness_target,
            timeout_base_seconds=settings.ffmpeg_timeout_base_seconds,
            timeout_per_media_second=settings.ffmpeg_timeout_per_media_second,
        ),
    )


async def download_recording(store: Store, settings: Settings, key: str, destination: Path) -> int:
    """Download the Komorebi recording; a missing object is permanent (SPEC §6)."""
    try:
        return await store.download(settings.input_bucket, key, destination)
    except ObjectNotFound:
        raise RecordingNotFound(f"recording object {key} is not in the input bucket") from None


async def download_connect_audio(
    store: Store, settings: Settings, key: str, destination: Path
) -> int:
    """Download the Connect audio; a missing object may still be on its way (transient)."""
    try:
        return await store.download(settings.ac_audio_bucket, key, destination)
    except ObjectNotFound:
        raise ConnectAudioNotReady(f"Connect recording {key} is not in its bucket") from None


async def upload_outputs(
    store: Store,
    settings: Settings,
    keys: RecordingKeys,
    merged: media.MergeResult,
    thumbnail: Path,
) -> str:
    """Upload the unified recording and its thumbnail side by side; the recording's key."""
    bucket = settings.output_bucket
    output_key = keys.output_key(merged.container.extension)
    with stage("upload"):
        await both(
            lambda: store.upload(
                merged.output, bucket, output_key, content_type=merged.container.content_type
            ),
            lambda: store.upload(
                thumbnail, bucket, keys.thumbnail_key, content_type=THUMBNAIL_CONTENT_TYPE
            ),
        )
    return output_key


Step = Callable[[], Coroutine[Any, Any, object]]


async def both(first: Step, second: Step) -> None:
    """Run two steps concurrently; the first failure cancels the other and is raised itself."""
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(first)
            group.start_soon(second)
    except BaseExceptionGroup as errors:
        raise first_error(errors) from None


def _suffix(key: str, default: str) -> str:
    suffix = Path(key).suffix.lower()
    # Keys come from outside: keep the extension only if it looks like one.
    if 1 < len(suffix) <= 6 and suffix[1:].isalnum():
        return suffix
    return default
