"""The SQS job queue and its dead-letter queue (SPEC §6): SQS's limits, the redrive policy,
and the attributes a dead-lettered message carries, each defined once.

One concept per module; what callers use is re-exported here
(``from worker.queue import JobQueue``):

- :mod:`~worker.queue.job_queue`: :class:`JobQueue` (receive, heartbeat, delete,
  dead-letter, send) and :class:`ReceivedMessage`;
- :mod:`~worker.queue.attributes`: the DLQ attributes, SQS-safe text, message sizes and the
  fitting of attributes beside a body;
- :mod:`~worker.queue.policy`: a queue's ``RedrivePolicy``;
- :mod:`~worker.queue.codes`: which SQS errors mean "this delivery is gone" or "visibility
  limit reached", by code first and wording last.
"""

from __future__ import annotations

from worker.limits import SQS_MAX_BATCH, SQS_MAX_WAIT_SECONDS
from worker.queue.attributes import (
    ATTR_ERROR_CLASS,
    ATTR_ERROR_DETAIL,
    ATTR_ERROR_MESSAGE,
    ATTR_ERROR_REASON,
    ATTR_FAILED_AT,
    ATTR_ORIGINAL_MESSAGE_ID,
    ATTR_RECEIVE_COUNT,
    DLQ_ATTRIBUTE_NAMES,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_MESSAGE_ATTRIBUTES,
    SQS_BATCH_LIMIT,
    SQS_MESSAGE_LIMIT,
    fit_attributes,
    message_bytes,
    sqs_safe,
)
from worker.queue.job_queue import JobQueue, ReceivedMessage
from worker.queue.policy import RedrivePolicy, parse_redrive_policy

__all__ = [
    "ATTR_ERROR_CLASS",
    "ATTR_ERROR_DETAIL",
    "ATTR_ERROR_MESSAGE",
    "ATTR_ERROR_REASON",
    "ATTR_FAILED_AT",
    "ATTR_ORIGINAL_MESSAGE_ID",
    "ATTR_RECEIVE_COUNT",
    "DLQ_ATTRIBUTE_NAMES",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_MESSAGE_ATTRIBUTES",
    "SQS_BATCH_LIMIT",
    "SQS_MAX_BATCH",
    "SQS_MAX_WAIT_SECONDS",
    "SQS_MESSAGE_LIMIT",
    "JobQueue",
    "ReceivedMessage",
    "RedrivePolicy",
    "fit_attributes",
    "message_bytes",
    "parse_redrive_policy",
    "sqs_safe",
]
