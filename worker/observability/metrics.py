"""The metric definitions (SPEC §8): one registry, every metric named once, and the helpers
that record a finished job, a merge and the job slots.

Metric objects are module-level singletons in one registry, so every module records into the
same place and the names are defined exactly once. Labels are low-cardinality by design:
never a recording id. The end-to-end latency histograms (issue 17) are in
:mod:`worker.observability.slo`, on the same registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

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
SYNC_DRIFT_OUTCOMES = Counter(
    "komorebi_sync_drift_total",
    "Drift measurements of measured placements, by outcome: applied, none (measured: no "
    "drift), too_few (no stretch but the call end's was confident: the drift is unknown and "
    "none is applied), inconsistent, implausible (refused), short (the overlap is too short).",
    ["outcome"],
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

# Every outcome exists from the first scrape (at 0), so rate() ratios and "increase > 0"
# alerts work before the first job of each kind.
for _outcome in OUTCOMES:
    JOBS.labels(outcome=_outcome)
    JOB_DURATION.labels(outcome=_outcome)

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
