"""Metrics (Prometheus), health state, the HTTP endpoints and logging set-up (SPEC §8).

Metric objects are module-level singletons in one registry, so every module records into the
same place and the names are defined exactly once. Labels are low-cardinality by design:
never a recording id.

One small HTTP server (:func:`serve_http`, aiohttp inside the anyio loop) serves
``/metrics``, ``/healthz`` and ``/readyz`` on ``METRICS_PORT``. Logs are structlog JSON lines
(:func:`configure_logging`); :func:`job_context` and :func:`stage` bind the per-job context and
time each stage; :func:`worker.redaction.redact` keeps credentials and presigned URLs out of every
log line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, TextIO

import anyio
import anyio.abc
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

from worker.limits import SHUTDOWN
from worker.redaction import redact, redact_value

if TYPE_CHECKING:  # aiohttp is imported by the two functions that serve HTTP (start-up time:
    # `komorebi-worker merge` and every module that counts a metric never serve it)
    from aiohttp import web

# `_created` series (one per counter/histogram child) would be scraped as extra gauges in the
# text format and carry nothing an operator uses; the process start time covers resets.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

# Jobs run from seconds (short clips) to hours (a full shift recorded): buckets span both.
DURATION_BUCKETS = (
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1200,
    1800,
    3600,
    7200,
    14400,
    28800,
)
# End-to-end latency as the customer feels it (issue 17): from the message's send (the call
# end) to a worker's receive, and to the row being DONE. Seconds (an idle fleet) to hours (a
# backlog, retries while the Connect recording is late). SLO_SECONDS is one of the bounds, so
# "DONE within 30 minutes" is read exactly from the buckets (infra/prometheus/alerts.yml).
SLO_SECONDS = 1800
E2E_BUCKETS = (
    0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1200,
    SLO_SECONDS, 2700, 3600, 7200, 14400, 21600,
)  # fmt: skip
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200)
SPEED_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)

JOBS = Counter(
    "komorebi_jobs_total",
    "Jobs finished, by outcome (success, retry, dead_letter, duplicate, released).",
    ["outcome"],
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "komorebi_job_duration_seconds",
    "Wall time of a job from receipt to acknowledgement, by outcome.",
    ["outcome"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
STAGE_DURATION = Histogram(
    "komorebi_stage_duration_seconds",
    "Wall time of each successfully completed job stage (read_row, download, merge, ...).",
    ["stage"],
    buckets=STAGE_BUCKETS,
    registry=REGISTRY,
)
MEDIA_SECONDS = Counter(
    "komorebi_media_processed_seconds_total",
    "Seconds of recording merged successfully.",
    registry=REGISTRY,
)
PROCESSING_SPEED = Histogram(
    "komorebi_processing_speed_ratio",
    "Media seconds merged per wall-clock second of the ffmpeg merge pass (higher is faster).",
    buckets=SPEED_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "komorebi_queue_wait_seconds",
    "Receive time minus the message's SentTimestamp, on every receive; delivery=first for "
    "the first receive, repeat for a retry (SQS keeps SentTimestamp, so it includes the backoff).",
    ["delivery"],
    buckets=E2E_BUCKETS,
    registry=REGISTRY,
)
MESSAGE_TO_DONE = Histogram(
    "komorebi_message_to_done_seconds",
    "Row DONE time minus the message's first send (SentTimestamp): every retry included.",
    buckets=E2E_BUCKETS,
    registry=REGISTRY,
)
JOBS_IN_FLIGHT = Gauge(
    "komorebi_jobs_in_flight", "Jobs being processed right now.", registry=REGISTRY
)
FREE_SLOTS = Gauge("komorebi_free_slots", "Job slots free to take new messages.", registry=REGISTRY)
WORKER_CONCURRENCY = Gauge(
    "komorebi_worker_concurrency", "Configured job slots (WORKER_CONCURRENCY).", registry=REGISTRY
)
BYTES_TRANSFERRED = Counter(
    "komorebi_s3_transferred_bytes_total",
    "Bytes moved to or from S3, by direction (download, upload).",
    ["direction"],
    registry=REGISTRY,
)
VISIBILITY_EXTENSIONS = Counter(
    "komorebi_visibility_extensions_total",
    "Heartbeat extensions of a message's visibility timeout.",
    registry=REGISTRY,
)
RETRIES = Counter(
    "komorebi_retries_total",
    "Messages returned to the queue for a later retry, by reason.",
    ["reason"],
    registry=REGISTRY,
)
DLQ_SENDS = Counter(
    "komorebi_dlq_sends_total",
    "Messages sent to the dead-letter queue, by reason.",
    ["reason"],
    registry=REGISTRY,
)
FFMPEG_FAILURES = Counter(
    "komorebi_ffmpeg_failures_total",
    "ffmpeg/ffprobe runs that failed, by reason.",
    ["reason"],
    registry=REGISTRY,
)
CALL_END_CLAMPS = Counter(
    "komorebi_call_end_clamps_total",
    "Jobs whose callEnd was beyond the recording's end and was clamped.",
    registry=REGISTRY,
)
SYNC_OUTCOMES = Counter(
    "komorebi_sync_total",
    "Call-end syncs by method (waveform: measured from the audio, timestamp: the message's) "
    "and reason (measured, or why the timestamp was kept).",
    ["method", "reason"],
    registry=REGISTRY,
)
SYNC_DRIFT_PPM = Histogram(
    "komorebi_sync_drift_ppm",
    "Clock drift applied to the Connect audio of measured placements (|ppm|, 0: none).",
    buckets=(0.0, 5.0, 10.0, 20.0, 40.0, 60.0, 100.0, 150.0, 200.0, 300.0),
    registry=REGISTRY,
)
CONNECT_SHORT = Counter(
    "komorebi_connect_short_total",
    "Connect recordings found covering less of the call than its end implies, by reason "
    "(early_stop: the Connect audio ends before the call end).",
    ["reason"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "komorebi_duplicates_total",
    "Messages acknowledged without work because the recording was already done.",
    registry=REGISTRY,
)
LAST_POLL = Gauge(
    "komorebi_last_successful_poll_timestamp_seconds",
    "Unix time of the last successful SQS receive call.",
    registry=REGISTRY,
)
TASK_PROTECTION = Gauge(
    "komorebi_task_protection_enabled",
    "1 while ECS scale-in protection is on for this task.",
    registry=REGISTRY,
)
READY = Gauge(
    "komorebi_worker_ready",
    "1 while the worker is ready (AWS clients created, queue reachable, not shutting down).",
    registry=REGISTRY,
)

# Outcomes a job can end with (the `outcome` label of JOBS and JOB_DURATION).
OUTCOME_SUCCESS = "success"
OUTCOME_RETRY = "retry"
OUTCOME_DEAD_LETTER = "dead_letter"
OUTCOME_DUPLICATE = "duplicate"
OUTCOME_RELEASED = "released"
OUTCOMES = (
    OUTCOME_SUCCESS,
    OUTCOME_RETRY,
    OUTCOME_DEAD_LETTER,
    OUTCOME_DUPLICATE,
    OUTCOME_RELEASED,
)
Outcome = Literal["success", "retry", "dead_letter", "duplicate", "released"]

# The `delivery` label of QUEUE_WAIT: the message's first receive, or a later one.
DELIVERY_FIRST = "first"
DELIVERY_REPEAT = "repeat"

# Every outcome exists from the first scrape (at 0), so rate() ratios and "increase > 0"
# alerts work before the first job of each kind.
for _outcome in OUTCOMES:
    JOBS.labels(outcome=_outcome)
    JOB_DURATION.labels(outcome=_outcome)
for _delivery in (DELIVERY_FIRST, DELIVERY_REPEAT):
    QUEUE_WAIT.labels(delivery=_delivery)


# --- recording helpers -----------------------------------------------------------------------


def record_job(outcome: Outcome, duration_seconds: float, *, reason: str | None = None) -> None:
    """Count one finished job and its wall time; the one call the consumer makes per message.

    ``retry`` also counts ``komorebi_retries_total{reason}``, ``dead_letter`` counts
    ``komorebi_dlq_sends_total{reason}`` and ``duplicate`` counts
    ``komorebi_duplicates_total``, so those counters never disagree with the outcome counts.
    ``reason`` is the error's low-cardinality ``reason`` code (never an id or a message).
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown job outcome {outcome!r}")
    JOBS.labels(outcome=outcome).inc()
    JOB_DURATION.labels(outcome=outcome).observe(max(0.0, duration_seconds))
    if outcome == OUTCOME_RETRY:
        RETRIES.labels(reason=reason or "unknown").inc()
    elif outcome == OUTCOME_DEAD_LETTER:
        DLQ_SENDS.labels(reason=reason or "unknown").inc()
    elif outcome == OUTCOME_DUPLICATE:
        DUPLICATES.inc()


def seconds_since_sent(sent_timestamp_ms: int | None, now: float) -> float | None:
    """``now`` (Unix seconds) minus SQS's ``SentTimestamp`` (Unix ms); None without one.

    Never negative: SQS stamps with its clock, the task reads its own (both NTP-synced, but a
    few ms apart), and a histogram cannot take a negative observation.
    """
    if sent_timestamp_ms is None:
        return None
    return max(0.0, now - sent_timestamp_ms / 1000.0)


def record_receive(sent_timestamp_ms: int | None, receive_count: int, now: float) -> None:
    """Observe one received message's queue wait (``komorebi_queue_wait_seconds``).

    Called by the consumer for every message a receive returns, with the wall time of that
    receive. ``receive_count`` > 1 is a ``repeat`` delivery (a retry, a released or lost
    delivery): its wait counts from the first send, so it includes the backoff.
    """
    waited = seconds_since_sent(sent_timestamp_ms, now)
    if waited is None:
        return
    delivery = DELIVERY_FIRST if receive_count <= 1 else DELIVERY_REPEAT
    QUEUE_WAIT.labels(delivery=delivery).observe(waited)


def record_done(sent_timestamp_ms: int | None, now: float) -> None:
    """Observe a message whose recording is DONE (``komorebi_message_to_done_seconds``).

    ``now`` is the wall time the row became DONE. SQS keeps a message's ``SentTimestamp``
    through every receive and visibility change, so this counts from the first send and
    includes every retry; a redriven or re-enqueued message is a new send (docs/operating.md).
    """
    elapsed = seconds_since_sent(sent_timestamp_ms, now)
    if elapsed is not None:
        MESSAGE_TO_DONE.observe(elapsed)


def record_merge(media_seconds: float, wall_seconds: float) -> None:
    """Count merged media seconds and the processing speed: media seconds per wall second of
    the ffmpeg merge pass (``MergeResult.merge_pass_seconds``)."""
    if media_seconds <= 0:
        return
    MEDIA_SECONDS.inc(media_seconds)
    if wall_seconds > 0:
        PROCESSING_SPEED.observe(media_seconds / wall_seconds)


def set_slots(concurrency: int, free: int) -> None:
    """Publish the configured job slots and how many are free right now."""
    WORKER_CONCURRENCY.set(concurrency)
    FREE_SLOTS.set(free)


@contextmanager
def job_in_flight() -> Iterator[None]:
    """Count a job in ``komorebi_jobs_in_flight`` for the duration of the block."""
    JOBS_IN_FLIGHT.inc()
    try:
        yield
    finally:
        JOBS_IN_FLIGHT.dec()


# --- health ----------------------------------------------------------------------------------


class HealthState:
    """Shared by the poll loop and the HTTP server.

    ``/healthz`` (liveness) fails when the poll loop has not iterated for
    ``stall_after_seconds``: a wedged loop is only cured by a restart. Start-up counts as an
    iteration, so a worker that never reaches its loop fails too. ``/readyz`` fails until the
    AWS clients exist and the queue answered, and again while shutting down.
    """

    def __init__(
        self, stall_after_seconds: float = 90.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stall_after_seconds = stall_after_seconds
        self._clock = clock
        self._last_tick = clock()
        self._ready = False
        self._ready_reason = "starting"
        self._loop_stopped = False
        READY.set(0)

    def loop_tick(self) -> None:
        """The poll loop made progress (every iteration, also while waiting for a slot)."""
        self._last_tick = self._clock()

    def poll_succeeded(self) -> None:
        """A ReceiveMessage call succeeded: progress, and the last-poll gauge moves."""
        self.loop_tick()
        LAST_POLL.set(time.time())

    def loop_stopped(self) -> None:
        """The poll loop ended on purpose (shutdown): stop judging liveness by its ticks.

        Without this, a long shutdown grace period would look like a stall and an
        orchestrator could kill the task while it drains its jobs.
        """
        self._loop_stopped = True

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Ready: AWS clients created and queue reachable. Not ready: starting or stopping."""
        self._ready = ready
        self._ready_reason = "ok" if ready else (reason or "not ready")
        READY.set(1 if ready else 0)

    def healthz(self) -> tuple[bool, str]:
        """Liveness: ``(False, why)`` when the poll loop stalled."""
        if self._loop_stopped:
            return True, "ok (poll loop stopped for shutdown)"
        age = self._clock() - self._last_tick
        if age > self.stall_after_seconds:
            return (
                False,
                f"poll loop stalled: no iteration for {age:.0f} s "
                f"(limit {self.stall_after_seconds:.0f} s)",
            )
        return True, "ok"

    def readyz(self) -> tuple[bool, str]:
        """Readiness: ``(False, why)`` before the AWS clients are ready and while stopping."""
        return self._ready, self._ready_reason


# --- HTTP: /metrics, /healthz, /readyz ----------------------------------------------------


def _build_app(health: HealthState) -> web.Application:
    from aiohttp import web

    async def metrics(request: web.Request) -> web.Response:
        # Content negotiation: OpenMetrics for a Prometheus that asks for it, text otherwise.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(REGISTRY), headers={"Content-Type": content_type})

    def check(probe: Callable[[], tuple[bool, str]]) -> Any:
        async def handler(request: web.Request) -> web.Response:
            ok, reason = probe()
            return web.Response(text=f"{reason}\n", status=200 if ok else 503)

        return handler

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", check(health.healthz))
    app.router.add_get("/readyz", check(health.readyz))
    return app


async def serve_http(
    port: int,
    health: HealthState,
    *,
    host: str = "0.0.0.0",  # noqa: S104 - the metrics port must be reachable from the scraper
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` until cancelled.

    Reports the bound port through ``task_status`` (so ``port=0`` picks a free one:
    ``port = await group.start(serve_http, 0, health)``). On cancellation the listener is
    closed inside a shielded scope, so the port is free when this returns.
    """
    from aiohttp import web

    from worker.errors import ConfigError

    # No access log: a scrape every few seconds would drown the job events. A short shutdown
    # timeout: a scrape in progress must not hold up the worker's exit.
    runner = web.AppRunner(
        _build_app(health),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN.http_stop,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            # One clear line (exit 2), not a traceback: usually another process on the port.
            raise ConfigError(
                f"METRICS_PORT {port}: cannot listen on {host}:{port} ({error.strerror or error})"
            ) from None
        bound = runner.addresses[0][1] if runner.addresses else port
        structlog.get_logger(__name__).info("http.listening", host=host, port=bound)
        task_status.started(int(bound))
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


# --- logging ---------------------------------------------------------------------------------

_QUIET_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3", "aiohttp")
_KEY_ORDER = ("timestamp", "level", "logger", "event")


def _expected_errors_one_line(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """An expected error (WorkerError) becomes ``error``/``reason`` fields, not a traceback."""
    exc_info = event_dict.get("exc_info")
    if exc_info is True:
        exc_info = sys.exc_info()
    error = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    # Imported here: worker.errors is tiny, but keeping observability import-light matters.
    from worker.errors import WorkerError

    if isinstance(error, WorkerError):
        event_dict.pop("exc_info", None)
        event_dict.setdefault("error", str(error))
        event_dict.setdefault("reason", error.reason)
        event_dict.setdefault("error_type", type(error).__name__)
    return event_dict


def _redact_event(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    for key, value in event_dict.items():
        if key not in ("timestamp", "level", "logger") and not key.startswith("_"):
            event_dict[key] = redact_value(value, key)
    return event_dict


def _order_keys(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    # Fixed fields first, so lines read well in a terminal tail or CloudWatch.
    ordered = {key: event_dict.pop(key) for key in _KEY_ORDER if key in event_dict}
    ordered.update(event_dict)
    return ordered


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler configure_logging installed, so re-configuring replaces only it."""


def configure_logging(
    level: str = "INFO",
    fmt: Literal["json", "console"] = "json",
    stream: TextIO | None = None,
) -> None:
    """Set up structlog and stdlib logging to write one format to ``stream`` (stderr).

    ``json``: one JSON object per line with ``timestamp`` (ISO 8601, UTC), ``level``,
    ``logger``, ``event`` and every bound context variable. ``console``: structlog's
    ConsoleRenderer (colours on a TTY). Library loggers (botocore, aiobotocore, ...) go
    through the same renderer at WARNING. Every string value is passed through
    :func:`redact`. Safe to call again (tests): it replaces only its own handler.
    """
    target = sys.stderr if stream is None else stream
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}")

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
        _expected_errors_one_line,
        structlog.processors.format_exc_info,
        _redact_event,
    ]
    renderer: structlog.typing.Processor
    if fmt == "console":
        isatty = getattr(target, "isatty", None)
        renderer = structlog.dev.ConsoleRenderer(colors=bool(isatty and isatty()))
    else:
        renderer = structlog.processors.JSONRenderer()

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests (and `dev`) re-configure, and module-level loggers must follow.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _order_keys,
            renderer,
        ],
    )
    handler = _OurHandler(target)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric_level))


@contextmanager
def job_context(*, recording_id: str | None, message_id: str, receive_count: int) -> Iterator[None]:
    """Bind ``recording_id``, ``message_id`` and ``receive_count`` to every log line of a job.

    structlog keeps them in contextvars; each anyio task runs in its own copy of the context,
    so concurrent jobs never see each other's values. ``recording_id`` is left out while it
    is unknown (a message that did not parse).
    """
    bound: dict[str, Any] = {"message_id": message_id, "receive_count": receive_count}
    if recording_id is not None:
        bound["recording_id"] = recording_id
    with structlog.contextvars.bound_contextvars(**bound):
        yield


_stage_log = structlog.get_logger("worker.stage")


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time one job stage: binds ``stage``, logs ``stage.finished`` with ``duration_seconds``.

    Successful stages are observed in ``komorebi_stage_duration_seconds{stage}``. On an
    exception it logs ``stage.failed`` with a redacted one-line ``error`` (and ``reason`` for
    a WorkerError) and re-raises; on cancellation it logs ``stage.cancelled`` and re-raises.
    """
    from worker.errors import WorkerError

    started = time.perf_counter()
    with structlog.contextvars.bound_contextvars(stage=name):
        try:
            yield
        except Exception as error:
            elapsed = time.perf_counter() - started
            fields: dict[str, Any] = {
                "duration_seconds": round(elapsed, 3),
                "error": redact(str(error)) or type(error).__name__,
                "error_type": type(error).__name__,
            }
            if isinstance(error, WorkerError):
                _stage_log.warning("stage.failed", reason=error.reason, **fields)
            else:
                _stage_log.error("stage.failed", **fields)
            raise
        except BaseException:
            # Cancellation (shutdown, timeout) or KeyboardInterrupt: not a failure of the stage.
            elapsed = time.perf_counter() - started
            _stage_log.info("stage.cancelled", duration_seconds=round(elapsed, 3))
            raise
        elapsed = time.perf_counter() - started
        STAGE_DURATION.labels(stage=name).observe(elapsed)
        _stage_log.info("stage.finished", duration_seconds=round(elapsed, 3))
