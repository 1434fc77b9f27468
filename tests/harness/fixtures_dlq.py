"""Dead letters as the worker (and SQS's own redrive) leave them, for the operator-command
tests: a fresh queue + DLQ pair, a mixed DLQ seeded in batches, and reading a queue back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from tests.harness.fixtures_aws import AwsEnv
from worker.provisioning import DLQ_ATTRIBUTES, QUEUE_ATTRIBUTES
from worker.queue import RedrivePolicy

FAILED_AT = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Letter:
    """One seeded dead letter: its body and the reason ``dlq list`` must show."""

    body: str
    recording_id: str
    reason_key: str
    attributes: Mapping[str, Any]


def fresh_queues(world: AwsEnv, max_receive_count: int = 8) -> tuple[str, str]:
    """A new job queue with a redrive policy to a new DLQ: (queue url, dlq url)."""
    sqs = world.client("sqs")
    suffix = uuid.uuid4().hex[:10]
    dlq_url = sqs.create_queue(QueueName=f"ops-dlq-{suffix}", Attributes=dict(DLQ_ATTRIBUTES))[
        "QueueUrl"
    ]
    arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = sqs.create_queue(
        QueueName=f"ops-jobs-{suffix}",
        Attributes={
            **QUEUE_ATTRIBUTES,
            "RedrivePolicy": RedrivePolicy(arn, max_receive_count).to_json(),
        },
    )["QueueUrl"]
    return queue_url, dlq_url


def _string(value: str, data_type: str = "String") -> dict[str, str]:
    return {"DataType": data_type, "StringValue": value}


def mixed_letters(count: int) -> list[Letter]:
    """``count`` dead letters of every kind: retries exhausted (two last reasons), media,
    invalid messages with hostile ids, copies moved by SQS's redrive (no attributes), and old
    worker copies without ``failedAt``. One in ten is an hour older than the others."""
    letters = []
    for index in range(count):
        rid = f"rec-{index:05d}"
        kind = index % 10
        failed_at = FAILED_AT - timedelta(hours=1 if index % 10 == 9 else 0)
        attributes: dict[str, Any] = {
            "errorClass": _string("MediaError"),
            "errorReason": _string("media_invalid"),
            "errorMessage": _string("ffprobe failed: moov atom not found"),
            "receiveCount": _string("1", "Number"),
            "originalMessageId": _string(f"orig-{index}"),
            "failedAt": _string(failed_at.isoformat().replace("+00:00", "Z")),
            "producer": _string("backend"),
        }
        key = "media_invalid"
        body = json.dumps({"recordingID": rid, "callEndingTimestamp": "00:00:14"})
        if kind in (0, 1, 2, 3, 4):
            detail = "connect_audio_not_ready" if kind < 4 else "aws_unavailable"
            attributes |= {
                "errorClass": _string("RetriesExhausted"),
                "errorReason": _string("retries_exhausted"),
                "errorDetail": _string(detail),
                "errorMessage": _string("Connect recording not found after 8 attempts"),
                "receiveCount": _string("8", "Number"),
            }
            key = f"retries_exhausted:{detail}"
        elif kind == 6:
            rid = f"bad\x1b[31m{index}"  # an invalid id with a terminal escape
            body = json.dumps({"recordingID": rid, "callEndingTimestamp": "x"})
            attributes |= {
                "errorClass": _string("InvalidMessage"),
                "errorReason": _string("invalid_message"),
            }
            key = "invalid_message"
        elif kind == 7:
            attributes = {"producer": _string("backend")}  # moved by SQS's redrive
            key = "redrive_policy"
        elif kind == 8:
            del attributes["failedAt"]  # written before the worker had failedAt
        letters.append(Letter(body, rid, key, attributes))
    return letters


def seed(sqs: Any, dlq_url: str, letters: list[Letter]) -> None:
    """Send ``letters`` to the DLQ, ten per call."""
    for start in range(0, len(letters), 10):
        entries = [
            {"Id": str(i), "MessageBody": letter.body, "MessageAttributes": dict(letter.attributes)}
            for i, letter in enumerate(letters[start : start + 10])
        ]
        response = sqs.send_message_batch(QueueUrl=dlq_url, Entries=entries)
        assert not response.get("Failed"), response


def drain(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """Receive and delete everything in the queue (with attributes) until it is empty."""
    messages: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            return messages
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
            ],
        )
        messages.extend(batch)


def access_denied(operation: str) -> ClientError:
    """The error AWS answers a call the role may not make."""
    return ClientError(
        {"Error": {"Code": "AccessDenied", "Message": f"not authorized to perform {operation}"}},
        operation,
    )


class Denying:
    """A real boto3 client whose ``denied`` methods answer AccessDenied."""

    def __init__(self, real: Any, *denied: str) -> None:
        self._real = real
        self._denied = set(denied)

    def __getattr__(self, name: str) -> Any:
        if name in self._denied:

            def deny(**kwargs: Any) -> Any:
                raise access_denied(name)

            return deny
        return getattr(self._real, name)
