"""Metrics (Prometheus), health state, the HTTP endpoints and logging set-up (SPEC §8).

One concept per module; everything a caller uses is re-exported here, so
``from worker.observability import JOBS`` keeps working wherever a metric is counted:

- :mod:`~worker.observability.metrics`: the registry, every metric definition, the job
  outcomes and the helpers that record a job, a merge and the job slots;
- :mod:`~worker.observability.slo`: the end-to-end latency histograms (issue 17);
- :mod:`~worker.observability.health`: :class:`HealthState`, read by ``/healthz``/``/readyz``;
- :mod:`~worker.observability.server`: :func:`serve_http` (aiohttp, imported only when it
  serves);
- :mod:`~worker.observability.logs`: structlog JSON lines (:func:`configure_logging`),
  :func:`job_context` and :func:`stage`; :func:`worker.redaction.redact` keeps credentials and
  presigned URLs out of every log line.
"""

from __future__ import annotations

from worker.observability.health import HealthState
from worker.observability.logs import configure_logging, job_context, stage
from worker.observability.metrics import (
    BYTES_TRANSFERRED,
    CALL_END_CLAMPS,
    CONNECT_SHORT,
    DLQ_SENDS,
    DUPLICATES,
    DURATION_BUCKETS,
    FFMPEG_FAILURES,
    FREE_SLOTS,
    JOB_DURATION,
    JOBS,
    JOBS_IN_FLIGHT,
    LAST_POLL,
    MEDIA_SECONDS,
    OUTCOME_DEAD_LETTER,
    OUTCOME_DUPLICATE,
    OUTCOME_RELEASED,
    OUTCOME_RETRY,
    OUTCOME_SUCCESS,
    OUTCOMES,
    PROCESSING_SPEED,
    READY,
    REGISTRY,
    RETRIES,
    SPEED_BUCKETS,
    STAGE_BUCKETS,
    STAGE_DURATION,
    SYNC_DRIFT_OUTCOMES,
    SYNC_DRIFT_PPM,
    SYNC_OUTCOMES,
    TASK_PROTECTION,
    VISIBILITY_EXTENSIONS,
    WORKER_CONCURRENCY,
    Outcome,
    job_in_flight,
    record_job,
    record_merge,
    set_slots,
)
from worker.observability.server import serve_http
from worker.observability.slo import (
    DELIVERY_FIRST,
    DELIVERY_REPEAT,
    E2E_BUCKETS,
    MESSAGE_TO_DONE,
    QUEUE_WAIT,
    SLO_SECONDS,
    record_done,
    record_receive,
    seconds_since_sent,
)

__all__ = [
    "BYTES_TRANSFERRED",
    "CALL_END_CLAMPS",
    "CONNECT_SHORT",
    "DELIVERY_FIRST",
    "DELIVERY_REPEAT",
    "DLQ_SENDS",
    "DUPLICATES",
    "DURATION_BUCKETS",
    "E2E_BUCKETS",
    "FFMPEG_FAILURES",
    "FREE_SLOTS",
    "JOBS",
    "JOBS_IN_FLIGHT",
    "JOB_DURATION",
    "LAST_POLL",
    "MEDIA_SECONDS",
    "MESSAGE_TO_DONE",
    "OUTCOMES",
    "OUTCOME_DEAD_LETTER",
    "OUTCOME_DUPLICATE",
    "OUTCOME_RELEASED",
    "OUTCOME_RETRY",
    "OUTCOME_SUCCESS",
    "PROCESSING_SPEED",
    "QUEUE_WAIT",
    "READY",
    "REGISTRY",
    "RETRIES",
    "SLO_SECONDS",
    "SPEED_BUCKETS",
    "STAGE_BUCKETS",
    "STAGE_DURATION",
    "SYNC_DRIFT_OUTCOMES",
    "SYNC_DRIFT_PPM",
    "SYNC_OUTCOMES",
    "TASK_PROTECTION",
    "VISIBILITY_EXTENSIONS",
    "WORKER_CONCURRENCY",
    "HealthState",
    "Outcome",
    "configure_logging",
    "job_context",
    "job_in_flight",
    "record_done",
    "record_job",
    "record_merge",
    "record_receive",
    "seconds_since_sent",
    "serve_http",
    "set_slots",
    "stage",
]
