"""Queue, DLQ, buckets and table: their parameters, defined once (SPEC §7 ``provision``).

``infra/template.yaml`` declares the same values; ``tests/test_infra_template.py`` fails when
the two drift apart.
"""

from __future__ import annotations

from typing import Final

# Main job queue. Visibility matches the worker's default VISIBILITY_TIMEOUT; the heartbeat
# extends it while a job runs. Long polling (20 s) is also the queue default.
QUEUE_VISIBILITY_TIMEOUT_SECONDS: Final = 300
QUEUE_MESSAGE_RETENTION_SECONDS: Final = 4 * 24 * 3600
QUEUE_RECEIVE_WAIT_SECONDS: Final = 20
# Transient failures (Connect audio not uploaded yet, throttling) get this many deliveries
# (with exponential backoff between them) before SQS's redrive moves the message to the DLQ.
QUEUE_MAX_RECEIVE_COUNT: Final = 8
# The DLQ keeps messages as long as SQS allows, for investigation and `redrive`.
DLQ_MESSAGE_RETENTION_SECONDS: Final = 14 * 24 * 3600

QUEUE_ATTRIBUTES: Final[dict[str, str]] = {
    "VisibilityTimeout": str(QUEUE_VISIBILITY_TIMEOUT_SECONDS),
    "MessageRetentionPeriod": str(QUEUE_MESSAGE_RETENTION_SECONDS),
    "ReceiveMessageWaitTimeSeconds": str(QUEUE_RECEIVE_WAIT_SECONDS),
    "SqsManagedSseEnabled": "true",
}
DLQ_ATTRIBUTES: Final[dict[str, str]] = {
    "MessageRetentionPeriod": str(DLQ_MESSAGE_RETENTION_SECONDS),
    "SqsManagedSseEnabled": "true",
}

# DynamoDB table (SPEC §4): partition key videoID (S), on-demand billing.
TABLE_PARTITION_KEY: Final = "videoID"
TABLE_BILLING_MODE: Final = "PAY_PER_REQUEST"
