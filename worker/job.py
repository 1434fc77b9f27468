"""One job: the nine steps of SPEC §1 for one queue message, start to finish.

:func:`process_job` reads like the Lambda it replaces: read the row, download the Connect
audio and the Komorebi recording, merge them (split, cut, concatenate and mux happen in one
ffmpeg run, :mod:`worker.media`), upload, mark the row processed. What it does *not* do is
decide what a failure means: it raises a typed error (:mod:`worker.errors`) and
:func:`worker.outcome.decide` decides, in one place, whether to retry or dead-letter (SPEC §6).

The job owns the recording's lease (SPEC §4, :mod:`worker.job_lease`) while it works: it claims it
before the first download, renews it every ``VISIBILITY_TIMEOUT/3`` in its own task group, and
releases it (shielded, so also on cancellation) if it does not finish; on success ``mark_done``
drops it. Its downloads and uploads are :mod:`worker.transfers`. Its scratch directory
(:mod:`worker.scratch`) is always removed, also on cancellation.

The job reaches the world only through :class:`JobDeps`: the table, the object store and the
media engine are the protocols of :mod:`worker.protocols`, so every step and every outcome is
unit-tested against in-memory fakes (``tests/unit/test_job_unit.py``) as well as on moto and
ffmpeg (``tests/aws/test_job.py``).

Permanent first: before waiting on anything that may still arrive (the Connect recording is
uploaded by Amazon Connect, possibly late), the job checks what never will: the Komorebi
recording object (a HEAD) and whether it can ever fit under ``SCRATCH_MAX_BYTES``. A missing
recording is :class:`~worker.errors.RecordingNotFound` even when the Connect audio is missing
too.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from worker import media
from worker.config import Settings
from worker.custody import check_connect_audio_key
from worker.errors import AlreadyDone
from worker.job_lease import leased
from worker.keys import RecordingKeys, keys_for
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
from worker.transfers import check_recording, download_inputs, find_connect_audio, upload_outputs


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
    store, settings = deps.store, deps.settings
    try:
        async with (
            job_directory(scratch, job.recording_id) as workdir,
            leased(deps.table, job, deps.worker_id, settings) as owner,
        ):
            # Permanent first: what can never arrive is checked before what may still come.
            with stage("check_recording"):
                await check_recording(store, settings, keys.input_key, workdir)
            with stage("find_connect_audio"):
                connect_key = await find_connect_audio(job, keys, store, settings)
            # (2) + (3) download the Connect audio and the Komorebi recording, side by side
            inputs = await download_inputs(
                job, store, settings, keys.input_key, connect_key, workdir
            )
            # (4)-(7) split, cut, concatenate and mux: one ffmpeg run (SPEC §5)
            merged = await deps.merger(inputs)
            # (8) upload the unified recording and its thumbnail, side by side
            output_key = await upload_outputs(store, settings, keys, merged, inputs.thumbnail)
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
