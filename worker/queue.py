"""The SQS job queue and its dead-letter queue (SPEC §6): SQS's limits, the redrive policy,
and the attributes a dead-lettered message carries, each defined once."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from worker.aws import AWS_ERRORS, SQS, error_code, translate, translated
from worker.errors import (
    ConfigError,
    JobError,
    ReceiptHandleInvalid,
    RetriesExhausted,
    VisibilityLimitReached,
    describe,
    one_line,
)
from worker.limits import SQS_MAX_BATCH as SQS_MAX_BATCH
from worker.limits import SQS_MAX_VISIBILITY_SECONDS
from worker.limits import SQS_MAX_WAIT_SECONDS as SQS_MAX_WAIT_SECONDS

log = structlog.get_logger(__name__)

MAX_ERROR_MESSAGE_CHARS = 256
# The smallest MaximumMessageSize a queue has by default (body + attributes count towards it);
# newer queues allow 1 MiB, but the DLQ may be an older one.
SQS_MESSAGE_LIMIT = 262_144
MAX_MESSAGE_ATTRIBUTES = 10  # SQS's limit per message
# The most a SendMessageBatch may carry in total (every entry's body + attributes): 256 KiB
# where the single-message limit is 256 KiB, 1 MiB on newer queues; the smaller one always works.
SQS_BATCH_LIMIT = SQS_MESSAGE_LIMIT

# Message attributes the worker adds when it dead-letters a message, least important first
# (dropped in this order when the body leaves too little room). ``errorDetail`` only comes
# with reason retries_exhausted: the last transient reason.
ATTR_ERROR_CLASS: Final = "errorClass"
ATTR_ERROR_REASON: Final = "errorReason"
ATTR_ERROR_DETAIL: Final = "errorDetail"
ATTR_ERROR_MESSAGE: Final = "errorMessage"
ATTR_RECEIVE_COUNT: Final = "receiveCount"
ATTR_ORIGINAL_MESSAGE_ID: Final = "originalMessageId"
ATTR_FAILED_AT: Final = "failedAt"
DLQ_ATTRIBUTE_NAMES: Final = (
    ATTR_ERROR_MESSAGE,
    ATTR_FAILED_AT,
    ATTR_RECEIVE_COUNT,
    ATTR_ORIGINAL_MESSAGE_ID,
    ATTR_ERROR_CLASS,
    ATTR_ERROR_DETAIL,
    ATTR_ERROR_REASON,
)
# Codes that by themselves say a receipt handle no longer refers to an in-flight delivery
# (deleted, visibility lapsed and redelivered, or garbage), as AWS, moto and LocalStack send
# them (the JSON protocol's short form and the query protocol's long one).
_RECEIPT_CODES = frozenset(
    {
        "ReceiptHandleIsInvalid",
        "InvalidReceiptHandle",
        "AWS.SimpleQueueService.ReceiptHandleIsInvalid",
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
    }
)
# Generic validation codes: a receipt error when they name the ReceiptHandle parameter, as
# AWS and LocalStack do for a deleted delivery: "Value <handle> for parameter ReceiptHandle
# is invalid. Reason: Message does not exist or is not available for visibility timeout
# change."
_PARAMETER_CODES = frozenset({"InvalidParameterValue", "InvalidParameterValueException"})
_NAMES_RECEIPT_HANDLE = re.compile(r"(?i)\breceipt[ _]?handle\b")
# Last resort, for an implementation whose code is unknown: the wording alone.
_SAYS_DELIVERY_GONE = re.compile(
    r"(?i)\breceipt[ _]?handle\b.*\b(invalid|not valid|expired|does not exist)\b"
    r"|\bmessage does not exist\b|\bnot (?:in ?flight|available for visibility)\b"
)


@dataclass(frozen=True)
class RedrivePolicy:
    """A queue's ``RedrivePolicy``: where SQS moves a message, after how many receives."""

    dead_letter_target_arn: str
    max_receive_count: int

    @property
    def dlq_name(self) -> str:
        """The DLQ's name (last field of ``arn:aws:sqs:<region>:<account>:<name>``)."""
        return self.dead_letter_target_arn.split(":")[5]

    @property
    def dlq_account(self) -> str:
        """The DLQ's AWS account id."""
        return self.dead_letter_target_arn.split(":")[4]

    def to_json(self) -> str:
        """The attribute value SQS expects (``SetQueueAttributes``)."""
        return json.dumps(
            {
                "deadLetterTargetArn": self.dead_letter_target_arn,
                "maxReceiveCount": self.max_receive_count,
            }
        )


def parse_redrive_policy(text: str) -> RedrivePolicy:
    """Parse a ``RedrivePolicy`` attribute; :class:`ConfigError` (one line) if malformed.

    SQS writes ``maxReceiveCount`` as a number or a numeric string; both are accepted.
    """
    try:
        policy = json.loads(text)
        arn = policy["deadLetterTargetArn"]
        count = int(policy["maxReceiveCount"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"the queue's RedrivePolicy {one_line(str(text), 80)!r} is not valid JSON with "
            "deadLetterTargetArn and maxReceiveCount"
        ) from None
    parts = str(arn).split(":")
    if len(parts) != 6 or parts[2] != "sqs" or not parts[5]:
        raise ConfigError(f"the queue's dead-letter target {str(arn)[:100]!r} is not an SQS ARN")
    if count < 1:
        raise ConfigError(f"the queue's RedrivePolicy has maxReceiveCount {count}: must be >= 1")
    return RedrivePolicy(str(arn), count)


_LIMIT_ERRORS: tuple[type[BaseException], ...] = (*AWS_ERRORS, ValueError, TypeError)


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as received (the receipt handle identifies this delivery)."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_timestamp_ms: int | None
    # The producer's String/Number message attributes (trace ids...), kept for the DLQ copy.
    attributes: Mapping[str, dict[str, str]] = field(default_factory=dict)


def _int_or_none(raw: Any) -> int | None:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def _error_codes(error: BaseException) -> set[str]:
    """The error's code and, when botocore has it, the query-protocol code beside it."""
    info = getattr(error, "response", {}).get("Error", {})
    return {code for code in (error_code(error), str(info.get("QueryErrorCode") or "")) if code}


def _error_message(error: BaseException) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Message", "") or "")


def _is_receipt_error(error: BaseException) -> bool:
    """Whether SQS says this delivery is gone: by its error code first, wording last."""
    codes = _error_codes(error)
    if codes & _RECEIPT_CODES:
        return True
    message = _error_message(error)
    if codes & _PARAMETER_CODES:
        return bool(_NAMES_RECEIPT_HANDLE.search(message))
    if codes - {"400", "Unknown"}:
        return False  # another, known error: never guess from its text
    return bool(_SAYS_DELIVERY_GONE.search(message))


def _is_visibility_limit(error: BaseException) -> bool:
    message = _error_message(error).lower()
    return bool(_error_codes(error) & _PARAMETER_CODES) and "beyond the limit" in message


# SQS accepts only these characters in bodies and attribute values (XML 1.0).
_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def sqs_safe(text: str) -> str:
    """Replace characters SQS rejects (control bytes, ANSI escapes from ffmpeg) with ``?``."""
    return _NOT_XML.sub("?", text)


def _attribute(value: str, data_type: str = "String") -> dict[str, str]:
    return {"DataType": data_type, "StringValue": sqs_safe(value)}


def _attributes_size(attributes: Mapping[str, Mapping[str, Any]]) -> int:
    # How SQS counts attributes against the message size: name + type + value, in bytes.
    total = 0
    for name, value in attributes.items():
        data = value.get("StringValue", value.get("BinaryValue", b""))
        raw = data if isinstance(data, bytes) else str(data).encode("utf-8", "surrogatepass")
        total += len(name.encode()) + len(str(value.get("DataType", "")).encode()) + len(raw)
    return total


def message_bytes(body: str, attributes: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """What one message counts against SQS's size limits: body + attributes, in bytes."""
    return len(body.encode("utf-8", "surrogatepass")) + _attributes_size(attributes or {})


def fit_attributes(
    attributes: dict[str, dict[str, str]], body: str, limit: int = SQS_MESSAGE_LIMIT
) -> dict[str, dict[str, str]]:
    """Drop the least important attributes until body + attributes fit in ``limit`` bytes.

    A body already near the limit (a hostile or huge message) must still reach the DLQ; the
    reason code is the last attribute to go.
    """
    kept = dict(attributes)
    budget = limit - len(body.encode())
    for name in DLQ_ATTRIBUTE_NAMES:
        if _attributes_size(kept) <= budget:
            break
        kept.pop(name, None)
    return kept if _attributes_size(kept) <= budget else {}


def _text_attributes(raw: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    return {
        name: {"DataType": str(value["DataType"]), "StringValue": str(value["StringValue"])}
        for name, value in raw.items()
        if isinstance(value, Mapping) and "StringValue" in value and "DataType" in value
    }


def _with_producer_attributes(
    ours: dict[str, dict[str, str]],
    producer: Mapping[str, dict[str, str]],
    body: str,
    limit: int,
) -> dict[str, dict[str, str]]:
    """Our reason attributes plus as many of the producer's as SQS allows (count and size):
    a trace id that came with the message should survive the trip to the DLQ."""
    merged = dict(ours)
    for name, value in producer.items():
        if name in merged or len(merged) >= MAX_MESSAGE_ATTRIBUTES:
            continue
        candidate = {**merged, name: value}
        if _attributes_size(candidate) + len(body.encode()) <= limit:
            merged = candidate
    return merged


class JobQueue:
    """Receive, heartbeat, acknowledge and dead-letter job messages."""

    def __init__(self, sqs_client: Any, queue_url: str, dlq_url: str | None) -> None:
        self._sqs = sqs_client
        self.queue_url = queue_url
        self._dlq_url = dlq_url
        self._dlq_limit: int | None = None
        self.redrive_policy: RedrivePolicy | None = None
        self._policy_loaded = False

    @property
    def max_receive_count(self) -> int | None:
        """The queue's ``maxReceiveCount`` as read by :meth:`check` (None: no redrive)."""
        return self.redrive_policy.max_receive_count if self.redrive_policy else None

    async def check(self) -> str:
        """Start-up: the queue answers; read its redrive policy; resolve the DLQ (its URL).

        The DLQ is ``DLQ_URL`` if configured, else the RedrivePolicy's target. Raises
        :class:`ConfigError` when neither gives a DLQ or the policy is malformed.
        """
        await self._load_redrive_policy()
        return await self.resolve_dlq_url()

    async def _load_redrive_policy(self) -> None:
        with translated(service=SQS):
            response = await self._sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["QueueArn", "RedrivePolicy"]
            )
        text = response.get("Attributes", {}).get("RedrivePolicy")
        self.redrive_policy = parse_redrive_policy(text) if text else None
        self._policy_loaded = True

    async def resolve_dlq_url(self) -> str:
        """``DLQ_URL`` if configured, else the queue's RedrivePolicy target (cached).

        Raises :class:`ConfigError` when neither gives a DLQ.
        """
        if self._dlq_url:
            return self._dlq_url
        if not self._policy_loaded:
            await self._load_redrive_policy()
        policy = self.redrive_policy
        if policy is None:
            raise ConfigError(
                "DLQ_URL is not set and the queue has no RedrivePolicy to find the DLQ"
            )
        with translated(service=SQS):
            resolved = await self._sqs.get_queue_url(
                QueueName=policy.dlq_name, QueueOwnerAWSAccountId=policy.dlq_account
            )
        self._dlq_url = str(resolved["QueueUrl"])
        return self._dlq_url

    async def _dlq_size_limit(self) -> int:
        """The DLQ's MaximumMessageSize (cached); the 256 KiB classic limit if unreadable."""
        if self._dlq_limit is None:
            limit = SQS_MESSAGE_LIMIT
            try:
                response = await self._sqs.get_queue_attributes(
                    QueueUrl=await self.resolve_dlq_url(), AttributeNames=["MaximumMessageSize"]
                )
                limit = int(response.get("Attributes", {}).get("MaximumMessageSize", limit))
            except _LIMIT_ERRORS as error:
                log.warning("dlq_size_unknown", error=translate(error, SQS).message)
            self._dlq_limit = limit
        return self._dlq_limit

    async def receive(
        self,
        max_messages: int,
        wait_seconds: int = SQS_MAX_WAIT_SECONDS,
        *,
        visibility_timeout: int | None = None,
    ) -> list[ReceivedMessage]:
        """Long-poll for up to ``max_messages`` (clamped to 1..10) messages.

        ``visibility_timeout`` hides what is received for that long instead of the queue's
        default, so a message whose worker dies before its first heartbeat comes back after
        the worker's own VISIBILITY_TIMEOUT, whatever the queue was created with.
        """
        extra: dict[str, Any] = {}
        if visibility_timeout is not None:
            extra["VisibilityTimeout"] = visibility_timeout
        with translated(service=SQS):
            response = await self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=max(1, min(SQS_MAX_BATCH, max_messages)),
                WaitTimeSeconds=max(0, min(SQS_MAX_WAIT_SECONDS, wait_seconds)),
                **extra,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                MessageAttributeNames=["All"],
            )
        messages = []
        for raw in response.get("Messages", []):
            attributes = raw.get("Attributes", {})
            messages.append(
                ReceivedMessage(
                    message_id=raw["MessageId"],
                    receipt_handle=raw["ReceiptHandle"],
                    body=raw.get("Body", ""),
                    receive_count=_int_or_none(attributes.get("ApproximateReceiveCount")) or 1,
                    sent_timestamp_ms=_int_or_none(attributes.get("SentTimestamp")),
                    attributes=_text_attributes(raw.get("MessageAttributes") or {}),
                )
            )
        return messages

    async def change_visibility(self, message: ReceivedMessage, seconds: int) -> None:
        """Set the message's visibility timeout from now (heartbeat, backoff, or 0 = release).

        Raises :class:`ReceiptHandleInvalid` when the delivery is no longer ours and
        :class:`VisibilityLimitReached` when SQS's 12-hour limit would be passed.
        """
        seconds = max(0, min(SQS_MAX_VISIBILITY_SECONDS, int(seconds)))

        def special(error: BaseException) -> BaseException | None:
            if _is_visibility_limit(error):
                return VisibilityLimitReached(
                    f"message {message.message_id}: visibility cannot be extended past 12 hours"
                )
            return _receipt_error(message, error)

        with translated(special, service=SQS):
            await self._sqs.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=message.receipt_handle,
                VisibilityTimeout=seconds,
            )

    async def delete(self, message: ReceivedMessage) -> None:
        """Acknowledge the message. :class:`ReceiptHandleInvalid` if the delivery expired."""
        with translated(lambda error: _receipt_error(message, error), service=SQS):
            await self._sqs.delete_message(
                QueueUrl=self.queue_url, ReceiptHandle=message.receipt_handle
            )

    async def dead_letter(self, message: ReceivedMessage, error: JobError) -> None:
        """Send the original body to the DLQ with attributes saying why (SPEC §6).

        Attributes: error class, reason, message, receive count, original message id, time;
        for :class:`RetriesExhausted` also ``errorDetail``, the last transient reason. The
        producer's own attributes follow as far as SQS's limits allow. The caller deletes the
        message from the queue afterwards.
        """
        dlq_url = await self.resolve_dlq_url()
        failed_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        attributes = {
            ATTR_ERROR_CLASS: _attribute(error.error_class),
            ATTR_ERROR_REASON: _attribute(error.reason),
            ATTR_ERROR_MESSAGE: _attribute(describe(error, MAX_ERROR_MESSAGE_CHARS)),
            ATTR_RECEIVE_COUNT: _attribute(str(message.receive_count), "Number"),
            ATTR_ORIGINAL_MESSAGE_ID: _attribute(message.message_id),
            ATTR_FAILED_AT: _attribute(failed_at),
        }
        if isinstance(error, RetriesExhausted):
            attributes[ATTR_ERROR_DETAIL] = _attribute(error.detail)
        limit = await self._dlq_size_limit()
        attributes = fit_attributes(attributes, message.body, limit)
        attributes = _with_producer_attributes(attributes, message.attributes, message.body, limit)
        with translated(service=SQS):
            await self._sqs.send_message(
                QueueUrl=dlq_url, MessageBody=message.body, MessageAttributes=attributes
            )

    async def send(self, body: str, *, queue_url: str | None = None) -> str:
        """Enqueue ``body`` (on this queue, or ``queue_url``); return the message id."""
        with translated(service=SQS):
            response = await self._sqs.send_message(
                QueueUrl=queue_url or self.queue_url, MessageBody=body
            )
        return str(response["MessageId"])


def _receipt_error(message: ReceivedMessage, error: BaseException) -> BaseException | None:
    if _is_receipt_error(error):
        return ReceiptHandleInvalid(f"message {message.message_id}: receipt handle no longer valid")
    return None
