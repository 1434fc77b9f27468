"""Operator commands on the queue (SPEC §7): ``enqueue`` a job, ``redrive`` the DLQ.

Synchronous boto3: these are one-shot command-line tools, not the service. Endpoint, region
and credentials come from the SDK's standard configuration (``AWS_ENDPOINT_URL`` etc.).
Only ``QUEUE_URL`` (and optionally ``DLQ_URL``) are needed, so an operator does not have to
set the bucket variables just to send a message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from worker.config import SQS_MAX_VISIBILITY_SECONDS
from worker.errors import AwsUnavailable, ConfigError, InvalidMessage
from worker.messages import JobMessage, parse_message, parse_timestamp, validate_recording_id
from worker.queue import DLQ_ATTRIBUTE_NAMES, SQS_MAX_BATCH, parse_redrive_policy

# Message attributes the worker adds when it dead-letters a message (worker/queue.py); a
# redriven message goes back without them, like the original.
DEAD_LETTER_ATTRIBUTES: Final = frozenset(DLQ_ATTRIBUTE_NAMES)
# Long enough to send and delete a batch; a message whose send failed reappears in the DLQ.
_REDRIVE_VISIBILITY_SECONDS: Final = 60
# Attempts at deleting a sent message's DLQ copy (DeleteMessageBatch reports failures per
# entry, e.g. InternalError), and the pause before each retry.
_DELETE_ATTEMPTS: Final = 3
_DELETE_RETRY_SECONDS: Final = 0.5
# How long a re-sent message whose DLQ copy could not be deleted is hidden: under SQS's
# 12-hour limit, which counts from the message's receipt.
_HIDE_SECONDS: Final = SQS_MAX_VISIBILITY_SECONDS - 600
# A short long-poll: an empty answer after this means the DLQ is drained (short polls can
# return nothing while messages exist).
_REDRIVE_WAIT_SECONDS: Final = 2


@dataclass(frozen=True)
class RedriveResult:
    """What ``redrive`` did.

    ``moved``: sent to the queue and deleted from the DLQ. ``failed``: could not be sent;
    still in the DLQ, visible again within a minute. ``not_deleted``: ids of messages sent to
    the queue whose DLQ copy could not be deleted; hidden in the DLQ for 12 hours so the next
    redrive does not send them again (delete them by hand, or let them come back after that).
    """

    moved: int
    failed: int
    dlq_url: str
    not_deleted: tuple[str, ...] = field(default=())


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
    """``DLQ_URL`` if given, else the target of the queue's RedrivePolicy.

    A missing or malformed RedrivePolicy is a :class:`ConfigError` (one line, exit 2).
    """
    if dlq_url:
        return dlq_url
    with aws_errors("GetQueueAttributes"):
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["RedrivePolicy"]
        ).get("Attributes", {})
    text = attributes.get("RedrivePolicy")
    if not text:
        raise ConfigError("DLQ_URL is not set and the queue has no RedrivePolicy")
    policy = parse_redrive_policy(text)
    with aws_errors("GetQueueUrl"):
        return str(
            sqs.get_queue_url(QueueName=policy.dlq_name, QueueOwnerAWSAccountId=policy.dlq_account)[
                "QueueUrl"
            ]
        )


@dataclass
class _Redrive:
    """One redrive run's bookkeeping, by DLQ message id (stable across receives)."""

    sent: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    unsent: set[str] = field(default_factory=set)
    # The latest receipt handle of each sent message not yet deleted.
    handles: dict[str, str] = field(default_factory=dict)

    @property
    def handled(self) -> int:
        return len(self.sent | self.unsent)


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
    tolerates duplicates). Stops when the DLQ looks empty or ``max_messages`` were handled.

    A sent message is never sent again by the same run: if its delete fails (a ``Failed``
    entry of DeleteMessageBatch) the delete is retried, also when the message shows up again
    in the DLQ; one still not deleted at the end is reported in ``not_deleted``, not counted
    as moved, and hidden in the DLQ for SQS's maximum of 12 hours so that the next redrive
    does not send it a second time.
    """
    if max_messages is not None and max_messages <= 0:
        raise ConfigError("--max-messages must be a positive integer")
    client = sqs or sqs_client()
    source = resolve_dlq_url(queue_url, dlq_url, sqs=client)
    if source.rstrip("/") == queue_url.rstrip("/"):
        # Receiving and re-sending on one queue would loop until --max-messages.
        raise ConfigError("the DLQ and the queue are the same queue; nothing to redrive")
    run = _Redrive()
    while max_messages is None or run.handled < max_messages:
        wanted = SQS_MAX_BATCH
        if max_messages is not None:
            wanted = min(wanted, max_messages - run.handled)
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
        fresh = [m for m in messages if m["MessageId"] not in run.sent]
        for message in messages:
            if message["MessageId"] in run.sent:
                run.handles[message["MessageId"]] = message["ReceiptHandle"]
        if fresh:
            entries = [_send_entry(str(index), message) for index, message in enumerate(fresh)]
            with aws_errors("SendMessageBatch"):
                sent = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
            ok_ids = {entry["Id"] for entry in sent.get("Successful", [])}
            for index, message in enumerate(fresh):
                if str(index) in ok_ids:
                    run.sent.add(message["MessageId"])
                    run.unsent.discard(message["MessageId"])
                    run.handles[message["MessageId"]] = message["ReceiptHandle"]
                else:
                    run.unsent.add(message["MessageId"])
        _delete_sent(client, source, run)
        # Still not deleted: hide them at once, so neither this run nor the next sends them.
        _hide(client, source, {mid: run.handles[mid] for mid in run.sent - run.deleted})
        if not fresh:
            break  # only copies we already sent came back: nothing new to move
    leftovers = sorted(run.sent - run.deleted)
    return RedriveResult(
        moved=len(run.sent & run.deleted),
        failed=len(run.unsent),
        dlq_url=source,
        not_deleted=tuple(leftovers),
    )


def _delete_sent(client: Any, source: str, run: _Redrive) -> None:
    """Delete the DLQ copy of every sent, not yet deleted message; retry failed entries."""
    for attempt in range(_DELETE_ATTEMPTS):
        pending = sorted(run.sent - run.deleted)
        if not pending:
            return
        if attempt:
            time.sleep(_DELETE_RETRY_SECONDS * attempt)
        for start in range(0, len(pending), SQS_MAX_BATCH):
            batch = pending[start : start + SQS_MAX_BATCH]
            entries = [
                {"Id": str(index), "ReceiptHandle": run.handles[message_id]}
                for index, message_id in enumerate(batch)
            ]
            with aws_errors("DeleteMessageBatch"):
                response = client.delete_message_batch(QueueUrl=source, Entries=entries)
            for entry in response.get("Successful", []):
                message_id = batch[int(entry["Id"])]
                run.deleted.add(message_id)
                run.handles.pop(message_id, None)


def _hide(client: Any, source: str, handles: Mapping[str, str]) -> None:
    """Best effort: keep DLQ copies of already re-sent messages out of the next redrive."""
    items = list(handles.items())
    for start in range(0, len(items), SQS_MAX_BATCH):
        entries = [
            {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": _HIDE_SECONDS}
            for index, (_, handle) in enumerate(items[start : start + SQS_MAX_BATCH])
        ]
        try:
            with aws_errors("ChangeMessageVisibilityBatch"):
                client.change_message_visibility_batch(QueueUrl=source, Entries=entries)
        except AwsUnavailable:
            pass  # reported as not deleted all the same


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
