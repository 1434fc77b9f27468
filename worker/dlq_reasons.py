"""The reasons a dead letter can carry (pure): what ``dlq list`` and ``redrive`` accept in
``--reason``, so a typo is a usage error instead of a selection that matches nothing."""

from __future__ import annotations

from typing import Final

from worker.errors import JobError

# The reason shown for a dead letter without the worker's attributes: SQS's own redrive
# policy moved it (no worker could settle it), or its body left no room for any attribute.
REDRIVE_POLICY_REASON: Final = "redrive_policy"
# Reasons raised as an override of their error class's own (a unit test finds them all).
OVERRIDE_REASONS: Final = ("media_not_allowed", "aws_access_denied", "aws_resource_missing")


def known_reasons() -> frozenset[str]:
    """Every ``errorReason`` / ``errorDetail`` a dead letter can carry (its job error's)."""
    found, pending = {REDRIVE_POLICY_REASON, *OVERRIDE_REASONS}, JobError.__subclasses__()
    while pending:
        error_class = pending.pop()
        found.add(error_class.reason)
        pending += error_class.__subclasses__()
    return frozenset(found)
