"""JobQueue against a real moto SQS server (and LocalStack's SQS where marked), and how SQS
errors are recognised whatever implementation words them."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from tests.harness.fixtures_aws import AwsEnv
from worker.aws import AwsClients
from worker.errors import (
    ConfigError,
    InvalidMessage,
    MediaError,
    ReceiptHandleInvalid,
    VisibilityLimitReached,
)
from worker.outcome import escaped
from worker.provisioning import QUEUE_ATTRIBUTES
from worker.queue import (
    JobQueue,
    ReceivedMessage,
    fit_attributes,
)

pytestmark = pytest.mark.anyio

BODY = json.dumps({"recordingID": "rec-1", "callEndingTimestamp": "00:00:14"})


@dataclass
class Queues:
    """A fresh job queue with its DLQ (redrive as provisioned) and a boto3 client."""

    queue_url: str
    dlq_url: str
    boto: Any


@pytest.fixture
async def clients(backend_clients: AwsClients) -> AwsClients:
    """The worker's clients on this test's backend (moto unless marked)."""
    return backend_clients


@pytest.fixture
def aws(backend_world: AwsEnv) -> Queues:
    boto = backend_world.client("sqs")
    name = f"q-{uuid.uuid4().hex[:12]}"
    dlq_url = boto.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = boto.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 8})
    queue_url = boto.create_queue(
        QueueName=name, Attributes={**QUEUE_ATTRIBUTES, "RedrivePolicy": redrive}
    )["QueueUrl"]
    return Queues(queue_url, dlq_url, boto)


@pytest.fixture
def queue(aws: Queues, clients: AwsClients) -> JobQueue:
    return JobQueue(clients.sqs, aws.queue_url, aws.dlq_url)


def _counts(aws: Queues, url: str) -> tuple[int, int]:
    attributes = aws.boto.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


async def _receive_one(queue: JobQueue) -> ReceivedMessage:
    messages = await queue.receive(10, wait_seconds=0)
    assert len(messages) == 1
    return messages[0]


@pytest.mark.backends("moto", "localstack")
async def test_send_and_receive_with_receive_count(queue: JobQueue) -> None:
    before_ms = int(time.time() * 1000) - 60_000
    message_id = await queue.send(BODY)

    first = await _receive_one(queue)
    assert first.message_id == message_id
    assert first.body == BODY
    assert first.receive_count == 1
    assert first.sent_timestamp_ms is not None and first.sent_timestamp_ms >= before_ms

    await queue.change_visibility(first, 0)  # release: visible again at once
    second = await _receive_one(queue)
    assert second.message_id == message_id
    assert second.receive_count == 2
    assert second.receipt_handle != first.receipt_handle


async def test_receive_clamps_batch_size_and_returns_empty(aws: Queues, queue: JobQueue) -> None:
    assert await queue.receive(0, wait_seconds=0) == []
    sqs = aws.boto
    for index in range(12):
        sqs.send_message(QueueUrl=aws.queue_url, MessageBody=f"m{index}")
    got = await queue.receive(50, wait_seconds=0)
    assert 1 <= len(got) <= 10  # SQS rejects MaxNumberOfMessages > 10; it was clamped
    one = await queue.receive(0, wait_seconds=0)
    assert len(one) == 1


async def test_change_visibility_hides_the_message(aws: Queues, queue: JobQueue) -> None:
    await queue.send(BODY)
    message = await _receive_one(queue)
    await queue.change_visibility(message, 600)  # a heartbeat
    assert await queue.receive(10, wait_seconds=0) == []
    assert _counts(aws, aws.queue_url) == (0, 1)


async def test_receive_uses_the_workers_visibility_not_the_queues(
    aws: Queues, queue: JobQueue
) -> None:
    # The queue hides received messages for its default (300 s as provisioned); a worker that
    # dies before its first heartbeat must not hide its message that long.
    await queue.send(BODY)
    [first] = await queue.receive(1, wait_seconds=0, visibility_timeout=1)
    again: list[Any] = []
    with anyio.fail_after(10):
        while not again:
            await anyio.sleep(0.25)
            again = await queue.receive(1, wait_seconds=0, visibility_timeout=1)
    assert again[0].message_id == first.message_id
    assert again[0].receive_count == 2


async def test_delete_removes_the_message(aws: Queues, queue: JobQueue) -> None:
    await queue.send(BODY)
    message = await _receive_one(queue)
    await queue.delete(message)
    assert _counts(aws, aws.queue_url) == (0, 0)


@pytest.mark.backends("moto", "localstack")
async def test_stale_receipt_handle_is_a_typed_error(queue: JobQueue) -> None:
    await queue.send(BODY)
    message = await _receive_one(queue)
    await queue.delete(message)
    with pytest.raises(ReceiptHandleInvalid):  # deleted: the handle is stale
        await queue.change_visibility(message, 30)
    bogus = ReceivedMessage("id", "not-a-receipt-handle", BODY, 1, None)
    with pytest.raises(ReceiptHandleInvalid):
        await queue.change_visibility(bogus, 30)


# moto only: LocalStack 4.14 does not enforce SQS's 12-hour limit (docs/deploy.md).
async def test_visibility_past_twelve_hours_is_a_typed_error(aws: Queues, queue: JobQueue) -> None:
    await queue.send(BODY)
    message = await _receive_one(queue)
    await queue.change_visibility(message, 3600)
    with pytest.raises(VisibilityLimitReached):
        await queue.change_visibility(message, 12 * 3600)


async def test_dead_letter_strips_characters_sqs_rejects(aws: Queues, queue: JobQueue) -> None:
    await queue.send(BODY)
    message = await _receive_one(queue)
    await queue.dead_letter(message, MediaError("ffmpeg: \x1b[31mInvalid data\x1b[0m \x00 end"))
    received = aws.boto.receive_message(
        QueueUrl=aws.dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=0
    )["Messages"]
    text = received[0]["MessageAttributes"]["errorMessage"]["StringValue"]
    assert text == "ffmpeg: ?[31mInvalid data?[0m ? end"


def test_fit_attributes_drops_detail_before_the_reason() -> None:
    attributes = {
        "errorClass": {"DataType": "String", "StringValue": "InvalidMessage"},
        "errorReason": {"DataType": "String", "StringValue": "invalid_message"},
        "errorMessage": {"DataType": "String", "StringValue": "x" * 256},
        "receiveCount": {"DataType": "Number", "StringValue": "1"},
    }
    assert fit_attributes(attributes, "b" * 1000) == attributes
    near_limit = fit_attributes(attributes, "b" * (262_144 - 100))
    assert set(near_limit) == {"errorClass", "errorReason", "receiveCount"}
    tight = fit_attributes(attributes, "b" * (262_144 - 40))
    assert set(tight) == {"errorReason"}
    assert fit_attributes(attributes, "b" * 262_144) == {}


@pytest.mark.backends("moto", "localstack")
async def test_dead_letter_sends_body_and_reason_attributes(aws: Queues, queue: JobQueue) -> None:
    await queue.send(BODY)
    message = await _receive_one(queue)
    error = MediaError("undecodable input: moov atom not found\n" + "x" * 400)

    await queue.dead_letter(message, error)
    await queue.delete(message)

    received = aws.boto.receive_message(
        QueueUrl=aws.dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=0
    )["Messages"]
    assert len(received) == 1
    assert received[0]["Body"] == BODY
    attributes = {k: v["StringValue"] for k, v in received[0]["MessageAttributes"].items()}
    assert attributes["errorClass"] == "MediaError"
    assert attributes["errorReason"] == "media_invalid"
    assert attributes["errorMessage"].startswith("undecodable input: moov atom not found x")
    assert len(attributes["errorMessage"]) <= 256 and "\n" not in attributes["errorMessage"]
    assert attributes["receiveCount"] == "1"
    assert received[0]["MessageAttributes"]["receiveCount"]["DataType"] == "Number"
    assert attributes["originalMessageId"] == message.message_id
    assert attributes["failedAt"].endswith("Z")
    assert _counts(aws, aws.queue_url) == (0, 0)


async def test_an_escaped_error_reaches_the_dlq_with_its_type_and_no_surrogate(
    aws: Queues, queue: JobQueue
) -> None:
    """``unexpected``: errorClass names the escaped exception; a lone surrogate in its text
    (SQS refuses one in an attribute value) arrives as ``?``."""
    await queue.send(BODY)
    message = await _receive_one(queue)
    error = escaped(RuntimeError("failed on a key with a raw \udc80 text"))
    await queue.dead_letter(message, error)
    [received] = aws.boto.receive_message(
        QueueUrl=aws.dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=0
    )["Messages"]
    attributes = {k: v["StringValue"] for k, v in received["MessageAttributes"].items()}
    assert (attributes["errorReason"], attributes["errorClass"]) == ("unexpected", "RuntimeError")
    assert attributes["errorMessage"].endswith("raw ? text")
    assert received["Body"] == BODY


async def test_dlq_url_resolved_from_redrive_policy(aws: Queues, clients: AwsClients) -> None:
    queue = JobQueue(clients.sqs, aws.queue_url, None)
    assert await queue.resolve_dlq_url() == aws.dlq_url
    await queue.send("not json")
    message = await _receive_one(queue)
    await queue.dead_letter(message, InvalidMessage("body is not JSON"))
    assert _counts(aws, aws.dlq_url) == (1, 0)
    configured = JobQueue(clients.sqs, aws.queue_url, "https://example.invalid/q")
    assert await configured.resolve_dlq_url() == "https://example.invalid/q"


async def test_no_dlq_anywhere_is_a_config_error(aws: Queues, clients: AwsClients) -> None:
    bare_url = aws.boto.create_queue(QueueName=f"bare-{time.time_ns()}")["QueueUrl"]
    with pytest.raises(ConfigError, match="RedrivePolicy"):
        await JobQueue(clients.sqs, bare_url, None).resolve_dlq_url()


async def test_dead_letter_fits_attributes_to_the_dlq_size(
    world: AwsEnv, clients: AwsClients
) -> None:
    boto = world.client("sqs")
    small_dlq = boto.create_queue(
        QueueName=f"small-{uuid.uuid4().hex[:8]}", Attributes={"MaximumMessageSize": "1024"}
    )["QueueUrl"]
    queue = JobQueue(clients.sqs, small_dlq, small_dlq)
    body = "b" * 900  # fits alone, not with a 256-character errorMessage as well
    message = ReceivedMessage("m-1", "unused", body, 3, None)
    await queue.dead_letter(message, InvalidMessage("x" * 300))
    received = boto.receive_message(
        QueueUrl=small_dlq, MessageAttributeNames=["All"], WaitTimeSeconds=0
    )["Messages"][0]
    assert received["Body"] == body
    names = set(received["MessageAttributes"])
    assert "errorMessage" not in names and "errorReason" in names


async def test_dead_letter_keeps_the_producers_attributes(aws: Queues, queue: JobQueue) -> None:
    # A trace id sent with the job must survive the trip to the DLQ (and a later redrive);
    # ours win on a name clash, and SQS's 10-attribute limit is kept.
    producer = {
        f"p{index}": {"DataType": "String", "StringValue": f"v{index}"} for index in range(6)
    }
    producer["traceId"] = {"DataType": "String", "StringValue": "abc-123"}
    producer["errorReason"] = {"DataType": "String", "StringValue": "forged"}
    aws.boto.send_message(
        QueueUrl=aws.queue_url,
        MessageBody=BODY,
        MessageAttributes={"traceId": producer["traceId"], "errorReason": producer["errorReason"]},
    )
    message = await _receive_one(queue)
    assert message.attributes["traceId"]["StringValue"] == "abc-123"
    await queue.dead_letter(message, MediaError("bad"))
    received = aws.boto.receive_message(
        QueueUrl=aws.dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=0
    )["Messages"][0]["MessageAttributes"]
    assert received["traceId"]["StringValue"] == "abc-123"
    assert received["errorReason"]["StringValue"] == "media_invalid"
    many = {**message.attributes, **producer}
    crowded = ReceivedMessage(
        message.message_id, message.receipt_handle, BODY, 1, None, attributes=many
    )
    await queue.dead_letter(crowded, MediaError("bad"))
    second = aws.boto.receive_message(
        QueueUrl=aws.dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=0
    )["Messages"][0]["MessageAttributes"]
    assert len(second) == 10 and second["errorReason"]["StringValue"] == "media_invalid"


# What each implementation answers when a delivery is gone (copied from real responses:
# moto 5, LocalStack 4.14, and AWS's documented wording).
_LOCALSTACK_HANDLE = "YjFiMmFkOWYtODhjOC00ZTZlLWFkOGUtMjQ2ZjMwZGRkZWRmIGFybjphd3M6c3Fz"
_DELIVERY_GONE = {
    "moto": ("ReceiptHandleIsInvalid", "The input receipt handle is invalid."),
    "localstack": (
        "InvalidParameterValue",
        f"Value {_LOCALSTACK_HANDLE} for parameter ReceiptHandle is invalid. Reason: Message "
        "does not exist or is not available for visibility timeout change.",
    ),
    "aws-query": ("AWS.SimpleQueueService.MessageNotInflight", "Message not in flight."),
    "garbage": ("ReceiptHandleIsInvalid", 'The input receipt handle "x" is not a valid one.'),
    "no-code": ("", "Value abc for parameter ReceiptHandle is invalid. Reason: expired."),
}
_NOT_DELIVERY_GONE = {
    "visibility-limit": (
        "InvalidParameterValue",
        "Value 43201 for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout "
        "for the message is beyond the limit [43200 seconds]",
    ),
    # A known, different code never counts, whatever its text says.
    "throttled": ("ThrottlingException", "Rate exceeded for receipt handle operations (invalid)"),
    "queue-gone": ("AWS.SimpleQueueService.NonExistentQueue", "The queue does not exist."),
}


def _client_error(code: str, message: str, query_code: str | None = None) -> Exception:
    from botocore.exceptions import ClientError

    error: dict[str, str] = {"Code": code, "Message": message}
    if query_code:
        error["QueryErrorCode"] = query_code
    return ClientError({"Error": error}, "ChangeMessageVisibility")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(_DELIVERY_GONE))
def test_every_wording_of_a_lost_delivery_is_recognised(name: str) -> None:
    from worker.queue.codes import is_receipt_error

    assert is_receipt_error(_client_error(*_DELIVERY_GONE[name]))


@pytest.mark.parametrize("name", sorted(_NOT_DELIVERY_GONE))
def test_other_errors_are_not_mistaken_for_a_lost_delivery(name: str) -> None:
    from worker.queue.codes import is_receipt_error

    assert not is_receipt_error(_client_error(*_NOT_DELIVERY_GONE[name]))


def test_the_query_protocol_code_counts_too() -> None:
    from worker.queue.codes import is_receipt_error

    json_code = _client_error("SomethingNew", "whatever", "ReceiptHandleIsInvalid")
    assert is_receipt_error(json_code)


@pytest.mark.backends("moto", "localstack")
async def test_a_deleted_delivery_is_lost_on_every_implementation(queue: JobQueue) -> None:
    # Each implementation answers in its own words (moto: ReceiptHandleIsInvalid; LocalStack
    # and AWS: InvalidParameterValue naming the ReceiptHandle parameter); all mean "lost", and
    # the error never carries the handle.
    await queue.send(BODY)
    message = await _receive_one(queue)
    await queue.delete(message)
    with pytest.raises(ReceiptHandleInvalid) as caught:
        await queue.change_visibility(message, 30)
    assert message.receipt_handle not in str(caught.value)
    await queue.delete(message)  # deleting twice is not an error anywhere
