"""Operator commands on the queue (SPEC §7): ``enqueue`` a job, ``redrive`` the DLQ.

Synchronous boto3: these are one-shot command-line tools, not the service. Endpoint, region
and credentials come from the SDK's standard configuration (``AWS_ENDPOINT_URL`` etc.).
Only ``QUEUE_URL`` (and optionally ``DLQ_URL``) are needed, so an operator does not have to
set the bucket variables just to send a message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from worker.errors import AwsUnavailable, ConfigError, InvalidMessage
from worker.messages import JobMessage, parse_message, parse_timestamp, validate_recording_id

# SQS batch APIs take at most 10 entries (moto accepts more; AWS does not).
SQS_MAX_BATCH: Final = 10
# Message attributes the worker adds when it dead-letters a message (worker/queue.py); a
# redriven message goes back without them, like the original.
DEAD_LETTER_ATTRIBUTES: Final = frozenset(
    {"errorClass", "errorReason", "errorMessage", "receiveCount", "originalMessageId", "failedAt"}
)
# Long enough to send and delete a batch; a message whose send failed reappears in the DLQ.
_REDRIVE_VISIBILITY_SECONDS: Final = 60
# A short long-poll: an empty answer after this means the DLQ is drained (short polls can
# return nothing while messages exist).
_REDRIVE_WAIT_SECONDS: Final = 2


@dataclass(frozen=True)
class RedriveResult:
    """What ``redrive`` did."""

    moved: int
    failed: int
    dlq_url: str


def queue_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """``QUEUE_URL`` or a :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    url = (env.get("QUEUE_URL") or "").strip()
    if not url:
        raise ConfigError("configuration: QUEUE_URL is required but not set")
    return url


def dlq_url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``DLQ_URL`` if set (else the queue's RedrivePolicy decides)."""
    env = os.environ if environ is None else environ
    return (env.get("DLQ_URL") or "").strip() or None


def build_job(recording_id: str, call_end: str, connect_audio_key: str | None) -> JobMessage:
    """Validate command-line input into the job the worker will accept (ConfigError if not)."""
    try:
        validate_recording_id(recording_id)
    except ValueError as error:
        raise ConfigError(f"invalid RECORDING_ID: {error}") from None
    try:
        seconds = parse_timestamp(call_end)
    except ValueError as error:
        raise ConfigError(f"invalid CALL_END: {error}") from None
    job = JobMessage(recording_id, seconds, connect_audio_key)
    try:
        # Round trip through the worker's own parser: what we send is what it accepts.
        return parse_message(job.to_body())
    except InvalidMessage as error:
        raise ConfigError(f"invalid message: {error}") from None


def boto3_session(environ: Mapping[str, str] | None = None) -> boto3.session.Session:
    """A boto3 session honouring ``AWS_REGION`` (SPEC §3; botocore reads only
    ``AWS_DEFAULT_REGION``)."""
    env = os.environ if environ is None else environ
    region = (env.get("AWS_REGION") or "").strip() or None
    return boto3.session.Session(region_name=region)


def sqs_client() -> Any:
    """An SQS client from the standard SDK configuration (ConfigError if unusable)."""
    with aws_errors("SQS client"):
        return boto3_session().client("sqs")


@contextmanager
def aws_errors(operation: str) -> Iterator[None]:
    """SDK errors as one-line typed errors: setup problems exit 2, the rest exit 1."""
    try:
        yield
    except (NoRegionError, NoCredentialsError, PartialCredentialsError) as error:
        raise ConfigError(f"{operation}: {error}") from None
    except ClientError as error:
        info = error.response.get("Error", {})
        code = info.get("Code", "Error")
        message = info.get("Message", "")
        raise AwsUnavailable(f"{operation}: {code}: {message}") from None
    except BotoCoreError as error:
        raise AwsUnavailable(f"{operation}: {type(error).__name__}: {error}") from None


def enqueue(job: JobMessage, queue_url: str, *, sqs: Any | None = None) -> str:
    """Send ``job`` to the queue; returns the SQS message id."""
    client = sqs or sqs_client()
    with aws_errors("SendMessage"):
        response = client.send_message(QueueUrl=queue_url, MessageBody=job.to_body())
    return str(response["MessageId"])


def resolve_dlq_url(queue_url: str, dlq_url: str | None, *, sqs: Any) -> str:
    """``DLQ_URL`` if given, else the target of the queue's RedrivePolicy."""
    if dlq_url:
        return dlq_url
    with aws_errors("GetQueueAttributes"):
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["RedrivePolicy"]
        ).get("Attributes", {})
    policy = attributes.get("RedrivePolicy")
    if not policy:
        raise ConfigError("DLQ_URL is not set and the queue has no RedrivePolicy")
    arn = str(json.loads(policy)["deadLetterTargetArn"])
    # arn:aws:sqs:<region>:<account>:<name>
    parts = arn.split(":")
    if len(parts) != 6:
        raise ConfigError(f"RedrivePolicy has an unexpected deadLetterTargetArn {arn!r}")
    with aws_errors("GetQueueUrl"):
        return str(
            sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])["QueueUrl"]
        )


def redrive(
    queue_url: str,
    dlq_url: str | None = None,
    *,
    max_messages: int | None = None,
    sqs: Any | None = None,
) -> RedriveResult:
    """Move DLQ messages back to the queue, original body and producer attributes only.

    Each batch (<= 10) is sent first and deleted from the DLQ only for the entries whose
    send succeeded, so a failure can duplicate a message but never lose one (the worker
    tolerates duplicates). Stops when the DLQ looks empty or ``max_messages`` moved.
    """
    if max_messages is not None and max_messages <= 0:
        raise ConfigError("--max-messages must be a positive integer")
    client = sqs or sqs_client()
    source = resolve_dlq_url(queue_url, dlq_url, sqs=client)
    if source.rstrip("/") == queue_url.rstrip("/"):
        # Receiving and re-sending on one queue would loop until --max-messages.
        raise ConfigError("the DLQ and the queue are the same queue; nothing to redrive")
    moved = failed = 0
    while max_messages is None or moved + failed < max_messages:
        wanted = SQS_MAX_BATCH
        if max_messages is not None:
            wanted = min(wanted, max_messages - moved - failed)
        with aws_errors("ReceiveMessage"):
            messages = client.receive_message(
                QueueUrl=source,
                MaxNumberOfMessages=wanted,
                WaitTimeSeconds=_REDRIVE_WAIT_SECONDS,
                VisibilityTimeout=_REDRIVE_VISIBILITY_SECONDS,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
        if not messages:
            break
        entries = [_send_entry(str(index), message) for index, message in enumerate(messages)]
        with aws_errors("SendMessageBatch"):
            sent = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
        ok_ids = {entry["Id"] for entry in sent.get("Successful", [])}
        failed += len(messages) - len(ok_ids)
        to_delete = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
            for index, message in enumerate(messages)
            if str(index) in ok_ids
        ]
        if to_delete:
            with aws_errors("DeleteMessageBatch"):
                client.delete_message_batch(QueueUrl=source, Entries=to_delete)
        moved += len(to_delete)
    return RedriveResult(moved=moved, failed=failed, dlq_url=source)


def _send_entry(entry_id: str, message: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"Id": entry_id, "MessageBody": message["Body"]}
    attributes: dict[str, Any] = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        if name in DEAD_LETTER_ATTRIBUTES:
            continue
        kept = {"DataType": value["DataType"]}
        for field_name in ("StringValue", "BinaryValue"):
            if field_name in value:
                kept[field_name] = value[field_name]
        attributes[name] = kept
    if attributes:
        entry["MessageAttributes"] = attributes
    return entry
