"""A queue's redrive policy: where SQS moves a message (the DLQ), after how many receives."""

from __future__ import annotations

import json
from dataclasses import dataclass

from worker.errors import ConfigError, one_line


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
