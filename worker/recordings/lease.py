"""The Recording row's lease (:class:`LeaseWrites`): claim, renew and release.

One worker processes a recording at a time: the claim is a conditional UpdateItem that only
succeeds while nobody else's lease is live, and marks the row PROCESSING.
"""

from __future__ import annotations

import time
from typing import Any

from worker.errors import AlreadyDone
from worker.recordings.access import RowAccess
from worker.recordings.codec import (
    CALL_END_TOLERANCE_SECONDS,
    REQUESTED_CALL_END,
    STATUS_DONE,
    STATUS_PROCESSING,
    number,
    read_number,
    read_string,
    status_before_claim,
    string,
)

_CLAIMABLE = (
    "attribute_exists(videoID) AND (attribute_not_exists(leaseOwner) "
    "OR attribute_not_exists(leaseExpiresAt) OR leaseExpiresAt < :now "
    "OR leaseOwner = :me)"
)
_NOT_DONE_FOR_END = (
    " AND NOT (processingStatus = :done AND callEndSeconds BETWEEN :end_lo AND :end_hi)"
)


class LeaseWrites(RowAccess):
    """Claim, renew and release a recording's lease."""

    async def claim_lease(
        self,
        recording_id: str,
        owner: str,
        lease_seconds: int,
        *,
        unless_done_call_end: float | None = None,
        call_end_tolerance: float = CALL_END_TOLERANCE_SECONDS,
        requested_call_end: float | None = None,
    ) -> None:
        """Take the recording's lease (or renew our own), mark it PROCESSING, count the attempt.

        ``requested_call_end`` (the message's call end) is kept on the row as
        ``requestedCallEndSeconds`` in the same write.

        With ``unless_done_call_end`` the claim also fails, atomically, when the row is already
        DONE for that call end: a worker that read the row just before another one finished
        must not process the recording again. That case raises :class:`AlreadyDone`.

        Raises :class:`LeaseHeld` while another owner's lease is live, :class:`RowNotFound`
        if the row is gone.
        """
        now = time.time()
        condition = _CLAIMABLE
        values = {
            ":me": string(owner),
            ":expires": number(round(now + lease_seconds, 3)),
            ":processing": string(STATUS_PROCESSING),
            ":one": {"N": "1"},
            ":now": number(round(now, 3)),
        }
        if unless_done_call_end is not None:
            condition += _NOT_DONE_FOR_END
            values[":done"] = string(STATUS_DONE)
            values[":end_lo"] = number(unless_done_call_end - call_end_tolerance)
            values[":end_hi"] = number(unless_done_call_end + call_end_tolerance)
        update = "SET leaseOwner = :me, leaseExpiresAt = :expires, processingStatus = :processing"
        if requested_call_end is not None:
            update += f", {REQUESTED_CALL_END} = :requested"
            values[":requested"] = number(requested_call_end)
        ok = await self._update(
            recording_id,
            UpdateExpression=f"{update} ADD processingAttempts :one",
            ConditionExpression=condition,
            ExpressionAttributeValues=values,
        )
        if ok:
            return
        if unless_done_call_end is not None:
            await self._raise_if_done(recording_id, unless_done_call_end, call_end_tolerance)
        await self._raise_lease_lost(recording_id, owner)

    async def _raise_if_done(self, recording_id: str, call_end: float, tolerance: float) -> None:
        """:class:`AlreadyDone` when the row is DONE for ``call_end`` (a claim just failed)."""
        item: dict[str, Any] | None = await self._raw(recording_id)
        done_end = read_number(item.get("callEndSeconds")) if item else None
        if (
            item is not None
            and read_string(item.get("processingStatus")) == STATUS_DONE
            and done_end is not None
            and abs(done_end - call_end) <= tolerance
        ):
            raise AlreadyDone(f"recording {recording_id} is already done for this call end")

    async def renew_lease(self, recording_id: str, owner: str, lease_seconds: int) -> None:
        """Extend our lease; :class:`LeaseHeld` if another owner took it over."""
        now = time.time()
        ok = await self._update(
            recording_id,
            UpdateExpression="SET leaseExpiresAt = :expires",
            ConditionExpression="leaseOwner = :me",
            ExpressionAttributeValues={
                ":me": string(owner),
                ":expires": number(round(now + lease_seconds, 3)),
            },
        )
        if not ok:
            await self._raise_lease_lost(recording_id, owner)

    async def release_lease(self, recording_id: str, owner: str) -> None:
        """Give our lease up (job retried or cancelled); a no-op if we no longer hold it.

        ``processingStatus`` PROCESSING goes back to what the row's other attributes say it
        was before the claim: DONE when an earlier run's output is recorded (a re-run for a
        corrected call end that failed must not hide the earlier result, nor stop duplicates
        of the original message from being recognised), FAILED when an error is recorded,
        else no status. Any other status is left as it is.
        """
        values = {":me": string(owner), ":processing": string(STATUS_PROCESSING)}
        previous = status_before_claim(await self._raw(recording_id))
        if previous is None:
            update = "REMOVE leaseOwner, leaseExpiresAt, processingStatus"
        else:
            update = "SET processingStatus = :previous REMOVE leaseOwner, leaseExpiresAt"
            values[":previous"] = string(previous)
        if await self._update(
            recording_id,
            UpdateExpression=update,
            ConditionExpression="leaseOwner = :me AND processingStatus = :processing",
            ExpressionAttributeValues=values,
        ):
            return
        await self._update(
            recording_id,
            UpdateExpression="REMOVE leaseOwner, leaseExpiresAt",
            ConditionExpression="leaseOwner = :me",
            ExpressionAttributeValues={":me": values[":me"]},
        )
