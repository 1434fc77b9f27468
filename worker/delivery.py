"""One message, from receipt to its end: the job beside its heartbeat, then the outcome.

:class:`Delivery` runs one received message (SPEC §6)::

    Delivery.handle                  job_context, in-flight metrics, task protection
    ├── heartbeat                    visibility += VISIBILITY_TIMEOUT every third of it
    ├── process_job                  the nine steps (worker.job), owns lease + scratch dir
    └── then, shielded and bounded:
        decide(...)                  worker.outcome: Delete | DeadLetter | Retry (pure)
        Settler.carry_out            worker.settlement: SQS, the row, metrics, a log line

or, when the job is cancelled (shutdown), :meth:`Delivery.release`: the message visible
again at once, the lease already released by the job, the row back to its earlier status.

Whatever escapes all this (a bug around the job rather than in it) is settled all the same,
unless the outcome was already being carried out: ``decide(escaped(error))`` dead-letters it
as ``unexpected`` (``errorClass`` = the exception's type, row FAILED where the id is known)
and one ``job.handler_failed`` line carries the ids.

SQS's 12-hour limit: a message's visibility cannot be extended past 12 h after it was
received. Each job therefore runs under a deadline of 12 h minus
:data:`DEADLINE_MARGIN_SECONDS` from its receipt; the heartbeat never asks for visibility
beyond the limit. A job that reaches the deadline is cancelled (ffmpeg killed, lease
released, scratch removed) and dead-lettered as :class:`worker.errors.JobTooLong`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
import structlog

from worker.config import SQS_MAX_VISIBILITY_SECONDS, Settings
from worker.errors import JobError, JobTooLong, ReceiptHandleInvalid, describe, first_error
from worker.job import JobDeps, process_job
from worker.limits import SHUTDOWN
from worker.messages import JobMessage, parse_message, recording_id_of
from worker.observability import VISIBILITY_EXTENSIONS, job_context, job_in_flight, record_job
from worker.outcome import JobResult, decide, escaped
from worker.protection import TaskProtector
from worker.queue import JobQueue, ReceivedMessage
from worker.redaction import redact
from worker.settlement import Settler, log_seconds

log = structlog.get_logger(__name__)

# A job is stopped this long before SQS's 12-hour visibility limit, leaving time to
# dead-letter it while its message is still ours.
DEADLINE_MARGIN_SECONDS = 120.0
# Visibility asked for never reaches the 12-hour limit exactly (clock skew with SQS).
VISIBILITY_LIMIT_MARGIN_SECONDS = 5.0
# Upper bound of the shielded give-back (visibility 0); past it the message comes back by
# itself when its visibility runs out. Its place in the stop's 120 s: worker.limits.SHUTDOWN.
RELEASE_TIMEOUT_SECONDS = SHUTDOWN.give_back
# Upper bound of the shielded settling of a finished job (a few AWS calls).
SETTLE_TIMEOUT_SECONDS = SHUTDOWN.settle


@dataclass
class _Progress:
    """How far one message's handling got, for what escapes it: the recording id once known,
    and whether its outcome is being (or was) carried out."""

    recording_id: str | None = None
    settling: bool = False


class Delivery:
    """Runs one received message to its end; shared by all of a consumer's messages."""

    def __init__(
        self,
        settings: Settings,
        deps: JobDeps,
        queue: JobQueue,
        protector: TaskProtector,
        *,
        max_job_seconds: float | None = None,
    ) -> None:
        self.settings = settings
        self.deps = deps
        self.queue = queue
        self.settler = Settler(queue, deps.table, settings)
        self._protector = protector
        self.max_job_seconds = (
            max_job_seconds
            if max_job_seconds is not None
            else SQS_MAX_VISIBILITY_SECONDS - DEADLINE_MARGIN_SECONDS
        )

    async def handle(self, message: ReceivedMessage, received_at: float) -> None:
        """Run one message to its outcome. Never raises (except cancellation).

        Whatever escapes (a bug around the job, not in it) still settles the message, unless
        its outcome was already being carried out: see :meth:`_settle_escaped`.
        """
        progress = _Progress()
        try:
            job: JobMessage | None = None
            parse_error: JobError | None = None
            try:
                job = parse_message(message.body)
            except JobError as error:
                parse_error = error
            recording_id = job.recording_id if job else recording_id_of(message.body)
            progress.recording_id = recording_id
            with (
                job_in_flight(),
                job_context(
                    recording_id=recording_id,
                    message_id=message.message_id,
                    receive_count=message.receive_count,
                ),
            ):
                try:
                    await self._attempt(message, job, parse_error, progress, received_at)
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._protector.job_finished()
        except Exception as error:  # noqa: BLE001 - settled below, never left in flight
            await self._settle_escaped(message, progress, error, time.monotonic() - received_at)

    async def _settle_escaped(
        self, message: ReceivedMessage, progress: _Progress, error: Exception, elapsed: float
    ) -> None:
        """An error escaped the handler: one log line with the ids, then, if the message's
        outcome was not being carried out yet, dead-letter it as ``unexpected`` (row FAILED
        where the id is known). Never settles a message twice, never raises."""
        log.error(
            "job.handler_failed",
            recording_id=progress.recording_id,
            message_id=message.message_id,
            receive_count=message.receive_count,
            error_type=type(error).__name__,
            error=redact(describe(error)),
            settled=progress.settling,
        )
        log.debug("job.handler_failed_traceback", exc_info=error)
        if progress.settling:
            return  # deleted, dead-lettered or given back already (or part-way): not twice
        with anyio.CancelScope(shield=True), anyio.move_on_after(SETTLE_TIMEOUT_SECONDS):
            try:
                decision = decide(
                    escaped(error),
                    message.receive_count,
                    self.queue.max_receive_count,
                    self.settings,
                )
                with job_context(
                    recording_id=progress.recording_id,
                    message_id=message.message_id,
                    receive_count=message.receive_count,
                ):
                    await self.settler.carry_out(decision, message, progress.recording_id, elapsed)
            except Exception as again:  # noqa: BLE001 - the last line: log and leave it to SQS
                log.error(
                    "job.settle_failed",
                    recording_id=progress.recording_id,
                    message_id=message.message_id,
                    error_type=type(again).__name__,
                    error=redact(describe(again)),
                )

    async def _attempt(
        self,
        message: ReceivedMessage,
        job: JobMessage | None,
        parse_error: JobError | None,
        progress: _Progress,
        received_at: float,
    ) -> None:
        started = time.monotonic()
        outcome: JobResult | BaseException = parse_error or RuntimeError("no result")
        try:
            # Protection on before any work (the agent call is bounded by the protector).
            await self._protector.job_started()
            if job is not None:
                outcome = await self._run_job(message, job, received_at)
        except anyio.get_cancelled_exc_class():
            # Shutdown (grace expired, or second signal): give the message back now.
            await self.release(message, started)
            raise
        except Exception as exc:  # noqa: BLE001 - decided below, never lost
            outcome = exc
        decision = decide(
            outcome, message.receive_count, self.queue.max_receive_count, self.settings
        )
        progress.settling = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(SETTLE_TIMEOUT_SECONDS) as scope:
            await self.settler.carry_out(
                decision, message, progress.recording_id, time.monotonic() - started
            )
        if scope.cancelled_caught:
            log.warning("job.settle_timeout", seconds=SETTLE_TIMEOUT_SECONDS)

    async def _run_job(
        self, message: ReceivedMessage, job: JobMessage, received_at: float
    ) -> JobResult:
        """process_job with the heartbeat beside it, under the 12-hour deadline."""
        deadline = received_at + self.max_job_seconds
        result: JobResult | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._heartbeat, message, received_at)
                with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                    result = await process_job(job, self.deps, scratch=self.settings.scratch_dir)
                group.cancel_scope.cancel()
        except BaseExceptionGroup as errors:
            raise first_error(errors) from None
        if result is None:
            raise JobTooLong(
                f"job did not finish within {self.max_job_seconds:.0f} s of its receipt "
                "(SQS's 12-hour visibility limit)"
            )
        return result

    async def _heartbeat(self, message: ReceivedMessage, received_at: float) -> None:
        """Keep the message invisible while its job runs (SPEC §6); never raises.

        The first extension is immediate, so the job's visibility follows VISIBILITY_TIMEOUT
        whatever the queue's default is; then one every VISIBILITY_TIMEOUT/3. Never beyond
        SQS's 12-hour limit.
        """
        timeout = self.settings.visibility_timeout
        while True:
            used = time.monotonic() - received_at
            limit = SQS_MAX_VISIBILITY_SECONDS - used - VISIBILITY_LIMIT_MARGIN_SECONDS
            seconds = int(min(timeout, limit))
            if seconds > 0:
                try:
                    await self.queue.change_visibility(message, seconds)
                    VISIBILITY_EXTENSIONS.inc()
                except ReceiptHandleInvalid as error:
                    # The delivery is no longer ours (visibility lapsed, redelivered): the
                    # lease still stops a second worker; the job finishes and the other
                    # delivery is acknowledged as a duplicate later.
                    log.warning("heartbeat.lost", error=error.message)
                    return
                except JobError as error:
                    log.warning("heartbeat.failed", error=error.message, reason=error.reason)
            await anyio.sleep(self.settings.heartbeat_interval)

    async def release(self, message: ReceivedMessage, started: float) -> None:
        """Make a cancelled job's message visible again at once (shielded, bounded)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(RELEASE_TIMEOUT_SECONDS):
            try:
                await self.queue.change_visibility(message, 0)
            except JobError as error:
                log.warning("job.release_failed", error=error.message)
        record_job("released", time.monotonic() - started)
        log.info("job.released", duration_seconds=log_seconds(time.monotonic() - started))
