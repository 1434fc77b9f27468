"""The queue consumer: the SQS poll loop of ``komorebi-worker run`` (SPEC §6).

Structure (anyio, structured concurrency)::

    run_service                      worker.service: signals, /metrics + /healthz + /readyz,
    │                                AWS clients, the deployment check (worker.deployment)
    └── Consumer.run                 service task group: task protection renewal
        ├── start-up check           the queue answers; its redrive policy; the DLQ
        ├── poll loop                long-polls only while a slot is free, for <= free slots
        └── jobs task group          one task per message: worker.delivery.Delivery.handle
                                     (heartbeat + job, then the outcome: worker.outcome)

Three parts, three classes: :class:`worker.shutdown.StopState` (the stop state machine and
the in-flight count it depends on), :class:`Consumer` (start-up, the poll loop, draining) and
:class:`worker.delivery.Delivery` (one message's run with its heartbeat, and the executor of
its outcome). What an outcome means for the message is decided in one place, the pure
:func:`worker.outcome.decide`: delete on success, dead-letter a permanent failure (and a
transient one on the last receive the queue's ``maxReceiveCount`` allows, read at start-up),
otherwise make it visible again after a backoff.

A stop (signal) or a drain (superseded deployment) ends polling; how the receive in progress,
the jobs in flight and their messages are then wound down within Fargate's 120 s stop
timeout is :mod:`worker.shutdown`'s docstring.
"""

from __future__ import annotations

import time

import anyio
import anyio.abc
import structlog

from worker.aws import AwsClients
from worker.config import Settings
from worker.delivery import RELEASE_TIMEOUT_SECONDS, Delivery
from worker.errors import ConfigError, JobError, TransientError, first_error
from worker.job import JobDeps, new_worker_id
from worker.limits import SHUTDOWN, SQS_MAX_BATCH, SQS_MAX_WAIT_SECONDS
from worker.observability import HealthState, record_job, record_receive, set_slots
from worker.protection import TaskProtector
from worker.queue import JobQueue, ReceivedMessage
from worker.recordings import RecordingTable
from worker.shutdown import StopState
from worker.storage import ObjectStore

log = structlog.get_logger(__name__)

# How long a receive may run past its long-poll wait before the loop gives up on it.
RECEIVE_OVERRUN_SECONDS = SHUTDOWN.receive_overrun
# While every slot is busy the loop still wakes this often, so /healthz sees it alive.
IDLE_TICK_SECONDS = 5.0
# Back-off of a failing ReceiveMessage (queue unreachable, throttled).
POLL_RETRY_MAX_SECONDS = 30.0


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
        worker.shutdown)."""
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
