"""The Recording row's status transitions (:class:`StatusWrites`): DONE with the job's
output, or FAILED with a one-line reason (SPEC §4)."""

from __future__ import annotations

import time
from typing import Any

import structlog

from worker.errors import RowNotFound, one_line
from worker.recordings.access import RowAccess
from worker.recordings.codec import (
    MAX_ERROR_CHARS,
    STATUS_DONE,
    STATUS_FAILED,
    DoneRecord,
    number,
    string,
    true_like,
    utc_now_iso,
)

# The module's events keep the logger name they had before recordings became a package.
log = structlog.get_logger("worker.recordings")


class StatusWrites(RowAccess):
    """Mark a recording DONE or FAILED."""

    async def mark_done(self, recording_id: str, owner: str, done: DoneRecord) -> None:
        """Record success (SPEC §4) and drop the lease; :class:`LeaseHeld` if we lost it.

        ``isProcessed`` is written as true in the type the row already uses (BOOL if absent).
        """
        current = await self._raw(recording_id)
        if current is None:
            raise RowNotFound(f"no row for recording {recording_id} in {self.table_name}")
        ok = await self._update(
            recording_id,
            UpdateExpression=(
                "SET isProcessed = :true, processingStatus = :done, videoKey = :video, "
                "thumbnailKey = :thumb, processedAt = :at, mediaDurationSeconds = :duration, "
                "callEndSeconds = :call_end, connectAudioOffsetSeconds = :offset, "
                "syncMethod = :sync_method, syncOffsetSeconds = :sync_offset, "
                "syncConfidence = :sync_confidence, syncDriftPpm = :sync_drift "
                "REMOVE leaseOwner, leaseExpiresAt, processingError"
            ),
            ConditionExpression="leaseOwner = :me",
            ExpressionAttributeValues={
                ":me": string(owner),
                ":true": true_like(current.get("isProcessed")),
                ":done": string(STATUS_DONE),
                ":video": string(done.video_key),
                ":thumb": string(done.thumbnail_key),
                ":at": string(utc_now_iso()),
                ":duration": number(done.media_duration_seconds),
                ":call_end": number(done.call_end_seconds),
                ":offset": number(done.connect_audio_offset_seconds),
                ":sync_method": string(done.sync_method),
                ":sync_offset": number(round(done.sync_offset_seconds, 6)),
                ":sync_confidence": number(round(done.sync_confidence, 2)),
                ":sync_drift": number(round(done.sync_drift_ppm, 2)),
            },
        )
        if not ok:
            await self._raise_lease_lost(recording_id, owner)

    async def mark_failed(
        self,
        recording_id: str,
        reason: str,
        *,
        owner: str | None = None,
        beside_live_lease: bool = False,
    ) -> None:
        """Record a permanent failure (SPEC §4) with a one-line ``processingError``.

        Never overwrites DONE, never interrupts another worker's live lease (``owner`` is ours,
        if we hold one), and is a silent no-op when the row is missing. With
        ``beside_live_lease`` (this message gave up waiting for that lease) the status and
        error are still written, the lease left alone: its holder's own ``mark_done`` (or
        failure) has the last word, and a lease that is never released does not leave the row
        saying PROCESSING forever.
        """
        now = time.time()
        values: dict[str, Any] = {
            ":failed": string(STATUS_FAILED),
            ":error": string(one_line(reason, MAX_ERROR_CHARS) or "failed"),
            ":done": string(STATUS_DONE),
            ":now": number(round(now, 3)),
        }
        lease_free = (
            "attribute_not_exists(leaseOwner) OR attribute_not_exists(leaseExpiresAt) "
            "OR leaseExpiresAt < :now"
        )
        if owner is not None:
            lease_free += " OR leaseOwner = :me"
            values[":me"] = string(owner)
        ok = await self._update(
            recording_id,
            UpdateExpression=(
                "SET processingStatus = :failed, processingError = :error "
                "REMOVE leaseOwner, leaseExpiresAt"
            ),
            ConditionExpression=(
                "attribute_exists(videoID) AND "
                "(attribute_not_exists(processingStatus) OR processingStatus <> :done) AND "
                f"({lease_free})"
            ),
            ExpressionAttributeValues=values,
        )
        if not ok and beside_live_lease:
            ok = await self._update(
                recording_id,
                UpdateExpression="SET processingStatus = :failed, processingError = :error",
                ConditionExpression=(
                    "attribute_exists(videoID) AND "
                    "(attribute_not_exists(processingStatus) OR processingStatus <> :done)"
                ),
                ExpressionAttributeValues={k: values[k] for k in (":failed", ":error", ":done")},
            )
        if not ok:
            log.info("mark_failed_skipped", recording_id=recording_id, error_reason=reason[:100])
