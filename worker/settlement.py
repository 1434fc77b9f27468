"""Carrying out a message's outcome: the executor of :func:`worker.outcome.decide`.

What a finished job means for its message is decided, purely, in :mod:`worker.outcome`:
:class:`~worker.outcome.Delete` on success (or a duplicate), :class:`~worker.outcome.DeadLetter`
for a permanent failure (or a transient one on the message's last receive),
:class:`~worker.outcome.Retry` (visible again after a backoff) otherwise. :class:`Settler` does
it: the SQS calls, the row marked FAILED beside a dead letter, the job metrics
(:func:`worker.observability.record_job`) and one log line per outcome (``job.succeeded``,
``job.duplicate``, ``job.dead_lettered``, ``job.retry``; the CloudWatch alarm's metric filters
match these).

It never raises a :class:`~worker.errors.JobError` and never loses a message: a failed
dead-letter keeps the message for a later retry, a failed delete leaves a duplicate to be
acknowledged later, a failed backoff lets the current visibility run out.
"""

from __future__ import annotations

import time

import structlog

from worker.config import Settings
from worker.errors import JobError, LeaseHeld, describe
from worker.observability import record_done, record_job
from worker.outcome import (
    UNEXPECTED,
    DeadLetter,
    Decision,
    Delete,
    Retry,
    backoff_seconds,
    is_last_receive,
    retry_reason,
)
from worker.protocols import Table
from worker.queue import JobQueue, ReceivedMessage
from worker.redaction import redact

log = structlog.get_logger(__name__)


def log_seconds(seconds: float) -> float:
    """A duration as log lines carry it (milliseconds)."""
    return round(seconds, 3)


def _text(error: BaseException) -> str:
    """One redacted line for a failure while settling: ours say what failed; anything else
    (a bug) also gets its type."""
    if isinstance(error, JobError):
        return error.message
    return redact(f"{type(error).__name__}: {describe(error)}")


class Settler:
    """The executor: carries out a :data:`worker.outcome.Decision` for one message."""

    def __init__(self, queue: JobQueue, table: Table, settings: Settings) -> None:
        self.queue = queue
        self.table = table
        self.settings = settings

    async def carry_out(
        self,
        decision: Decision,
        message: ReceivedMessage,
        recording_id: str | None,
        elapsed: float,
    ) -> None:
        """Act on ``decision``: never raises a :class:`JobError` (each failure is logged and
        what is left is done; the message is never lost)."""
        if isinstance(decision, Delete):
            if not decision.duplicate:
                # The job has just written the row DONE: the end of the SLO's clock.
                record_done(message.sent_timestamp_ms, time.time())
            await self._delete(message)
            self._log_done(decision, elapsed)
        elif isinstance(decision, DeadLetter):
            await self._dead_letter(decision, message, recording_id, elapsed)
        else:
            await self._retry(decision, message, elapsed)

    def _log_done(self, decision: Delete, elapsed: float) -> None:
        if decision.duplicate:
            record_job("duplicate", elapsed)
            log.info("job.duplicate", reason="already_done", duration_seconds=log_seconds(elapsed))
            return
        record_job("success", elapsed)
        log.info(
            "job.succeeded",
            output_key=decision.result.output_key,
            media_duration_seconds=decision.result.media_duration_seconds,
            duration_seconds=log_seconds(elapsed),
        )

    async def _dead_letter(
        self,
        decision: DeadLetter,
        message: ReceivedMessage,
        recording_id: str | None,
        elapsed: float,
    ) -> None:
        error = decision.error
        try:
            await self.queue.dead_letter(message, error)
        except Exception as dlq_error:  # noqa: BLE001 - a bug here must not strand the message
            # Not in the DLQ: keep the message and try again later (it will fail the same way
            # and be dead-lettered then). On the last receive SQS's redrive moves it instead,
            # without our attributes: the row says why all the same.
            log.warning("job.dead_letter_failed", error=_text(dlq_error))
            if is_last_receive(message.receive_count, self.queue.max_receive_count):
                await self._mark_failed(recording_id, decision)
            delay = backoff_seconds(
                message.receive_count,
                self.settings.retry_backoff_base_seconds,
                self.settings.retry_backoff_max_seconds,
            )
            await self._retry(Retry(delay, retry_reason(dlq_error), dlq_error), message, elapsed)
            return
        await self._delete(message)
        await self._mark_failed(recording_id, decision)
        record_job("dead_letter", elapsed, reason=decision.reason)
        log.warning(
            "job.dead_lettered",
            reason=decision.reason,
            detail=decision.detail,
            error_type=error.error_class,
            error=error.message,
            duration_seconds=log_seconds(elapsed),
        )

    async def _mark_failed(self, recording_id: str | None, decision: DeadLetter) -> None:
        if recording_id is None:
            return
        try:
            await self.table.mark_failed(
                recording_id,
                decision.error.message,
                # Gave up waiting for another worker's lease: the row says so all the same.
                beside_live_lease=decision.detail == LeaseHeld.reason,
            )
        except Exception as mark_error:  # noqa: BLE001 - the DLQ copy is the record
            log.warning("job.mark_failed_failed", error=_text(mark_error))

    async def _retry(self, decision: Retry, message: ReceivedMessage, elapsed: float) -> None:
        error = decision.error
        if decision.reason != UNEXPECTED:
            log.info(
                "job.retry",
                reason=decision.reason,
                error=describe(error),
                retry_in_seconds=decision.delay,
                duration_seconds=log_seconds(elapsed),
            )
        else:
            # A bug, not an expected failure: one line with its type; the traceback only at
            # DEBUG, so a crash loop cannot flood the logs.
            log.error(
                "job.retry",
                reason=decision.reason,
                error_type=type(error).__name__,
                error=redact(describe(error)),
                retry_in_seconds=decision.delay,
                duration_seconds=log_seconds(elapsed),
            )
            log.debug("job.unexpected_traceback", exc_info=error)
        try:
            await self.queue.change_visibility(message, decision.delay)
        except Exception as visibility_error:  # noqa: BLE001
            # The message still comes back when its current visibility runs out.
            log.warning("job.backoff_failed", error=_text(visibility_error))
        record_job("retry", elapsed, reason=decision.reason)

    async def _delete(self, message: ReceivedMessage) -> None:
        try:
            await self.queue.delete(message)
        except Exception as error:  # noqa: BLE001
            # A later delivery finds the row done (or the DLQ copy exists) and is acknowledged
            # then; nothing is lost, at worst a duplicate is counted.
            log.warning("job.delete_failed", error=_text(error), reason=retry_reason(error))
