"""The Recording row's DynamoDB codec (SPEC §4): what the worker reads from a row, what a
successful job writes, and the low-level attribute encodings, in every spelling the backend
used. Pure: the I/O is :mod:`worker.recordings.access`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from worker.errors import InvalidRow

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


def number(value: float) -> dict[str, str]:
    """A float as a low-level DynamoDB number attribute (exact, no exponent)."""
    # DynamoDB numbers travel as decimal strings: repr() round-trips a float exactly, and the
    # "f" format keeps it plain (no exponent). NaN/inf cannot be stored at all.
    as_float = float(value)
    if not math.isfinite(as_float):
        raise ValueError(f"cannot store {as_float!r} in DynamoDB")
    return {"N": format(Decimal(repr(as_float)), "f")}


def true_like(existing: Mapping[str, Any] | None) -> dict[str, Any]:
    """A true flag in the type ``existing`` (the row's current value) already uses."""
    # Drop-in compatibility: a row whose isProcessed was written as a number (the Java SDK's
    # DynamoDBMapper stores booleans as 0/1) or a string keeps that type; otherwise BOOL.
    if existing and "N" in existing:
        return {"N": "1"}
    if existing and "S" in existing:
        return {"S": "true"}
    return {"BOOL": True}


def string(value: str) -> dict[str, str]:
    """A low-level DynamoDB string attribute."""
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


def utc_now_iso() -> str:
    """Now, ISO 8601 in UTC with milliseconds and a ``Z`` (``processedAt``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_before_claim(item: Mapping[str, Any] | None) -> str | None:
    """The status a row had before a claim overwrote it with PROCESSING, from what the row
    records: an earlier run's output (DONE) or error (FAILED)."""
    if not item:
        return None
    # Every spelling read_bool accepts (and true_like writes): a row written by an older
    # backend as {"S": "true"} or {"N": "1"} is as DONE as one with a BOOL.
    if item.get("videoKey") and read_bool(item.get("isProcessed")):
        return STATUS_DONE
    if item.get("processingError"):
        return STATUS_FAILED
    return None


def decode_row(recording_id: str, item: Mapping[str, Any]) -> RecordingRow:
    """The row as the worker reads it.

    Raises :class:`InvalidRow` when ``agentID`` is missing or unusable in a key, or
    ``creationDate`` is missing or malformed.
    """
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
