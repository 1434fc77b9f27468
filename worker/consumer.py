"""The queue consumer: ``komorebi-worker run`` (SPEC §6).

Structure (anyio, structured concurrency)::

    run_service                      signals, /metrics + /healthz + /readyz, AWS clients
    └── Consumer.run                 service task group: task protection renewal
        ├── poll loop                long-polls only while a slot is free, for <= free slots
        └── jobs task group          one task per message:
            └── _handle              job_context, in-flight metrics, task protection
                ├── heartbeat        visibility += VISIBILITY_TIMEOUT every third of it
                └── process_job      the nine steps (worker.job), owns lease + scratch dir

What a job's outcome means for its message is decided in one place, :meth:`Consumer._settle`,
by the error's type (worker.errors):

- success: the job uploaded and updated the row; the message is deleted;
- :class:`TransientError` (and any unexpected exception, which is a bug but must not lose the
  message): the message becomes visible again after an exponential backoff with jitter on its
  ``ApproximateReceiveCount``; SQS's redrive moves it to the DLQ after ``maxReceiveCount``;
- :class:`PermanentError`: sent to the DLQ with attributes saying why, deleted from the queue,
  the row marked FAILED (when the message named a recording).

SQS's 12-hour limit: a message's visibility cannot be extended past 12 h after it was
received. Each job therefore runs under a deadline of 12 h minus :data:`DEADLINE_MARGIN_SECONDS`
from its receipt; the heartbeat never asks for visibility beyond the limit. A job that reaches
the deadline is cancelled (ffmpeg killed, lease released, scratch removed) and dead-lettered
as :class:`JobTooLong` (permanent, reason ``max_duration``): a retry would meet the same limit
on the same media, so retrying would only burn ``maxReceiveCount`` x 12 hours.

Stopping (SIGTERM/SIGINT): the first signal stops polling at once and marks the worker not
ready; in-flight jobs get ``SHUTDOWN_GRACE_SECONDS`` to finish. Jobs still running then are
cancelled: their ffmpeg is killed by the media runner's cancel scope, their lease is released
and their message made visible again (visibility 0) in shielded, time-bounded clean-ups; the
process exits 0. A second signal cancels the in-flight jobs immediately (same clean-ups,
bounded to a few seconds) and exits with 128 + signal number. ``os._exit`` is deliberately not
used: ffmpeg runs in its own session and would survive us.

The long poll in progress at the first signal needs care: SQS keeps delivering to a long poll
whose connection was dropped, so cancelling it can hide messages for a whole visibility
timeout (aws/aws-sdk-java-v2#1395, aws/aws-sdk-go-v2#2068; moto behaves the same). When no job
is in flight it is cancelled at once (exit is immediate; the risk is limited to a message that
arrives within the poll's remaining seconds). With jobs in flight, polls are started with a
wait of at most half the grace period, and the one in progress is left to finish: whatever it
returns is given back at once, and it is over before the grace period ends, so the messages
of cancelled jobs, given back after it, are visible at once. A second signal cancels it too.
"""

from __future__ import annotations

import functools
import math
import random
import signal
import time

import anyio
import anyio.abc
import structlog

from worker.aws import AwsClients, open_clients, translated
from worker.config import SQS_MAX_VISIBILITY_SECONDS, Settings
from worker.errors import ConfigError, JobError, PermanentError, TransientError
from worker.job import (
    JobDeps,
    JobResult,
    first_error,
    new_worker_id,
    process_job,
    sweep_stale_scratch,
)
from worker.messages import JobMessage, parse_message, recording_id_of
from worker.observability import (
    VISIBILITY_EXTENSIONS,
    HealthState,
    configure_logging,
    job_context,
    job_in_flight,
    record_job,
    redact,
    serve_http,
    set_slots,
)
from worker.protection import TaskProtector
from worker.queue import JobQueue, ReceiptHandleInvalid, ReceivedMessage
from worker.recordings import RecordingTable
from worker.storage import ObjectStore

log = structlog.get_logger(__name__)

MAX_BATCH = 10
LONG_POLL_SECONDS = 20
# How long a receive may run past its long-poll wait before the loop gives up on it.
RECEIVE_OVERRUN_SECONDS = 15.0
# While every slot is busy the loop still wakes this often, so /healthz sees it alive.
IDLE_TICK_SECONDS = 5.0
# A job is stopped this long before SQS's 12-hour visibility limit, leaving time to
# dead-letter it while its message is still ours.
DEADLINE_MARGIN_SECONDS = 120.0
# Visibility asked for never reaches the 12-hour limit exactly (clock skew with SQS).
VISIBILITY_LIMIT_MARGIN_SECONDS = 5.0
# Upper bounds of the shielded clean-ups (a few AWS calls each); past them the message comes
# back by itself when its visibility runs out, and the lease expires. After the shutdown grace
# (100 s by default) Fargate kills at 120 s: kill ffmpeg (3 s) + release the lease (5 s) +
# visibility 0 (5 s) + task protection off (3 s) + HTTP server (2 s) fit in the 20 s left.
RELEASE_TIMEOUT_SECONDS = 5.0
SETTLE_TIMEOUT_SECONDS = 20.0
# Back-off of a failing ReceiveMessage (queue unreachable, throttled).
POLL_RETRY_MAX_SECONDS = 30.0
# Exponent cap of the retry backoff (2**30 x base is far beyond any max anyway).
_MAX_EXPONENT = 30


class JobTooLong(PermanentError):
    """The job reached SQS's 12-hour visibility limit (see the module docstring)."""

    reason = "max_duration"


def backoff_seconds(
    receive_count: int, base: float, maximum: float, rng: random.Random | None = None
) -> int:
    """Visibility delay before a retry: ``min(max, base * 2**(n-1))`` x jitter in [0.5, 1].

    ``n`` is the message's ``ApproximateReceiveCount``. Jitter spreads retries of messages that
    failed together (an outage) so they do not come back as one burst. At least 1 s, at most
    SQS's 12-hour limit.
    """
    exponent = max(0, min(_MAX_EXPONENT, receive_count - 1))
    delay = min(maximum, base * float(2**exponent))
    jitter = (rng or _RNG).uniform(0.5, 1.0)
    return max(1, min(SQS_MAX_VISIBILITY_SECONDS, math.ceil(delay * jitter)))


_RNG = random.Random()  # noqa: S311 - jitter, not cryptography


class Consumer:
    """Polls the job queue and runs up to ``WORKER_CONCURRENCY`` jobs at once (SPEC §6)."""

    def __init__(
        self,
        settings: Settings,
        clients: AwsClients,
        health: HealthState,
        protector: TaskProtector,
        *,
        worker_id: str | None = None,
        poll_wait_seconds: int = LONG_POLL_SECONDS,
        max_job_seconds: float | None = None,
    ) -> None:
        """Wire the consumer; nothing touches the network until :meth:`run`.

        ``poll_wait_seconds`` (long-poll length) and ``max_job_seconds`` (the 12-hour cap) are
        only changed by tests.
        """
        if not settings.queue_url:
            raise ConfigError("QUEUE_URL is required to run the worker")
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.queue = JobQueue(clients.sqs, settings.queue_url, settings.dlq_url)
        self.table = RecordingTable(clients.dynamodb, settings.table_name)
        self.deps = JobDeps(
            settings=settings,
            table=self.table,
            store=ObjectStore(
                clients.s3,
                part_size=settings.s3_part_size_bytes,
                max_concurrency=settings.s3_max_concurrency,
                scratch_max_bytes=settings.scratch_max_bytes,
            ),
            worker_id=self.worker_id,
        )
        self._sqs = clients.sqs
        self._health = health
        self._protector = protector
        self._poll_wait = max(0, min(LONG_POLL_SECONDS, poll_wait_seconds))
        self._max_job_seconds = (
            max_job_seconds
            if max_job_seconds is not None
            else SQS_MAX_VISIBILITY_SECONDS - DEADLINE_MARGIN_SECONDS
        )
        self._concurrency = settings.worker_concurrency
        self._in_flight = 0
        self._stopping = False
        self.forced = False
        self._receive_scope: anyio.CancelScope | None = None
        # Start-up checks in progress: a stop cancels them at once (nothing is in flight yet).
        self._ready_scope: anyio.CancelScope | None = None
        self._stop_deadline = math.inf
        self._service_scope: anyio.CancelScope | None = None
        self._changed: anyio.Event | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Jobs running right now."""
        return self._in_flight

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stopping

    async def run(self, *, once: bool = False) -> None:
        """Poll and process until :meth:`request_stop` (or, with ``once``, until idle).

        ``once``: return when a receive comes back empty and no job is in flight.
        """
        self._changed = anyio.Event()
        set_slots(self._concurrency, self._concurrency)
        try:
            async with anyio.create_task_group() as service:
                self._service_scope = service.cancel_scope
                service.start_soon(self._protector.run)
                if await self._become_ready():
                    async with anyio.create_task_group() as jobs:
                        await self._poll(jobs, once=once)
                        await self._drain(jobs.cancel_scope)
                service.cancel_scope.cancel()
        except BaseExceptionGroup as errors:
            raise first_error(errors) from None
        finally:
            self._health.set_ready(False, "stopped")
            log.info("worker.stopped", forced=self.forced)

    def request_stop(self) -> None:
        """Graceful stop: no more polls; in-flight jobs get SHUTDOWN_GRACE_SECONDS.

        A long poll in progress is cancelled at once only when no job is in flight. With jobs
        in flight it is left to finish (it was started with a wait of at most half the grace
        period, see :meth:`_poll_wait_seconds`) and whatever it returns is given back at once:
        SQS still delivers messages to an abandoned long poll, and such an orphan would
        swallow the messages our cancelled jobs give back (they would stay invisible for the
        queue's visibility timeout instead of being visible at once).
        """
        if self._stopping:
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_seconds
        self._stop_deadline = anyio.current_time() + grace
        self._health.set_ready(False, "stopping")
        self._health.loop_stopped()
        log.info("worker.stopping", in_flight=self._in_flight, grace_seconds=grace)
        if self._ready_scope is not None:
            self._ready_scope.cancel()
        self._end_receive()
        self._notify()

    def _end_receive(self) -> None:
        """While stopping: cancel the receive in progress if nothing of ours is in flight;
        otherwise let it finish, but never past the end of the grace period."""
        scope = self._receive_scope
        if scope is None or not self._stopping:
            return
        if self._in_flight == 0 or self.forced:
            scope.cancel()
        else:
            scope.deadline = min(scope.deadline, self._stop_deadline)

    def force_stop(self) -> None:
        """Immediate stop: cancel in-flight jobs now (their clean-ups still run, bounded)."""
        self.forced = True
        self.request_stop()
        self._end_receive()
        log.warning("worker.stopping_now", in_flight=self._in_flight)
        if self._service_scope is not None:
            self._service_scope.cancel()

    def _notify(self) -> None:
        # Wake whoever waits for a slot or for the jobs to drain (they re-check their
        # condition); a fresh event for the next wait, so no wake-up is ever lost.
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()

    async def _wait_for_change(self, timeout: float) -> None:  # noqa: ASYNC109
        event = self._changed
        if event is None:
            return
        with anyio.move_on_after(timeout):
            await event.wait()

    async def _become_ready(self) -> bool:
        """Check the queue and resolve the DLQ; retry while AWS is unreachable.

        False when a stop was requested before the worker became ready. A queue without a
        DLQ (no DLQ_URL, no RedrivePolicy) is a configuration error and raises.
        """
        delay = 1.0
        while not self._stopping:
            self._health.loop_tick()
            try:
                with anyio.CancelScope() as self._ready_scope:
                    with translated():
                        await self._sqs.get_queue_attributes(
                            QueueUrl=self.queue.queue_url, AttributeNames=["QueueArn"]
                        )
                    await self.queue.resolve_dlq_url()
                if self._ready_scope.cancelled_caught:
                    return False
            except TransientError as error:
                self._health.set_ready(False, error.message)
                log.warning("worker.not_ready", error=error.message, retry_in_seconds=delay)
                await self._wait_for_change(delay)
                delay = min(POLL_RETRY_MAX_SECONDS, delay * 2)
                continue
            self._health.set_ready(True)
            log.info(
                "worker.ready",
                worker_id=self.worker_id,
                concurrency=self._concurrency,
                visibility_timeout=self.settings.visibility_timeout,
            )
            return True
        return False

    # --- polling -----------------------------------------------------------------------------

    def _poll_wait_seconds(self) -> int:
        """Long-poll length: 20 s while idle; with jobs in flight at most half the grace
        period, so that a poll running when SIGTERM comes ends well within the grace (see
        :meth:`request_stop`)."""
        if self._in_flight == 0:
            return self._poll_wait
        return max(0, min(self._poll_wait, int(self.settings.shutdown_grace_seconds / 2)))

    async def _poll(self, jobs: anyio.abc.TaskGroup, *, once: bool) -> None:
        """The poll loop: receive only while a slot is free, at most the free slots."""
        failures = 0
        while not self._stopping:
            self._health.loop_tick()
            free = self._concurrency - self._in_flight
            set_slots(self._concurrency, free)
            if free <= 0:
                await self._wait_for_change(IDLE_TICK_SECONDS)
                continue
            wait = self._poll_wait_seconds()
            messages: list[ReceivedMessage] = []
            try:
                with anyio.CancelScope() as self._receive_scope:
                    # A black-holed request would otherwise block the loop for the SDK's read
                    # timeout times its attempts, and /healthz would restart a busy task.
                    with anyio.fail_after(wait + RECEIVE_OVERRUN_SECONDS):
                        messages = await self.queue.receive(
                            min(free, MAX_BATCH),
                            wait_seconds=wait,
                            visibility_timeout=self.settings.visibility_timeout,
                        )
                failures = 0
                self._health.poll_succeeded()
            except (JobError, TimeoutError) as error:
                failures += 1
                delay = min(POLL_RETRY_MAX_SECONDS, 2.0 ** min(failures, 5))
                detail = error.message if isinstance(error, JobError) else "receive timed out"
                log.warning("poll.failed", error=detail, retry_in_seconds=delay)
                if not self._stopping:
                    await self._wait_for_change(delay)
            finally:
                self._receive_scope = None
            received_at = time.monotonic()
            if self._stopping:
                # Received while stopping: not ours to start; visible again at once.
                await self._give_back(messages)
                return
            for message in messages:
                # Counted here, not in the task: the next iteration must see the slot taken.
                self._in_flight += 1
                jobs.start_soon(self._handle, message, received_at)
            set_slots(self._concurrency, self._concurrency - self._in_flight)
            if once and not messages and self._in_flight == 0:
                return
            if not messages and wait == 0:
                # Short polls (tiny grace period): do not hammer the queue.
                await self._wait_for_change(1.0)

    async def _give_back(self, messages: list[ReceivedMessage]) -> None:
        """Make messages we will not process visible again at once (shielded, bounded)."""
        if not messages:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(RELEASE_TIMEOUT_SECONDS):
            for message in messages:
                try:
                    await self.queue.change_visibility(message, 0)
                except JobError as error:
                    log.warning("message.release_failed", error=error.message)
                record_job("released", 0.0)
        log.info("poll.released_on_stop", messages=len(messages))

    async def _drain(self, jobs_scope: anyio.CancelScope) -> None:
        """After polling stopped: let jobs finish within the grace period, then cancel them."""
        if self._in_flight == 0:
            return
        log.info(
            "worker.draining",
            in_flight=self._in_flight,
            grace_seconds=self.settings.shutdown_grace_seconds,
        )
        with anyio.move_on_after(max(0.0, self._stop_deadline - anyio.current_time())):
            while self._in_flight > 0:
                await self._wait_for_change(IDLE_TICK_SECONDS)
        if self._in_flight > 0:
            log.warning("worker.grace_expired", in_flight=self._in_flight)
            jobs_scope.cancel()

    # --- one message -------------------------------------------------------------------------

    async def _handle(self, message: ReceivedMessage, received_at: float) -> None:
        """Run one message to its outcome. Never raises (except cancellation)."""
        try:
            job: JobMessage | None = None
            parse_error: JobError | None = None
            try:
                job = parse_message(message.body)
            except JobError as error:
                parse_error = error
            with (
                job_in_flight(),
                job_context(
                    recording_id=job.recording_id if job else recording_id_of(message.body),
                    message_id=message.message_id,
                    receive_count=message.receive_count,
                ),
            ):
                try:
                    await self._attempt(message, job, parse_error, received_at)
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._protector.job_finished()
        except Exception as error:
            log.error(
                "job.handler_failed",
                error_type=type(error).__name__,
                error=_one_line(error),
            )
            log.debug("job.handler_failed_traceback", exc_info=error)
        finally:
            self._in_flight -= 1
            set_slots(self._concurrency, self._concurrency - self._in_flight)
            if self._in_flight == 0:
                self._end_receive()  # stopping and nothing left to give back: stop waiting
            self._notify()

    async def _attempt(
        self,
        message: ReceivedMessage,
        job: JobMessage | None,
        parse_error: JobError | None,
        received_at: float,
    ) -> None:
        started = time.monotonic()
        result: JobResult | None = None
        error: BaseException | None = parse_error
        try:
            # Protection on before any work (the agent call is bounded by the protector).
            await self._protector.job_started()
            if job is not None:
                result = await self._run_job(message, job, received_at)
        except anyio.get_cancelled_exc_class():
            # Shutdown (grace expired, or second signal): give the message back now.
            await self._release(message, started)
            raise
        except Exception as exc:  # noqa: BLE001 - classified in _settle, never lost
            error = exc
        with anyio.CancelScope(shield=True), anyio.move_on_after(SETTLE_TIMEOUT_SECONDS) as scope:
            await self._settle(message, job, result, error, started)
        if scope.cancelled_caught:
            log.warning("job.settle_timeout", seconds=SETTLE_TIMEOUT_SECONDS)

    async def _run_job(
        self, message: ReceivedMessage, job: JobMessage, received_at: float
    ) -> JobResult:
        """process_job with the heartbeat beside it, under the 12-hour deadline."""
        deadline = received_at + self._max_job_seconds
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
                f"job did not finish within {self._max_job_seconds:.0f} s of its receipt "
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

    async def _release(self, message: ReceivedMessage, started: float) -> None:
        """Make a cancelled job's message visible again at once (shielded, bounded)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(RELEASE_TIMEOUT_SECONDS):
            try:
                await self.queue.change_visibility(message, 0)
            except JobError as error:
                log.warning("job.release_failed", error=error.message)
        record_job("released", time.monotonic() - started)
        log.info("job.released", duration_seconds=round(time.monotonic() - started, 3))

    # --- the one place that decides ----------------------------------------------------------

    async def _settle(
        self,
        message: ReceivedMessage,
        job: JobMessage | None,
        result: JobResult | None,
        error: BaseException | None,
        started: float,
    ) -> None:
        """Decide the message's fate from the job's result or error type (SPEC §6)."""
        elapsed = time.monotonic() - started
        if error is None and result is not None:
            await self._delete(message)
            if result.duplicate:
                record_job("duplicate", elapsed)
                log.info("job.duplicate", reason="already_done", duration_seconds=_round(elapsed))
            else:
                record_job("success", elapsed)
                log.info(
                    "job.succeeded",
                    output_key=result.output_key,
                    media_duration_seconds=result.media_duration_seconds,
                    duration_seconds=_round(elapsed),
                )
            return
        error = first_error(error) if error is not None else RuntimeError("no result")
        if isinstance(error, PermanentError):
            try:
                await self.queue.dead_letter(message, error)
            except JobError as dlq_error:
                # Not in the DLQ: keep the message and try again later (it will fail the same
                # way and be dead-lettered then).
                log.warning("job.dead_letter_failed", error=dlq_error.message)
                await self._retry(message, dlq_error, elapsed)
                return
            await self._delete(message)
            recording_id = job.recording_id if job else recording_id_of(message.body)
            if recording_id is not None:
                try:
                    await self.table.mark_failed(recording_id, error.message)
                except JobError as mark_error:
                    log.warning("job.mark_failed_failed", error=mark_error.message)
            record_job("dead_letter", elapsed, reason=error.reason)
            log.warning(
                "job.dead_lettered",
                reason=error.reason,
                error_type=type(error).__name__,
                error=error.message,
                duration_seconds=_round(elapsed),
            )
            return
        await self._retry(message, error, elapsed)

    async def _retry(self, message: ReceivedMessage, error: BaseException, elapsed: float) -> None:
        """Transient (or unexpected) failure: visible again after the backoff."""
        delay = backoff_seconds(
            message.receive_count,
            self.settings.retry_backoff_base_seconds,
            self.settings.retry_backoff_max_seconds,
        )
        if isinstance(error, TransientError):
            reason = error.reason
            log.info(
                "job.retry",
                reason=reason,
                error=error.message,
                retry_in_seconds=delay,
                duration_seconds=_round(elapsed),
            )
        else:
            # A bug, not an expected failure: one line with its type; the traceback only at
            # DEBUG, so a crash loop cannot flood the logs.
            reason = "unexpected"
            log.error(
                "job.retry",
                reason=reason,
                error_type=type(error).__name__,
                error=_one_line(error),
                retry_in_seconds=delay,
                duration_seconds=_round(elapsed),
            )
            log.debug("job.unexpected_traceback", exc_info=error)
        try:
            await self.queue.change_visibility(message, delay)
        except JobError as visibility_error:
            # The message still comes back when its current visibility runs out.
            log.warning("job.backoff_failed", error=visibility_error.message)
        record_job("retry", elapsed, reason=reason)

    async def _delete(self, message: ReceivedMessage) -> None:
        try:
            await self.queue.delete(message)
        except JobError as error:
            # A later delivery finds the row done (or the DLQ copy exists) and is acknowledged
            # then; nothing is lost, at worst a duplicate is counted.
            log.warning("job.delete_failed", error=error.message, reason=error.reason)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return redact(text)[:300]


def _round(seconds: float) -> float:
    return round(seconds, 3)


# --- the service -----------------------------------------------------------------------------


async def run_service(settings: Settings) -> int:
    """``komorebi-worker run``: the consumer with logging, HTTP endpoints, signals.

    Returns 0 after a graceful stop, 128 + signal number after a forced (second-signal) stop.
    """
    configure_logging(settings.log_level, settings.log_format)
    stale = sweep_stale_scratch(settings.scratch_dir)
    if stale:
        log.info("scratch.swept", directories=stale)
    health = HealthState()
    protector = TaskProtector.from_env(settings.protection_minutes)
    signals = _SignalState()
    try:
        async with open_clients(settings) as clients, anyio.create_task_group() as group:
            consumer = Consumer(settings, clients, health, protector)
            await group.start(_watch_signals, consumer, signals)
            serve = functools.partial(serve_http, host=settings.metrics_host)
            await group.start(serve, settings.metrics_port, health)
            log.info(
                "worker.starting",
                worker_id=consumer.worker_id,
                concurrency=settings.worker_concurrency,
                metrics_port=settings.metrics_port,
            )
            await consumer.run()
            group.cancel_scope.cancel()
    except BaseExceptionGroup as errors:
        raise first_error(errors) from None
    if consumer.forced:
        return 128 + (signals.last or signal.SIGTERM)
    return 0


class _SignalState:
    last: int | None = None


async def _watch_signals(
    consumer: Consumer,
    state: _SignalState,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """First SIGTERM/SIGINT: graceful stop. Second: stop now."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        task_status.started()
        async for signum in received:
            state.last = int(signum)
            name = signal.Signals(signum).name
            if not consumer.stopping:
                log.info("signal.received", signal=name, action="graceful_stop")
                consumer.request_stop()
            else:
                log.warning("signal.received", signal=name, action="stop_now")
                consumer.force_stop()
