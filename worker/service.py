"""The ``komorebi-worker run`` process around the :class:`~worker.consumer.Consumer` (SPEC §6).

:func:`run_service` sets up what the consumer runs in: logging, the sweep of scratch
directories left by a dead task, the AWS clients, ``/metrics`` + ``/healthz`` + ``/readyz``,
the deployment check (:mod:`worker.deployment`: a superseded task drains) and the stop
signals. The first SIGTERM/SIGINT stops gracefully, a second one stops now
(:mod:`worker.shutdown`); signals caught during start-up (:mod:`worker.signals`) count as if
they came once the consumer exists.
"""

from __future__ import annotations

import functools
import signal

import anyio
import anyio.abc
import structlog

from worker import signals as stop_signals
from worker.aws import open_clients
from worker.config import Settings
from worker.consumer import Consumer
from worker.deployment import DeploymentWatcher
from worker.errors import first_error
from worker.observability import HealthState, configure_logging, serve_http
from worker.protection import TaskProtector
from worker.scratch import sweep_stale_scratch

log = structlog.get_logger(__name__)


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
