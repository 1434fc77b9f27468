"""One job: the nine steps of SPEC §1 for one queue message, start to finish.

:func:`process_job` reads like the Lambda it replaces: read the row, download the Connect
audio and the Komorebi recording, merge them (split, cut, concatenate and mux happen in one
ffmpeg run, :mod:`worker.media`), upload, mark the row processed. What it does *not* do is
decide what a failure means: it raises a typed error (:mod:`worker.errors`) and
:func:`worker.outcome.decide` decides, in one place, whether to retry or dead-letter (SPEC §6).

The job owns the recording's lease (SPEC §4) while it works: it claims it before the first
download, renews it every ``VISIBILITY_TIMEOUT/3`` in its own task group, and releases it
(shielded, so also on cancellation) if it does not finish; on success ``mark_done`` drops it.
Its scratch directory (:mod:`worker.scratch`) is always removed, also on cancellation.

The job reaches the world only through :class:`JobDeps`: the table, the object store and the
media engine are the protocols of :mod:`worker.protocols`, so every step and every outcome is
unit-tested against in-memory fakes (``tests/unit/test_job_unit.py``) as well as on moto and
ffmpeg (``tests/aws/test_job.py``).

Permanent first: before waiting on anything that may still arrive (the Connect recording is
uploaded by Amazon Connect, possibly late), the job checks what never will: the Komorebi
recording object (a HEAD) and whether it can ever fit under ``SCRATCH_MAX_BYTES``. A missing
recording is :class:`RecordingNotFound` even when the Connect audio is missing too.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog

from worker import media
from worker.config import Settings
from worker.custody import check_connect_audio_key
from worker.errors import (
    AlreadyDone,
    ConnectAudioNotReady,
    JobError,
    LeaseHeld,
    ObjectNotFound,
    RecordingNotFound,
    ScratchFull,
    TooLargeForScratch,
    WorkerError,
    first_error,
)
from worker.keys import RecordingKeys, choose_connect_audio, keys_for
from worker.limits import SHUTDOWN
from worker.messages import JobMessage
from worker.observability import record_merge, stage
from worker.outcome import JobResult
from worker.protocols import MergeInputs, Merger, Store, Table
from worker.recordings import (
    CALL_END_TOLERANCE_SECONDS,
    STATUS_DONE,
    DoneRecord,
    RecordingRow,
)
from worker.scratch import job_directory

log = structlog.get_logger(__name__)

# Releasing a lease is one UpdateItem; if AWS does not answer within this, give up: the lease
# expires by itself after VISIBILITY_TIMEOUT. (A part of the shutdown budget: worker.limits.)
LEASE_RELEASE_TIMEOUT_SECONDS = SHUTDOWN.release_lease
THUMBNAIL_CONTENT_TYPE = "image/png"
THUMBNAIL_NAME = "thumbnail.png"


def new_worker_id() -> str:
    """A worker identity for leases and logs: ``hostname-pid-random``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


async def probe_and_merge(inputs: MergeInputs, /) -> media.MergeResult:
    """The real :class:`~worker.protocols.Merger`: probe both inputs, run the SPEC §5 merge
    into ``inputs.workdir`` (the output, named for the recording's container, and the
    thumbnail)."""
    with stage("probe"):
        # Side by side; the recording's error first, the Connect audio's once the recording
        # is known to be usable (permanent first).
        recording, probed = await media.probe_inputs(
            inputs.recording, inputs.connect_audio, timeout=inputs.options.timeout_base_seconds
        )
    checked = media.Recording.of(recording, name=inputs.name)
    if isinstance(probed, Exception):
        raise probed
    connect = probed
    container = media.container_for(checked.video.codec_name)
    request = media.MergeRequest(
        recording=inputs.recording,
        connect_audio=inputs.connect_audio,
        call_end_seconds=inputs.call_end_seconds,
        output=inputs.workdir / f"recording.{container.extension}",
        thumbnail=inputs.thumbnail,
        options=inputs.options,
        recording_info=recording,
        connect_info=connect,
    )
    with stage("merge"):
        return await media.merge(request)


@dataclass
class JobDeps:
    """What a job needs from the process: settings, the table, the object store, the media
    engine (the real one unless a test gives a fake), who we are."""

    settings: Settings
    table: Table
    store: Store
    worker_id: str
    merger: Merger = probe_and_merge


async def process_job(job: JobMessage, deps: JobDeps, *, scratch: Path) -> JobResult:
    """Produce the unified recording of ``job`` (SPEC §1) and mark its row processed.

    ``scratch`` is the parent directory (``SCRATCH_DIR``): the job works in its own
    sub-directory and always removes it (:mod:`worker.scratch`). Every failure it understands
    is raised as a :class:`worker.errors.JobError` (transient or permanent); the caller decides
    what that means for the message, and deletes the message after success.
    """
    # (1) read the recording's row
    with stage("read_row"):
        row = await deps.table.get(job.recording_id)
    if is_duplicate(row, job) and not job.reprocess:
        # Acknowledged without work; the consumer counts it (outcome "duplicate").
        return _acknowledged(job)
    keys = recording_keys(row, deps.settings)
    check_given_connect_key(job, keys)
    try:
        async with job_directory(scratch, job.recording_id) as workdir, leased(deps, job) as owner:
            # Permanent first: what can never arrive is checked before what may still come.
            with stage("check_recording"):
                await check_recording(deps, keys.input_key, workdir)
            with stage("find_connect_audio"):
                connect_key = await find_connect_audio(job, keys, deps)
            # (2) + (3) download the Connect audio and the Komorebi recording, side by side
            inputs = await download_inputs(job, deps, keys.input_key, connect_key, workdir)
            # (4)-(7) split, cut, concatenate and mux: one ffmpeg run (SPEC §5)
            merged = await deps.merger(inputs)
            # (8) upload the unified recording and its thumbnail, side by side
            output_key = await upload_outputs(deps, keys, merged, inputs.thumbnail)
            # (9) mark the row processed (this also drops the lease)
            with stage("update_row"):
                done = done_record(job, keys, output_key, merged)
                await deps.table.mark_done(job.recording_id, owner, done)
    except AlreadyDone:
        # Another worker finished it after we read the row: acknowledged without work.
        return _acknowledged(job)
    # The speed of ffmpeg's merge pass itself: probes, sync, loudness, the thumbnail and the
    # output check have their own stage timings.
    record_merge(merged.media_duration_seconds, merged.merge_pass_seconds)
    return JobResult(job.recording_id, False, output_key, merged.media_duration_seconds)


def _acknowledged(job: JobMessage) -> JobResult:
    return JobResult(job.recording_id, True, None, None)


def recording_keys(row: RecordingRow, settings: Settings) -> RecordingKeys:
    """Where the row's recording, Connect audio and outputs live (SPEC §5)."""
    return keys_for(
        row.recording_id,
        row.agent_id,
        row.creation_date,
        settings.keys,
        settings.connect_instance_alias,
    )


def check_given_connect_key(job: JobMessage, keys: RecordingKeys) -> None:
    """A message's ``connectAudioKey`` must be one the prefix search could have found for
    this row (its day or the next, this recording's file), else :class:`InvalidMessage`:
    recordings stay with their contact (:mod:`worker.custody`)."""
    if job.connect_audio_key is not None:
        check_connect_audio_key(
            job.connect_audio_key, job.recording_id, keys.connect_audio_prefixes
        )


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


async def download_inputs(
    job: JobMessage, deps: JobDeps, recording_key: str, connect_key: str, workdir: Path
) -> MergeInputs:
    """Download the Komorebi recording and the Connect audio into ``workdir``, side by side;
    what the merge needs next."""
    settings = deps.settings
    recording = workdir / ("recording-input" + _suffix(recording_key, ".mp4"))
    connect = workdir / ("connect-audio" + _suffix(connect_key, ".wav"))
    with stage("download"):
        await both(
            lambda: download_recording(deps, recording_key, recording),
            lambda: download_connect_audio(deps, connect_key, connect),
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


async def upload_outputs(
    deps: JobDeps, keys: RecordingKeys, merged: media.MergeResult, thumbnail: Path
) -> str:
    """Upload the unified recording and its thumbnail side by side; the recording's key."""
    bucket = deps.settings.output_bucket
    output_key = keys.output_key(merged.container.extension)
    with stage("upload"):
        await both(
            lambda: deps.store.upload(
                merged.output, bucket, output_key, content_type=merged.container.content_type
            ),
            lambda: deps.store.upload(
                thumbnail, bucket, keys.thumbnail_key, content_type=THUMBNAIL_CONTENT_TYPE
            ),
        )
    return output_key


def done_record(
    job: JobMessage, keys: RecordingKeys, output_key: str, merged: media.MergeResult
) -> DoneRecord:
    """What the row records for a finished job (SPEC §4)."""
    return DoneRecord(
        video_key=output_key,
        thumbnail_key=keys.thumbnail_key,
        media_duration_seconds=merged.media_duration_seconds,
        # What the message said (not the clamped value), so a re-sent message is recognised
        # as a duplicate even when the merge clamped it.
        call_end_seconds=job.call_end_seconds,
        connect_audio_offset_seconds=merged.connect_audio_offset_seconds,
        sync_method=merged.sync.method,
        sync_offset_seconds=merged.sync.offset_seconds,
        sync_confidence=merged.sync.confidence,
        sync_drift_ppm=merged.sync.drift_ppm,
    )


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
                unless_done_call_end=None if job.reprocess else job.call_end_seconds,
                call_end_tolerance=CALL_END_TOLERANCE_SECONDS,
                requested_call_end=job.call_end_seconds,
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


async def release_lease(table: Table, recording_id: str, owner: str) -> None:
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
