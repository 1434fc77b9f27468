"""The queue consumer: ``komorebi-worker run`` (SPEC §6).

Structure (anyio, structured concurrency)::

    run_service                      signals (caught from start-up: worker.signals),
    │                                /metrics + /healthz + /readyz, AWS clients,
    │                                the deployment check (worker.deployment)
    └── Consumer.run                 service task group: task protection renewal
        ├── start-up check           the queue answers; its redrive policy; the DLQ
        ├── poll loop                long-polls only while a slot is free, for <= free slots
        └── jobs task group          one task per message: worker.delivery.Delivery.handle
                                     (heartbeat + job, then the outcome: worker.outcome)

Three parts, three classes: :class:`StopState` (the stop state machine and the in-flight
count it depends on), :class:`Consumer` (start-up, the poll loop, draining) and
:class:`worker.delivery.Delivery` (one message's run with its heartbeat, and the executor of
its outcome). What an outcome means for the message is decided in one place, the pure
:func:`worker.outcome.decide`: delete on success, dead-letter a permanent failure (and a
transient one on the last receive the queue's ``maxReceiveCount`` allows, read at start-up),
otherwise make it visible again after a backoff.

Stopping (SIGTERM/SIGINT): the first signal stops polling at once and marks the worker not
ready; in-flight jobs get ``SHUTDOWN_GRACE_SECONDS`` (0 is allowed: give everything back at
once) to finish. Jobs still running then are cancelled: their ffmpeg is killed by the media
runner's cancel scope, their lease is released and their message made visible again
(visibility 0) in shielded, time-bounded clean-ups; the process exits 0. A second signal
cancels the in-flight jobs immediately (same clean-ups, bounded to a few seconds) and exits
with 128 + signal number. ``os._exit`` is deliberately not used: ffmpeg runs in its own
session and would survive us.

Draining (the task's deployment was superseded, worker.deployment): polling stops the same
way, but the jobs in flight finish without a time limit (a later signal still sets the grace
deadline); protection goes off with the last one and the process exits 0.

The long poll in progress at the first signal needs care: SQS keeps delivering to a long poll
whose connection was dropped, so cancelling it would hide the next message for a whole
visibility timeout (aws/aws-sdk-java-v2#1395, aws/aws-sdk-go-v2#2068; moto behaves the same).
So a stop never cancels it (only a second signal does): it is left to finish and whatever it
returns is made visible again at once (ChangeMessageVisibility 0), then the worker exits.
The budget fits Fargate's 120 s stop timeout either way. An idle worker has no grace to spend:
its poll ends within the long-poll wait (20 s) plus ``RECEIVE_OVERRUN_SECONDS`` (its own
timeout), about 35 s at worst. A busy worker polls for at most half the grace period
(``SHUTDOWN_GRACE_SECONDS`` 100 -> 20 s, the long poll's maximum), so its poll is over before
the grace ends and before the jobs still running are cancelled; the messages of cancelled
jobs, given back after it, are visible at once; their clean-ups are bounded. Every one of
those bounds is a named part of :data:`worker.limits.SHUTDOWN`, whose ``total(grace)`` is the
sum (119 s with the default grace); ``config`` refuses a grace that would not fit.
"""

from __future__ import annotations

import functools
import math
import signal
import time

import anyio
import anyio.abc
import structlog

from worker import signals as stop_signals
from worker.aws import AwsClients, open_clients
from worker.config import Settings
from worker.delivery import RELEASE_TIMEOUT_SECONDS, Delivery
from worker.deployment import DeploymentWatcher
from worker.errors import ConfigError, JobError, TransientError, first_error
from worker.job import JobDeps, new_worker_id
from worker.limits import SHUTDOWN, SQS_MAX_BATCH, SQS_MAX_WAIT_SECONDS
from worker.observability import (
    HealthState,
    configure_logging,
    record_job,
    record_receive,
    serve_http,
    set_slots,
)
from worker.protection import TaskProtector
from worker.queue import JobQueue, ReceivedMessage
from worker.recordings import RecordingTable
from worker.scratch import sweep_stale_scratch
from worker.storage import ObjectStore

log = structlog.get_logger(__name__)

# How long a receive may run past its long-poll wait before the loop gives up on it.
RECEIVE_OVERRUN_SECONDS = SHUTDOWN.receive_overrun
# While stopping with jobs in flight, a receive in progress may run this long past its wait
# (a short poll's round trip) before it is cancelled, even when the grace period is shorter.
RECEIVE_FINISH_SECONDS = SHUTDOWN.receive_finish
# While every slot is busy the loop still wakes this often, so /healthz sees it alive.
IDLE_TICK_SECONDS = 5.0
# Back-off of a failing ReceiveMessage (queue unreachable, throttled).
POLL_RETRY_MAX_SECONDS = 30.0


class StopState:
    """The stop state machine: running -> stopping (graceful) -> forced (second signal).

    It also keeps the in-flight count, because what a stop does depends on it: with jobs in
    flight the receive in progress must end within the grace period (see the module
    docstring). Waiters (a free slot, the drain) wait for :meth:`notify`.
    """

    def __init__(self, health: HealthState, grace_seconds: float) -> None:
        self._health = health
        self.grace_seconds = grace_seconds
        self.stopping = False
        # A signal asked for the stop (a second one forces it); a superseded deployment
        # (request_drain) stops polling too, without a deadline.
        self.signalled = False
        self.superseded = False
        self.forced = False
        self.in_flight = 0
        # Monotonic (anyio clock) time at which in-flight jobs are cancelled.
        self.deadline = math.inf
        self.receive_scope: anyio.CancelScope | None = None
        self._receive_ends = math.inf
        # Start-up checks in progress: a stop cancels them at once (nothing is in flight yet).
        self.ready_scope: anyio.CancelScope | None = None
        self.service_scope: anyio.CancelScope | None = None
        self._changed: anyio.Event | None = None

    def start(self) -> None:
        """Called inside the event loop before anything waits on :meth:`wait_for_change`."""
        self._changed = anyio.Event()

    def request_stop(self) -> None:
        """Graceful stop: no more polls; in-flight jobs get the grace period (also when a
        deployment drain is already under way: the signal's budget is what ECS allows)."""
        if self.signalled:
            return
        self.signalled = True
        self.deadline = min(self.deadline, anyio.current_time() + self.grace_seconds)
        log.info("worker.stopping", in_flight=self.in_flight, grace_seconds=self.grace_seconds)
        self._stop_polling("stopping")

    def request_drain(self) -> None:
        """This task's deployment was superseded (worker.deployment): no more polls, the jobs
        in flight finish without a time limit (they would have been run anyway; a signal
        still bounds them), then the worker exits 0 and ECS starts a current task."""
        if self.stopping:
            return
        self.superseded = True
        log.info("worker.draining_superseded", in_flight=self.in_flight)
        self._stop_polling("superseded")

    def _stop_polling(self, reason: str) -> None:
        self.stopping = True
        self._health.set_ready(False, reason)
        self._health.loop_stopped()
        if self.ready_scope is not None:
            self.ready_scope.cancel()
        self.end_receive()
        self.notify()

    def force_stop(self) -> None:
        """Immediate stop: cancel in-flight jobs now (their clean-ups still run, bounded)."""
        self.forced = True
        self.request_stop()
        self.end_receive()
        log.warning("worker.stopping_now", in_flight=self.in_flight)
        if self.service_scope is not None:
            self.service_scope.cancel()

    def receiving(self, scope: anyio.CancelScope | None, wait_seconds: float = 0.0) -> None:
        """The poll loop entered (``scope``) or left (None) a receive of ``wait_seconds``."""
        self.receive_scope = scope
        self._receive_ends = anyio.current_time() + wait_seconds if scope else math.inf

    def end_receive(self) -> None:
        """While stopping: let the receive in progress finish, never cancel it (see the module
        docstring); a forced stop cancels it. With jobs in flight it must still end by the
        end of the grace period (or right after its own wait), so the messages of jobs
        cancelled then are given back after it; an idle worker's receive is bounded by its
        own timeout (wait + ``RECEIVE_OVERRUN_SECONDS``)."""
        scope = self.receive_scope
        if scope is None or not self.stopping:
            return
        if self.forced:
            scope.cancel()
        elif self.in_flight > 0:
            finish = max(self.deadline, self._receive_ends + RECEIVE_FINISH_SECONDS)
            scope.deadline = min(scope.deadline, finish)

    def job_started(self) -> None:
        """Counted by the poll loop, not the task: the next iteration must see the slot."""
        self.in_flight += 1

    def job_finished(self) -> None:
        """A job's task ended (whatever its outcome)."""
        self.in_flight -= 1
        self.notify()

    def notify(self) -> None:
        """Wake whoever waits for a slot or for the jobs to drain (they re-check their
        condition); a fresh event for the next wait, so no wake-up is ever lost."""
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for_change(self, timeout: float) -> None:  # noqa: ASYNC109
        """Until :meth:`notify` or ``timeout`` seconds."""
        event = self._changed
        if event is None:
            return
        with anyio.move_on_after(timeout):
            await event.wait()


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
        poll_wait_seconds: int = SQS_MAX_WAIT_SECONDS,
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
        self.delivery = Delivery(
            settings, self.deps, self.queue, protector, max_job_seconds=max_job_seconds
        )
        self.state = StopState(health, settings.shutdown_grace_seconds)
        self._health = health
        self._protector = protector
        self._poll_wait = max(0, min(SQS_MAX_WAIT_SECONDS, poll_wait_seconds))
        self._concurrency = settings.worker_concurrency

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Jobs running right now."""
        return self.state.in_flight

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self.state.stopping

    @property
    def forced(self) -> bool:
        """True after an immediate (second-signal) stop."""
        return self.state.forced

    def request_stop(self) -> None:
        """Graceful stop (:meth:`StopState.request_stop`)."""
        self.state.request_stop()

    @property
    def signalled(self) -> bool:
        """True once a signal asked for a stop (the next one forces it)."""
        return self.state.signalled

    def request_drain(self) -> None:
        """Superseded deployment: drain and exit (:meth:`StopState.request_drain`)."""
        self.state.request_drain()

    def force_stop(self) -> None:
        """Immediate stop (:meth:`StopState.force_stop`)."""
        self.state.force_stop()

    async def run(self, *, once: bool = False) -> None:
        """Poll and process until :meth:`request_stop` (or, with ``once``, until idle).

        ``once``: return when a receive comes back empty and no job is in flight.
        """
        self.state.start()
        set_slots(self._concurrency, self._concurrency)
        try:
            async with anyio.create_task_group() as service:
                self.state.service_scope = service.cancel_scope
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

    async def _become_ready(self) -> bool:
        """Check the queue, read its redrive policy, resolve the DLQ; retry while AWS is
        unreachable.

        False when a stop was requested before the worker became ready. A queue without a
        DLQ (no DLQ_URL, no RedrivePolicy) or with a malformed RedrivePolicy is a
        configuration error and raises.
        """
        delay = 1.0
        while not self.state.stopping:
            self._health.loop_tick()
            try:
                with anyio.CancelScope() as scope:
                    self.state.ready_scope = scope
                    await self.queue.check()
                if scope.cancelled_caught:
                    return False
            except TransientError as error:
                self._health.set_ready(False, error.message)
                log.warning("worker.not_ready", error=error.message, retry_in_seconds=delay)
                await self.state.wait_for_change(delay)
                delay = min(POLL_RETRY_MAX_SECONDS, delay * 2)
                continue
            finally:
                self.state.ready_scope = None
            self._health.set_ready(True)
            log.info(
                "worker.ready",
                worker_id=self.worker_id,
                concurrency=self._concurrency,
                visibility_timeout=self.settings.visibility_timeout,
                max_receive_count=self.queue.max_receive_count,
            )
            return True
        return False

    # --- polling -----------------------------------------------------------------------------

    def _poll_wait_seconds(self) -> int:
        """Long-poll length: 20 s while idle; with jobs in flight at most half the grace
        period, so that a poll running when SIGTERM comes ends well within the grace (see
        the module docstring)."""
        if self.state.in_flight == 0:
            return self._poll_wait
        return min(self._poll_wait, SHUTDOWN.busy_poll_wait(self.settings.shutdown_grace_seconds))

    async def _poll(self, jobs: anyio.abc.TaskGroup, *, once: bool) -> None:
        """The poll loop: receive only while a slot is free, at most the free slots."""
        failures = 0
        while not self.state.stopping:
            self._health.loop_tick()
            free = self._concurrency - self.state.in_flight
            set_slots(self._concurrency, free)
            if free <= 0:
                await self.state.wait_for_change(IDLE_TICK_SECONDS)
                continue
            wait = self._poll_wait_seconds()
            messages: list[ReceivedMessage] = []
            try:
                messages = await self._receive(min(free, SQS_MAX_BATCH), wait)
                failures = 0
                self._health.poll_succeeded()
            except (JobError, TimeoutError) as error:
                failures += 1
                delay = min(POLL_RETRY_MAX_SECONDS, 2.0 ** min(failures, 5))
                detail = error.message if isinstance(error, JobError) else "receive timed out"
                log.warning("poll.failed", error=detail, retry_in_seconds=delay)
                if not self.state.stopping:
                    await self.state.wait_for_change(delay)
            received_at = time.monotonic()
            received_wall = time.time()
            for message in messages:
                # Every receive, also one given back below: the SLO's queue wait.
                record_receive(message.sent_timestamp_ms, message.receive_count, received_wall)
            if self.state.stopping:
                # Received while stopping: not ours to start; visible again at once.
                await self._give_back(messages)
                return
            for message in messages:
                self.state.job_started()
                jobs.start_soon(self._handle, message, received_at)
            set_slots(self._concurrency, self._concurrency - self.state.in_flight)
            if once and not messages and self.state.in_flight == 0:
                return
            if not messages and wait == 0:
                # Short polls (tiny grace period): do not hammer the queue.
                await self.state.wait_for_change(1.0)

    async def _receive(self, max_messages: int, wait: int) -> list[ReceivedMessage]:
        """One receive; a stop bounds it, a forced one cancels it (StopState.end_receive)."""
        try:
            with anyio.CancelScope() as scope:
                self.state.receiving(scope, wait)
                # A black-holed request would otherwise block the loop for the SDK's read
                # timeout times its attempts, and /healthz would restart a busy task.
                with anyio.fail_after(wait + RECEIVE_OVERRUN_SECONDS):
                    return await self.queue.receive(
                        max_messages,
                        wait_seconds=wait,
                        visibility_timeout=self.settings.visibility_timeout,
                    )
            return []  # cancelled by a stop
        finally:
            self.state.receiving(None)

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
        """After polling stopped: let jobs finish by the deadline, then cancel them. The
        deadline may move while waiting: a SIGTERM during a deployment drain (no deadline)
        sets one."""
        if self.state.in_flight == 0:
            return
        log.info(
            "worker.draining",
            in_flight=self.state.in_flight,
            grace_seconds=None if self.state.superseded else self.settings.shutdown_grace_seconds,
        )
        while self.state.in_flight > 0:
            remaining = self.state.deadline - anyio.current_time()
            if remaining <= 0:
                break
            await self.state.wait_for_change(min(IDLE_TICK_SECONDS, remaining))
        if self.state.in_flight > 0:
            log.warning("worker.grace_expired", in_flight=self.state.in_flight)
            jobs_scope.cancel()

    async def _handle(self, message: ReceivedMessage, received_at: float) -> None:
        try:
            await self.delivery.handle(message, received_at)
        finally:
            self.state.job_finished()
            set_slots(self._concurrency, self._concurrency - self.state.in_flight)


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
    metadata_uri = DeploymentWatcher.metadata_uri()
    signals = _SignalState()
    try:
        async with (
            open_clients(settings, ecs=metadata_uri is not None) as clients,
            anyio.create_task_group() as group,
        ):
            consumer = Consumer(settings, clients, health, protector)
            await group.start(_watch_signals, consumer, signals)
            watcher = DeploymentWatcher(
                metadata_uri,
                clients.ecs,
                settings.deployment_check_seconds,
                lambda _reason: consumer.request_drain(),
            )
            group.start_soon(watcher.run)
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
    """First SIGTERM/SIGINT: graceful stop. Second: stop now.

    Signals caught before this receiver existed (``worker.signals``: from the first moments of
    ``run``, during the imports and start-up) count as if they came now, in order.
    """
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            for signum in stop_signals.PROCESS.take():
                _on_signal(consumer, state, signum, during="start-up")
            task_status.started()
            async for signum in received:
                _on_signal(consumer, state, signum)
    finally:
        # Closing the receiver restored Python's default action (death by the signal): the
        # process is on its way out with exit 0, a late signal must not change that.
        stop_signals.PROCESS.reinstall()


def _on_signal(consumer: Consumer, state: _SignalState, signum: int, during: str = "run") -> None:
    state.last = int(signum)
    name = signal.Signals(signum).name
    if not consumer.signalled:
        log.info("signal.received", signal=name, action="graceful_stop", during=during)
        consumer.request_stop()
    else:
        log.warning("signal.received", signal=name, action="stop_now", during=during)
        consumer.force_stop()
