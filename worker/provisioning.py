"""Queue, DLQ, buckets and table: their parameters, defined once (SPEC §7 ``provision``).

``infra/template.yaml`` declares the same values; ``tests/unit/test_infra_template.py`` fails when
the two drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import boto3

from worker.config import DEFAULT_VISIBILITY_TIMEOUT, Settings
from worker.queue import SQS_MAX_WAIT_SECONDS, RedrivePolicy

# Main job queue. Visibility matches the worker's default VISIBILITY_TIMEOUT; the heartbeat
# extends it while a job runs. Long polling (20 s) is also the queue default.
QUEUE_VISIBILITY_TIMEOUT_SECONDS: Final = DEFAULT_VISIBILITY_TIMEOUT
QUEUE_MESSAGE_RETENTION_SECONDS: Final = 4 * 24 * 3600
QUEUE_RECEIVE_WAIT_SECONDS: Final = SQS_MAX_WAIT_SECONDS
# Transient failures (Connect audio not uploaded yet, throttling) get this many deliveries
# (with exponential backoff between them); the worker dead-letters the message itself on the
# last one, with the reason (retries_exhausted), before SQS's redrive would move it silently.
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

DEFAULT_QUEUE_NAME: Final = "komorebi-jobs"


@dataclass(frozen=True)
class Provisioned:
    """What ``provision`` created (or found already there)."""

    queue_url: str
    dlq_url: str
    buckets: tuple[str, ...]
    table_name: str


def queue_name_from_url(queue_url: str | None) -> str:
    """The queue name is the last path segment of its URL."""
    if not queue_url:
        return DEFAULT_QUEUE_NAME
    return queue_url.rstrip("/").rsplit("/", 1)[-1]


def provision(settings: Settings, *, session: boto3.session.Session | None = None) -> Provisioned:
    """Create the DLQ, the queue (with redrive), the three buckets and the table, idempotently.

    Uses the SDK's standard configuration (``AWS_ENDPOINT_URL`` for LocalStack or the emulator).
    Names come from the settings: the queue from ``QUEUE_URL``'s last segment (default
    ``komorebi-jobs``), the DLQ from ``DLQ_URL`` (default ``<queue>-dlq``).
    """
    session = session or boto3.session.Session()
    sqs = session.client("sqs")
    s3 = session.client("s3")
    dynamodb = session.client("dynamodb")

    queue_name = queue_name_from_url(settings.queue_url)
    dlq_name = queue_name_from_url(settings.dlq_url) if settings.dlq_url else f"{queue_name}-dlq"
    dlq_url = sqs.create_queue(QueueName=dlq_name, Attributes=dict(DLQ_ATTRIBUTES))["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = RedrivePolicy(dlq_arn, QUEUE_MAX_RECEIVE_COUNT).to_json()
    queue_url = sqs.create_queue(QueueName=queue_name, Attributes=dict(QUEUE_ATTRIBUTES))[
        "QueueUrl"
    ]
    # Set separately so re-running against an existing queue still applies the redrive policy.
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"RedrivePolicy": redrive})

    buckets = (settings.ac_audio_bucket, settings.input_bucket, settings.output_bucket)
    for bucket in dict.fromkeys(buckets):
        _create_bucket(s3, bucket, session.region_name)

    try:
        dynamodb.create_table(
            TableName=settings.table_name,
            AttributeDefinitions=[{"AttributeName": TABLE_PARTITION_KEY, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": TABLE_PARTITION_KEY, "KeyType": "HASH"}],
            BillingMode=TABLE_BILLING_MODE,
        )
        dynamodb.get_waiter("table_exists").wait(
            TableName=settings.table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
        )
    except dynamodb.exceptions.ResourceInUseException:
        pass
    return Provisioned(queue_url, dlq_url, tuple(dict.fromkeys(buckets)), settings.table_name)


def _create_bucket(s3: Any, bucket: str, region: str | None) -> None:
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
