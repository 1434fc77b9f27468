"""Metrics (Prometheus), health state and logging set-up (SPEC §8).

Metric objects are module-level singletons in one registry, so every module records into the
same place and the names are defined exactly once. Labels are low-cardinality by design:
never a recording id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
    "Wall time of each job stage (read_row, download, merge, upload, update_row, ...).",
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
    "Media seconds merged per wall-clock second of the merge stage (higher is faster).",
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
