"""A job's hold on its recording (SPEC §4): the lease.

The job claims the recording's lease before its first download, so a second delivery of the
same recording (in this worker or another) waits instead of merging it twice. While the job
works, a task of its own task group renews the lease every ``VISIBILITY_TIMEOUT/3``; when the
job fails or is cancelled the lease is released (shielded, bounded), and on success the row's
``mark_done`` drops it. Losing the lease to another worker cancels the job with
:class:`~worker.errors.LeaseHeld`.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog

from worker.config import Settings
from worker.errors import JobError, LeaseHeld, WorkerError, first_error
from worker.limits import SHUTDOWN
from worker.messages import JobMessage
from worker.observability import stage
from worker.protocols import Table
from worker.recordings import CALL_END_TOLERANCE_SECONDS

log = structlog.get_logger(__name__)

# Releasing a lease is one UpdateItem; if AWS does not answer within this, give up: the lease
# expires by itself after VISIBILITY_TIMEOUT. (A part of the shutdown budget: worker.limits.)
LEASE_RELEASE_TIMEOUT_SECONDS = SHUTDOWN.release_lease


@asynccontextmanager
async def leased(
    table: Table, job: JobMessage, worker_id: str, settings: Settings
) -> AsyncIterator[str]:
    """Hold the recording's lease for the body; yields the lease owner.

    Claims it (:class:`LeaseHeld` while another live worker holds it), renews it every
    heartbeat period in a task of this job's own task group, and releases it (shielded,
    bounded) when the body fails or is cancelled. Losing the lease to another worker cancels
    the body and raises :class:`LeaseHeld`. One owner per job, not per process: two
    deliveries of one recording inside one worker must not share a lease.
    """
    recording_id = job.recording_id
    owner = f"{worker_id}/{secrets.token_hex(4)}"
    await _claim(table, job, owner, settings)
    try:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_keep, table, recording_id, owner, settings)
                try:
                    yield owner
                finally:
                    group.cancel_scope.cancel()
        except BaseExceptionGroup as errors:
            raise first_error(errors) from None
    except BaseException:
        await release_lease(table, recording_id, owner)
        raise


async def _claim(table: Table, job: JobMessage, owner: str, settings: Settings) -> None:
    """Claim the lease for ``owner`` (unless the row is already DONE for this call end)."""
    with stage("claim_lease"):
        try:
            await table.claim_lease(
                job.recording_id,
                owner,
                settings.lease_seconds,
                unless_done_call_end=None if job.reprocess else job.call_end_seconds,
                call_end_tolerance=CALL_END_TOLERANCE_SECONDS,
                requested_call_end=job.call_end_seconds,
            )
        except anyio.get_cancelled_exc_class():
            # The write may have landed before the cancellation reached us; releasing a lease
            # we do not hold is a no-op, so give it back either way.
            await release_lease(table, job.recording_id, owner)
            raise


async def _keep(table: Table, recording_id: str, owner: str, settings: Settings) -> None:
    """Renew the lease until cancelled; raises :class:`LeaseHeld` when it was taken over."""
    # A lease lives VISIBILITY_TIMEOUT and is renewed every third of it: it survives two
    # failed renewals (logged), but not a takeover.
    while True:
        await anyio.sleep(settings.heartbeat_interval)
        try:
            await table.renew_lease(recording_id, owner, settings.lease_seconds)
        except LeaseHeld:
            raise
        except JobError as error:
            log.warning("lease_renew_failed", error=error.message, reason=error.reason)


async def release_lease(table: Table, recording_id: str, owner: str) -> None:
    """Give a lease up, shielded from cancellation and bounded in time; never raises."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(LEASE_RELEASE_TIMEOUT_SECONDS):
        try:
            await table.release_lease(recording_id, owner)
        except WorkerError as error:
            log.warning("lease_release_failed", error=error.message)
