"""The Recording row (SPEC §4) and its DynamoDB repository (the S3 key layout: :mod:`worker.keys`).

The backend owns the row: this module never puts a whole item. Every write is an UpdateItem
that names exactly the attributes it sets or removes, guarded by a condition expression, so
attributes the worker does not know about are never touched.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog

from worker.aws import DYNAMODB, error_code, translated
from worker.errors import (
    AlreadyDone,
    ConditionFailed,
    InvalidRow,
    LeaseHeld,
    RowNotFound,
    one_line,
)

log = structlog.get_logger(__name__)

STATUS_PROCESSING, STATUS_DONE, STATUS_FAILED = "PROCESSING", "DONE", "FAILED"
# Two call ends closer than this are the same call end (messages carry milliseconds).
CALL_END_TOLERANCE_SECONDS = 0.0005

PARTITION_KEY = "videoID"
# The call end (seconds) of the latest message that claimed the row (issue 16, a SPEC §4
# addition): written with the lease, before any work can fail, so that a FAILED row can be
# re-enqueued from the table alone (`komorebi-worker backfill`).
REQUESTED_CALL_END = "requestedCallEndSeconds"
MAX_ERROR_CHARS = 500
_LEGACY_FORMAT = "%Y-%m-%d %H:%M:%S"
_CONDITION_FAILED = "ConditionalCheckFailedException"
# agentID becomes an S3 key segment: one path segment, printable, no traversal.
_AGENT_ID = re.compile(r"^[^/\x00-\x1f\x7f]{1,256}$")


@dataclass(frozen=True)
class RecordingRow:
    """What the worker reads from a Recording row."""

    recording_id: str
    agent_id: str
    creation_date: datetime
    status: str | None
    is_processed: bool
    call_end_seconds: float | None
    lease_owner: str | None
    lease_expires_at: float | None


def parse_creation_date(text: str) -> datetime:
    """Parse ``creationDate``: ``yyyy-MM-dd HH:mm:ss`` (UTC) or ISO 8601; result is UTC-aware.

    Naive ISO values are taken as UTC (the backend writes UTC); aware ones are converted.
    Raises :class:`InvalidRow` for anything else.
    """
    value = text.strip() if isinstance(text, str) else ""
    if not value:
        raise InvalidRow("creationDate is empty")
    try:
        parsed = datetime.strptime(value, _LEGACY_FORMAT)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidRow(f"creationDate {value[:64]!r} is not a date") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# --- DynamoDB --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoneRecord:
    """What a successful job writes to the row (SPEC §4)."""

    video_key: str
    thumbnail_key: str
    media_duration_seconds: float
    call_end_seconds: float
    connect_audio_offset_seconds: float
    # How the call end was placed (issue 13): waveform (measured) or timestamp (the message's),
    # measured minus timestamp (s), and the measurement's standard score.
    sync_method: str = "timestamp"
    sync_offset_seconds: float = 0.0
    sync_confidence: float = 0.0
    # Clock drift applied to the Connect audio (issue 19; ppm, 0: none).
    sync_drift_ppm: float = 0.0


def _number(value: float) -> dict[str, str]:
    # DynamoDB numbers travel as decimal strings: repr() round-trips a float exactly, and the
    # "f" format keeps it plain (no exponent). NaN/inf cannot be stored at all.
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"cannot store {number!r} in DynamoDB")
    return {"N": format(Decimal(repr(number)), "f")}


def _true_like(existing: Mapping[str, Any] | None) -> dict[str, Any]:
    # Drop-in compatibility: a row whose isProcessed was written as a number (the Java SDK's
    # DynamoDBMapper stores booleans as 0/1) or a string keeps that type; otherwise BOOL.
    if existing and "N" in existing:
        return {"N": "1"}
    if existing and "S" in existing:
        return {"S": "true"}
    return {"BOOL": True}


def _string(value: str) -> dict[str, str]:
    return {"S": value}


def read_number(attribute: Mapping[str, Any] | None) -> float | None:
    """A low-level DynamoDB number (or numeric string) attribute as a float; None if absent
    or unreadable."""
    if not attribute:
        return None
    raw = attribute.get("N", attribute.get("S"))
    if raw is None:
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        return None


def read_string(attribute: Mapping[str, Any] | None) -> str | None:
    """A low-level DynamoDB string attribute; None if absent or of another type."""
    if not attribute:
        return None
    value = attribute.get("S")
    return str(value) if value is not None else None


def read_bool(attribute: Mapping[str, Any] | None) -> bool:
    """A low-level DynamoDB flag in any spelling the backend used (BOOL, 0/1, "true")."""
    # The backend writes a BOOL; tolerate the number/string spellings older writers used.
    if not attribute:
        return False
    if "BOOL" in attribute:
        return bool(attribute["BOOL"])
    if "N" in attribute:
        return str(attribute["N"]) not in ("0", "0.0")
    if "S" in attribute:
        return str(attribute["S"]).strip().lower() == "true"
    return False


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _condition_failed(error: BaseException) -> BaseException | None:
    return ConditionFailed() if error_code(error) == _CONDITION_FAILED else None


def _status_before_claim(item: Mapping[str, Any] | None) -> str | None:
    """The status a row had before a claim overwrote it with PROCESSING, from what the row
    records: an earlier run's output (DONE) or error (FAILED)."""
    if not item:
        return None
    # Every spelling read_bool accepts (and _true_like writes): a row written by an older
    # backend as {"S": "true"} or {"N": "1"} is as DONE as one with a BOOL.
    if item.get("videoKey") and read_bool(item.get("isProcessed")):
        return STATUS_DONE
    if item.get("processingError"):
        return STATUS_FAILED
    return None


class RecordingTable:
    """Reads and conditional updates of Recording rows."""

    def __init__(self, dynamodb_client: Any, table_name: str) -> None:
        self._db = dynamodb_client
        self.table_name = table_name

    def _key(self, recording_id: str) -> dict[str, dict[str, str]]:
        return {PARTITION_KEY: _string(recording_id)}

    async def _update(self, recording_id: str, **kwargs: Any) -> bool:
        """Run one UpdateItem; False when its condition failed, AwsUnavailable on errors."""
        try:
            with translated(_condition_failed, service=DYNAMODB):
                await self._db.update_item(
                    TableName=self.table_name, Key=self._key(recording_id), **kwargs
                )
        except ConditionFailed:
            return False
        return True

    async def _raw(self, recording_id: str) -> dict[str, Any] | None:
        with translated(service=DYNAMODB):
            response = await self._db.get_item(
                TableName=self.table_name, Key=self._key(recording_id), ConsistentRead=True
            )
        item: dict[str, Any] | None = response.get("Item")
        return item

    async def get(self, recording_id: str) -> RecordingRow:
        """Read the row (strongly consistent).

        Raises :class:`RowNotFound` when absent, :class:`InvalidRow` when ``agentID`` is
        missing or unusable in a key, or ``creationDate`` is missing or malformed.
        """
        item = await self._raw(recording_id)
        if item is None:
            raise RowNotFound(f"no row for recording {recording_id} in {self.table_name}")
        agent_id = read_string(item.get("agentID"))
        if agent_id is None or not agent_id.strip():
            raise InvalidRow(f"row {recording_id} has no agentID")
        if not _AGENT_ID.match(agent_id) or agent_id in (".", ".."):
            raise InvalidRow(f"row {recording_id} has an agentID unusable in an S3 key")
        created = read_string(item.get("creationDate"))
        if created is None:
            raise InvalidRow(f"row {recording_id} has no creationDate")
        return RecordingRow(
            recording_id=recording_id,
            agent_id=agent_id,
            creation_date=parse_creation_date(created),
            status=read_string(item.get("processingStatus")),
            is_processed=read_bool(item.get("isProcessed")),
            call_end_seconds=read_number(item.get("callEndSeconds")),
            lease_owner=read_string(item.get("leaseOwner")),
            lease_expires_at=read_number(item.get("leaseExpiresAt")),
        )

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
        condition = (
            "attribute_exists(videoID) AND (attribute_not_exists(leaseOwner) "
            "OR attribute_not_exists(leaseExpiresAt) OR leaseExpiresAt < :now "
            "OR leaseOwner = :me)"
        )
        values = {
            ":me": _string(owner),
            ":expires": _number(round(now + lease_seconds, 3)),
            ":processing": _string(STATUS_PROCESSING),
            ":one": {"N": "1"},
            ":now": _number(round(now, 3)),
        }
        if unless_done_call_end is not None:
            condition += (
                " AND NOT (processingStatus = :done AND callEndSeconds BETWEEN :end_lo AND :end_hi)"
            )
            values[":done"] = _string(STATUS_DONE)
            values[":end_lo"] = _number(unless_done_call_end - call_end_tolerance)
            values[":end_hi"] = _number(unless_done_call_end + call_end_tolerance)
        update = "SET leaseOwner = :me, leaseExpiresAt = :expires, processingStatus = :processing"
        if requested_call_end is not None:
            update += f", {REQUESTED_CALL_END} = :requested"
            values[":requested"] = _number(requested_call_end)
        ok = await self._update(
            recording_id,
            UpdateExpression=f"{update} ADD processingAttempts :one",
            ConditionExpression=condition,
            ExpressionAttributeValues=values,
        )
        if ok:
            return
        if unless_done_call_end is not None:
            item = await self._raw(recording_id)
            done_end = read_number(item.get("callEndSeconds")) if item else None
            if (
                item is not None
                and read_string(item.get("processingStatus")) == STATUS_DONE
                and done_end is not None
                and abs(done_end - unless_done_call_end) <= call_end_tolerance
            ):
                raise AlreadyDone(f"recording {recording_id} is already done for this call end")
        await self._raise_lease_lost(recording_id, owner)

    async def renew_lease(self, recording_id: str, owner: str, lease_seconds: int) -> None:
        """Extend our lease; :class:`LeaseHeld` if another owner took it over."""
        now = time.time()
        ok = await self._update(
            recording_id,
            UpdateExpression="SET leaseExpiresAt = :expires",
            ConditionExpression="leaseOwner = :me",
            ExpressionAttributeValues={
                ":me": _string(owner),
                ":expires": _number(round(now + lease_seconds, 3)),
            },
        )
        if not ok:
            await self._raise_lease_lost(recording_id, owner)

    async def _raise_lease_lost(self, recording_id: str, owner: str) -> None:
        item = await self._raw(recording_id)
        if item is None:
            raise RowNotFound(f"no row for recording {recording_id} in {self.table_name}")
        holder = read_string(item.get("leaseOwner")) or "nobody"
        raise LeaseHeld(f"recording {recording_id} is leased by {holder}, not {owner}")

    async def release_lease(self, recording_id: str, owner: str) -> None:
        """Give our lease up (job retried or cancelled); a no-op if we no longer hold it.

        ``processingStatus`` PROCESSING goes back to what the row's other attributes say it
        was before the claim: DONE when an earlier run's output is recorded (a re-run for a
        corrected call end that failed must not hide the earlier result, nor stop duplicates
        of the original message from being recognised), FAILED when an error is recorded,
        else no status. Any other status is left as it is.
        """
        values = {":me": _string(owner), ":processing": _string(STATUS_PROCESSING)}
        previous = _status_before_claim(await self._raw(recording_id))
        if previous is None:
            update = "REMOVE leaseOwner, leaseExpiresAt, processingStatus"
        else:
            update = "SET processingStatus = :previous REMOVE leaseOwner, leaseExpiresAt"
            values[":previous"] = _string(previous)
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
                ":me": _string(owner),
                ":true": _true_like(current.get("isProcessed")),
                ":done": _string(STATUS_DONE),
                ":video": _string(done.video_key),
                ":thumb": _string(done.thumbnail_key),
                ":at": _string(_utc_now_iso()),
                ":duration": _number(done.media_duration_seconds),
                ":call_end": _number(done.call_end_seconds),
                ":offset": _number(done.connect_audio_offset_seconds),
                ":sync_method": _string(done.sync_method),
                ":sync_offset": _number(round(done.sync_offset_seconds, 6)),
                ":sync_confidence": _number(round(done.sync_confidence, 2)),
                ":sync_drift": _number(round(done.sync_drift_ppm, 2)),
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
            ":failed": _string(STATUS_FAILED),
            ":error": _string(one_line(reason, MAX_ERROR_CHARS) or "failed"),
            ":done": _string(STATUS_DONE),
            ":now": _number(round(now, 3)),
        }
        lease_free = (
            "attribute_not_exists(leaseOwner) OR attribute_not_exists(leaseExpiresAt) "
            "OR leaseExpiresAt < :now"
        )
        if owner is not None:
            lease_free += " OR leaseOwner = :me"
            values[":me"] = _string(owner)
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
