"""What a message carries and how much of SQS's size limits it uses: the attributes a
dead-lettered message gets (SPEC §6), the characters SQS accepts, and the fitting of
attributes beside a body near the limit."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

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
# SQS accepts only these characters in bodies and attribute values (XML 1.0).
_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def sqs_safe(text: str) -> str:
    """Replace characters SQS rejects (control bytes, ANSI escapes from ffmpeg) with ``?``."""
    return _NOT_XML.sub("?", text)


def attribute(value: str, data_type: str = "String") -> dict[str, str]:
    """A String (or ``data_type``) message attribute, its value made SQS-safe."""
    return {"DataType": data_type, "StringValue": sqs_safe(value)}


def attributes_size(attributes: Mapping[str, Mapping[str, Any]]) -> int:
    """How SQS counts attributes against the message size: name + type + value, in bytes."""
    total = 0
    for name, value in attributes.items():
        data = value.get("StringValue", value.get("BinaryValue", b""))
        raw = data if isinstance(data, bytes) else str(data).encode("utf-8", "surrogatepass")
        total += len(name.encode()) + len(str(value.get("DataType", "")).encode()) + len(raw)
    return total


def message_bytes(body: str, attributes: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """What one message counts against SQS's size limits: body + attributes, in bytes."""
    return len(body.encode("utf-8", "surrogatepass")) + attributes_size(attributes or {})


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
        if attributes_size(kept) <= budget:
            break
        kept.pop(name, None)
    return kept if attributes_size(kept) <= budget else {}


def text_attributes(raw: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The String/Number attributes of a received message, in the shape a send takes."""
    return {
        name: {"DataType": str(value["DataType"]), "StringValue": str(value["StringValue"])}
        for name, value in raw.items()
        if isinstance(value, Mapping) and "StringValue" in value and "DataType" in value
    }


def with_producer_attributes(
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
        if attributes_size(candidate) + len(body.encode()) <= limit:
            merged = candidate
    return merged
