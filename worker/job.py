"""One job: the nine steps of SPEC §1 for one queue message, start to finish.

:func:`process_job` reads like the Lambda it replaces: read the row, download the Connect
audio and the Komorebi recording, merge them (split, cut, concatenate and mux happen in one
ffmpeg run, :mod:`worker.media`), upload, mark the row processed. What it does *not* do is
decide what a failure means: it raises a typed error (:mod:`worker.errors`) and
:func:`worker.outcome.decide` decides, in one place, whether to retry or dead-letter (SPEC §6).

The job owns the recording's lease (SPEC §4) while it works: it claims it before the first
download, renews it every ``VISIBILITY_TIMEOUT/3`` in its own task group, and releases it
(shielded, so also on cancellation) if it does not finish; on success ``mark_done`` drops it.
Its scratch directory is always removed, in a worker thread inside a shielded scope: a
cancellation cannot interrupt it half-way, and removing multi-GB files does not stall the
event loop (other jobs' heartbeats, ``/healthz``).

Permanent first: before waiting on anything that may still arrive (the Connect recording is
uploaded by Amazon Connect, possibly late), the job checks what never will: the Komorebi
recording object (a HEAD) and whether it can ever fit under ``SCRATCH_MAX_BYTES``. A missing
recording is :class:`RecordingNotFound` even when the Connect audio is missing too.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog

from worker import media
from worker.config import Settings
from worker.errors import (
    AlreadyDone,
    ConnectAudioNotReady,
    JobError,
    LeaseHeld,
    NoVideoStream,
    ObjectNotFound,
    RecordingNotFound,
    ScratchBusy,
    ScratchFull,
    TooLargeForScratch,
    WorkerError,
    first_error,
)
from worker.messages import JobMessage
from worker.observability import record_merge, stage
from worker.recordings import (
    CALL_END_TOLERANCE_SECONDS,
    STATUS_DONE,
    DoneRecord,
    RecordingKeys,
    RecordingRow,
    RecordingTable,
    choose_connect_audio,
    keys_for,
)
from worker.storage import ObjectStore

log = structlog.get_logger(__name__)

# Releasing a lease is one UpdateItem; if AWS does not answer within this, give up: the lease
# expires by itself after VISIBILITY_TIMEOUT.
LEASE_RELEASE_TIMEOUT_SECONDS = 5.0
THUMBNAIL_CONTENT_TYPE = "image/png"
THUMBNAIL_NAME = "thumbnail.png"


def new_worker_id() -> str:
    """A worker identity for leases and logs: ``hostname-pid-random``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class JobDeps:
    """What a job needs from the process: settings, the table, the object store, who we are."""

    settings: Settings
    table: RecordingTable
    store: ObjectStore
    worker_id: str


@dataclass(frozen=True)
class JobResult:
    """What a finished job did. ``duplicate``: the row was already done; nothing was done."""

    recording_id: str
    duplicate: bool
    output_key: str | None
    media_duration_seconds: float | None


async def process_job(job: JobMessage, deps: JobDeps, *, scratch: Path) -> JobResult:
    """Produce the unified recording of ``job`` (SPEC §1) and mark its row processed.

    ``scratch`` is the parent directory (``SCRATCH_DIR``): the job works in its own
    sub-directory and always removes it. Every failure it understands is raised as a
    :class:`worker.errors.JobError` (transient or permanent); the caller decides what that
    means for the message, and deletes the message after success.
    """
    settings = deps.settings
    # (1) read the recording's row
    with stage("read_row"):
        row = await deps.table.get(job.recording_id)
    if is_duplicate(row, job):
        # Acknowledged without work; the consumer counts it (outcome "duplicate").
        return JobResult(job.recording_id, True, None, None)
    keys = keys_for(
        row.recording_id,
        row.agent_id,
        row.creation_date,
        settings.keys,
        settings.connect_instance_alias,
    )
    workdir = Path(tempfile.mkdtemp(prefix=scratch_prefix(job.recording_id), dir=scratch))
    try:
        async with leased(deps, job) as owner:
            # Permanent first: what can never arrive is checked before what may still come.
            with stage("check_recording"):
                await check_recording(deps, keys.input_key, workdir)
            # (2) + (3) download the Connect audio and the Komorebi recording, side by side
            with stage("find_connect_audio"):
                connect_key = await find_connect_audio(job, keys, deps)
            recording_path = workdir / ("recording-input" + _suffix(keys.input_key, ".mp4"))
            connect_path = workdir / ("connect-audio" + _suffix(connect_key, ".wav"))
            with stage("download"):
                await both(
                    lambda: download_recording(deps, keys.input_key, recording_path),
                    lambda: download_connect_audio(deps, connect_key, connect_path),
                )
            # (4)-(7) split, cut, concatenate and mux: one ffmpeg run (SPEC §5)
            started = time.monotonic()
            merged = await merge(job, deps, recording_path, connect_path, workdir)
            merge_seconds = time.monotonic() - started
            # (8) upload the unified recording and its thumbnail, side by side
            output_key = keys.output_key(merged.container.extension)
            with stage("upload"):
                await both(
                    lambda: deps.store.upload(
                        merged.output,
                        settings.output_bucket,
                        output_key,
                        content_type=merged.container.content_type,
                    ),
                    lambda: deps.store.upload(
                        workdir / THUMBNAIL_NAME,
                        settings.output_bucket,
                        keys.thumbnail_key,
                        content_type=THUMBNAIL_CONTENT_TYPE,
                    ),
                )
            # (9) mark the row processed (this also drops the lease)
            with stage("update_row"):
                await deps.table.mark_done(
                    job.recording_id,
                    owner,
                    DoneRecord(
                        video_key=output_key,
                        thumbnail_key=keys.thumbnail_key,
                        media_duration_seconds=merged.media_duration_seconds,
                        # What the message said (not the clamped value), so a re-sent message
                        # is recognised as a duplicate even when the merge clamped it.
                        call_end_seconds=job.call_end_seconds,
                        connect_audio_offset_seconds=merged.connect_audio_offset_seconds,
                        sync_method=merged.sync.method,
                        sync_offset_seconds=merged.sync.offset_seconds,
                        sync_confidence=merged.sync.confidence,
                        sync_drift_ppm=merged.sync.drift_ppm,
                    ),
                )
    except AlreadyDone:
        # Another worker finished it after we read the row: acknowledged without work.
        return JobResult(job.recording_id, True, None, None)
    except ScratchFull as error:
        # Alone on the disk, the job cannot fit: permanent. Sharing it with running jobs (in
        # this process or another), it may fit once they end: retry later. An object that can
        # never fit (above the cap or the disk's size) stays permanent whatever else runs.
        if not isinstance(error, TooLargeForScratch) and _other_jobs_in(scratch, workdir):
            raise ScratchBusy(f"{error.message} (shared with running jobs)") from None
        raise
    finally:
        await remove_scratch(workdir)
    record_merge(merged.media_duration_seconds, merge_seconds)
    return JobResult(job.recording_id, False, output_key, merged.media_duration_seconds)


async def remove_scratch(workdir: Path) -> None:
    """Remove a job's scratch directory: in a thread (multi-GB files take a while to unlink,
    which must not stall the event loop), shielded so a cancellation cannot leave it
    half-removed."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(
            functools.partial(shutil.rmtree, workdir, ignore_errors=True)
        )


def scratch_prefix(recording_id: str, pid: int | None = None) -> str:
    """Name prefix of a job's scratch directory: the pid says which process owns it."""
    return f"job-{os.getpid() if pid is None else pid}-{recording_id[:40]}-"


_SCRATCH_DIR = re.compile(r"job-(\d+)-")


def sweep_stale_scratch(scratch: Path) -> int:
    """Remove job directories left by dead processes (a SIGKILL skips every ``finally``).

    Called once at start-up, before any job runs, so a directory carrying this process's own
    pid is stale too (a restarted container can reuse a pid). Returns how many it removed.
    """
    removed = 0
    for entry in scratch.glob("job-*"):
        match = _SCRATCH_DIR.match(entry.name)
        if not match or not entry.is_dir():
            continue
        pid = int(match[1])
        if pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def _other_jobs_in(scratch: Path, own: Path) -> bool:
    return any(entry != own and entry.is_dir() for entry in scratch.glob("job-*"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_duplicate(row: RecordingRow, job: JobMessage) -> bool:
    """Whether ``job`` is already done: the row is DONE for the same call end (SPEC §6).

    A DONE row with a *different* call end is processed again (the call end was corrected).
    """
    if row.status != STATUS_DONE or not row.is_processed or row.call_end_seconds is None:
        return False
    return abs(row.call_end_seconds - job.call_end_seconds) <= CALL_END_TOLERANCE_SECONDS


async def find_connect_audio(job: JobMessage, keys: RecordingKeys, deps: JobDeps) -> str:
    """The key of the Connect recording (SPEC §5).

    The message's ``connectAudioKey`` when given; else a prefix search over the creationDate
    day and the next one, newest of several. None found: :class:`ConnectAudioNotReady`.
    """
    if job.connect_audio_key:
        return job.connect_audio_key
    candidates = []
    for prefix in keys.connect_audio_prefixes:
        candidates += await deps.store.list_prefix(deps.settings.ac_audio_bucket, prefix)
    chosen = choose_connect_audio(candidates, recording_id=job.recording_id)
    if len(candidates) > 1:
        log.info(
            "connect_audio_candidates", chosen=chosen.key, candidates=[c.key for c in candidates]
        )
    return chosen.key


async def check_recording(deps: JobDeps, key: str, workdir: Path) -> None:
    """The recording object exists and could ever fit in scratch (SPEC §6: permanent first).

    :class:`RecordingNotFound` when absent, :class:`TooLargeForScratch` when it can never be
    downloaded under ``SCRATCH_MAX_BYTES`` (or onto the scratch disk at all). A disk that is
    only full right now is left to the download (transient when shared, see above).
    """
    try:
        head = await deps.store.head(deps.settings.input_bucket, key)
    except ObjectNotFound:
        raise RecordingNotFound(f"recording object {key} is not in the input bucket") from None
    try:
        deps.store.check_fits(workdir, head.size)
    except TooLargeForScratch:
        raise
    except ScratchFull:
        pass  # full right now: the download decides (it may have room by then)


async def download_recording(deps: JobDeps, key: str, destination: Path) -> int:
    """Download the Komorebi recording; a missing object is permanent (SPEC §6)."""
    try:
        return await deps.store.download(deps.settings.input_bucket, key, destination)
    except ObjectNotFound:
        raise RecordingNotFound(f"recording object {key} is not in the input bucket") from None


async def download_connect_audio(deps: JobDeps, key: str, destination: Path) -> int:
    """Download the Connect audio; a missing object may still be on its way (transient)."""
    try:
        return await deps.store.download(deps.settings.ac_audio_bucket, key, destination)
    except ObjectNotFound:
        raise ConnectAudioNotReady(f"Connect recording {key} is not in its bucket") from None


async def merge(
    job: JobMessage, deps: JobDeps, recording_path: Path, connect_path: Path, workdir: Path
) -> media.MergeResult:
    """Probe both inputs and run the SPEC §5 merge into ``workdir`` (output + thumbnail)."""
    settings = deps.settings
    with stage("probe"):
        timeout = settings.ffmpeg_timeout_base_seconds
        recording = await media.probe(recording_path, timeout=timeout)
        connect = await media.probe(connect_path, timeout=timeout)
    if recording.video is None:
        raise NoVideoStream(f"recording {job.recording_id} has no video stream")
    container = media.container_for(recording.video.codec_name)
    request = media.MergeRequest(
        recording=recording_path,
        connect_audio=connect_path,
        call_end_seconds=job.call_end_seconds,
        output=workdir / f"recording.{container.extension}",
        thumbnail=workdir / THUMBNAIL_NAME,
        options=media.MergeOptions(
            align=settings.align,
            audio=settings.audio,
            loudness_target=settings.loudness_target,
            timeout_base_seconds=settings.ffmpeg_timeout_base_seconds,
            timeout_per_media_second=settings.ffmpeg_timeout_per_media_second,
        ),
        recording_info=recording,
        connect_info=connect,
    )
    with stage("merge"):
        return await media.merge(request)


@asynccontextmanager
async def leased(deps: JobDeps, job: JobMessage) -> AsyncIterator[str]:
    """Hold the recording's lease for the body; yields the lease owner.

    Claims it (:class:`LeaseHeld` while another live worker holds it), renews it every
    heartbeat period in a task of this job's own task group, and releases it (shielded,
    bounded) when the body fails or is cancelled. Losing the lease to another worker cancels
    the body and raises :class:`LeaseHeld`. One owner per job, not per process: two
    deliveries of one recording inside one worker must not share a lease.
    """
    settings = deps.settings
    recording_id = job.recording_id
    owner = f"{deps.worker_id}/{secrets.token_hex(4)}"
    with stage("claim_lease"):
        try:
            await deps.table.claim_lease(
                recording_id,
                owner,
                settings.lease_seconds,
                unless_done_call_end=job.call_end_seconds,
                call_end_tolerance=CALL_END_TOLERANCE_SECONDS,
            )
        except anyio.get_cancelled_exc_class():
            # The write may have landed before the cancellation reached us; releasing a lease
            # we do not hold is a no-op, so give it back either way.
            await release_lease(deps.table, recording_id, owner)
            raise

    async def keep() -> None:
        # A lease lives VISIBILITY_TIMEOUT and is renewed every third of it: it survives two
        # failed renewals (logged), but not a takeover.
        while True:
            await anyio.sleep(settings.heartbeat_interval)
            try:
                await deps.table.renew_lease(recording_id, owner, settings.lease_seconds)
            except LeaseHeld:
                raise
            except JobError as error:
                log.warning("lease_renew_failed", error=error.message, reason=error.reason)

    try:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(keep)
                try:
                    yield owner
                finally:
                    group.cancel_scope.cancel()
        except BaseExceptionGroup as errors:
            raise first_error(errors) from None
    except BaseException:
        await release_lease(deps.table, recording_id, owner)
        raise


async def release_lease(table: RecordingTable, recording_id: str, owner: str) -> None:
    """Give a lease up, shielded from cancellation and bounded in time; never raises."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(LEASE_RELEASE_TIMEOUT_SECONDS):
        try:
            await table.release_lease(recording_id, owner)
        except WorkerError as error:
            log.warning("lease_release_failed", error=error.message)


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
