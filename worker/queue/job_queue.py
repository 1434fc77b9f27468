"""The SQS job queue and its dead-letter queue (SPEC §6): :class:`JobQueue` receives,
heartbeats, acknowledges and dead-letters job messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from worker.aws import AWS_ERRORS, SQS, translate, translated
from worker.errors import (
    ConfigError,
    JobError,
    ReceiptHandleInvalid,
    RetriesExhausted,
    VisibilityLimitReached,
    describe,
)
from worker.limits import SQS_MAX_BATCH, SQS_MAX_VISIBILITY_SECONDS, SQS_MAX_WAIT_SECONDS
from worker.queue.attributes import (
    ATTR_ERROR_CLASS,
    ATTR_ERROR_DETAIL,
    ATTR_ERROR_MESSAGE,
    ATTR_ERROR_REASON,
    ATTR_FAILED_AT,
    ATTR_ORIGINAL_MESSAGE_ID,
    ATTR_RECEIVE_COUNT,
    MAX_ERROR_MESSAGE_CHARS,
    SQS_MESSAGE_LIMIT,
    attribute,
    fit_attributes,
    text_attributes,
    with_producer_attributes,
)
from worker.queue.codes import is_receipt_error, is_visibility_limit
from worker.queue.policy import RedrivePolicy, parse_redrive_policy

# The module's events keep the logger name they had before queue became a package.
log = structlog.get_logger("worker.queue")

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
                    attributes=text_attributes(raw.get("MessageAttributes") or {}),
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
            if is_visibility_limit(error):
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
            ATTR_ERROR_CLASS: attribute(error.error_class),
            ATTR_ERROR_REASON: attribute(error.reason),
            ATTR_ERROR_MESSAGE: attribute(describe(error, MAX_ERROR_MESSAGE_CHARS)),
            ATTR_RECEIVE_COUNT: attribute(str(message.receive_count), "Number"),
            ATTR_ORIGINAL_MESSAGE_ID: attribute(message.message_id),
            ATTR_FAILED_AT: attribute(failed_at),
        }
        if isinstance(error, RetriesExhausted):
            attributes[ATTR_ERROR_DETAIL] = attribute(error.detail)
        limit = await self._dlq_size_limit()
        attributes = fit_attributes(attributes, message.body, limit)
        attributes = with_producer_attributes(attributes, message.attributes, message.body, limit)
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
    if is_receipt_error(error):
        return ReceiptHandleInvalid(f"message {message.message_id}: receipt handle no longer valid")
    return None
