"""The DLQ as an operator sees it (issue 16): what a dead letter says, which ones match, and
a scan that reads every message once without consuming any.

Pure core: :func:`parse_dead_letter` turns one received SQS message into a
:class:`DeadLetterInfo` (the attributes the worker writes when it dead-letters, see
:mod:`worker.queue`); :class:`Selection` says which ones an operator asked for;
:func:`parse_since` reads ``--since``. The I/O edge is :class:`DlqScan`.

Why the scan *holds* what it reads (a visibility timeout of :data:`SCAN_HOLD_SECONDS`) and
releases everything at the end (visibility 0), instead of receiving with visibility 0: SQS
returns a sample of the queue's messages per receive, so with visibility 0 the same messages
can come back again and again and a DLQ of thousands is never seen whole. Held messages
cannot be returned again, so each receive yields new ones and the scan ends when a receive
(a 1 s long poll, which asks every SQS server) comes back empty. Every message is shown once
(deduplicated by MessageId, in case a hold lapsed), and all of them are visible again as soon
as the command ends, also on Ctrl-C or an error. Only a process killed outright leaves them
hidden, for at most the hold. Nothing is ever deleted by the scan.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from worker.admin import aws_errors
from worker.dlq_reasons import REDRIVE_POLICY_REASON, known_reasons
from worker.errors import ConfigError, one_line
from worker.queue import (
    ATTR_ERROR_CLASS,
    ATTR_ERROR_DETAIL,
    ATTR_ERROR_MESSAGE,
    ATTR_ERROR_REASON,
    ATTR_FAILED_AT,
    ATTR_ORIGINAL_MESSAGE_ID,
    ATTR_RECEIVE_COUNT,
    SQS_MAX_BATCH,
)

# How long the scan hides what it has read: long enough for a scan of tens of thousands of
# messages; the scan stops before it (SCAN_DEADLINE_SECONDS) and releases everything.
SCAN_HOLD_SECONDS: Final = 300
SCAN_DEADLINE_SECONDS: Final = 270.0
# A long poll (>= 1 s) asks every SQS server: an empty answer means nothing visible is left.
SCAN_WAIT_SECONDS: Final = 1
# Receives in a row returning only messages already seen (their hold lapsed) before the scan
# concludes that nothing new is left.
SCAN_STALE_RECEIVES: Final = 3
_MAX_SHOWN_CHARS = 300
_RELATIVE = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class DeadLetterInfo:
    """What one dead letter says (every text already safe to print on one line).

    ``reason``: ``errorReason`` (or :data:`REDRIVE_POLICY_REASON`); ``last_reason``:
    ``errorDetail``, the last transient reason of ``retries_exhausted``; ``detail``: the
    one-line ``errorMessage``. ``failed_at_source`` says where ``failed_at`` came from:
    ``failedAt`` (the worker's attribute) or ``SentTimestamp`` (older or SQS-moved copies).
    """

    message_id: str
    recording_id: str | None
    reason: str
    last_reason: str | None
    detail: str | None
    error_class: str | None
    receive_count: int | None
    failed_at: datetime | None
    failed_at_source: str | None
    original_message_id: str | None

    @property
    def reason_key(self) -> str:
        """``reason`` or ``reason:last_reason`` (what ``--reason`` and the counts use)."""
        return f"{self.reason}:{self.last_reason}" if self.last_reason else self.reason

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``dlq list --json``."""
        return {
            "recording_id": self.recording_id,
            "reason": self.reason,
            "last_reason": self.last_reason,
            "detail": self.detail,
            "error_class": self.error_class,
            "receive_count": self.receive_count,
            "failed_at": iso(self.failed_at),
            "failed_at_source": self.failed_at_source,
            "original_message_id": self.original_message_id,
            "message_id": self.message_id,
        }

    def line(self) -> str:
        """One line: recording, reason[:last], receives, failed at, original id, detail."""
        receives = "-" if self.receive_count is None else str(self.receive_count)
        return "  ".join(
            [
                self.recording_id or "-",
                self.reason_key,
                f"receives={receives}",
                f"failed_at={iso(self.failed_at) or '-'}",
                f"original={self.original_message_id or '-'}",
                self.detail or "-",
            ]
        )


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z`` (seconds), or None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def printable(text: object, limit: int = _MAX_SHOWN_CHARS) -> str:
    """Untrusted text (a hostile body's id, an error message) safe for one terminal line."""
    cleaned = "".join(c if c.isprintable() else "?" for c in one_line(str(text)))
    return one_line(cleaned, limit)


def _text(attributes: Mapping[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    if isinstance(value, Mapping) and isinstance(value.get("StringValue"), str):
        return printable(value["StringValue"]) or None
    return None


def _int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text is not None else None
    except ValueError:
        return None


def _failed_at(attributes: Mapping[str, Any], system: Mapping[str, Any]) -> tuple[Any, Any]:
    text = _text(attributes, ATTR_FAILED_AT)
    if text:
        try:
            parsed = datetime.fromisoformat(text)
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)), ATTR_FAILED_AT
        except ValueError:
            pass
    sent = _int(system.get("SentTimestamp"))
    if sent is not None:
        return datetime.fromtimestamp(sent / 1000, UTC), "SentTimestamp"
    return None, None


def recording_id_in(body: str) -> str | None:
    """The body's ``recordingID`` as text (any string: invalid ids are shown, escaped)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = data.get("recordingID") if isinstance(data, dict) else None
    return printable(value, 140) or None if isinstance(value, str) else None


def parse_dead_letter(message: Mapping[str, Any]) -> DeadLetterInfo:
    """A received DLQ message as :class:`DeadLetterInfo` (pure).

    Old copies without ``failedAt`` use the SQS ``SentTimestamp`` (when the copy was sent to
    the DLQ by the worker, or the original send for one moved by SQS's redrive); copies
    without ``originalMessageId`` are SQS-moved ones, which keep their MessageId.
    """
    attributes = message.get("MessageAttributes") or {}
    system = message.get("Attributes") or {}
    failed_at, source = _failed_at(attributes, system)
    return DeadLetterInfo(
        message_id=str(message["MessageId"]),
        recording_id=recording_id_in(str(message.get("Body", ""))),
        reason=_text(attributes, ATTR_ERROR_REASON) or REDRIVE_POLICY_REASON,
        last_reason=_text(attributes, ATTR_ERROR_DETAIL),
        detail=_text(attributes, ATTR_ERROR_MESSAGE),
        error_class=_text(attributes, ATTR_ERROR_CLASS),
        receive_count=_int(_text(attributes, ATTR_RECEIVE_COUNT)),
        failed_at=failed_at,
        failed_at_source=source,
        original_message_id=_text(attributes, ATTR_ORIGINAL_MESSAGE_ID)
        or str(message["MessageId"]),
    )


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO 8601 date or time (UTC when naive) or an age such as ``90m``,
    ``6h``, ``2d``, ``1w``. :class:`ConfigError` otherwise."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative:
        seconds = float(relative["n"]) * _UNIT_SECONDS[relative["unit"].lower()]
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
        except OverflowError:
            # An age before year 1 (``99999999999w``): a typo, not a traceback.
            raise ConfigError(f"--since {value[:40]!r}: age out of range") from None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--since {value[:40]!r}: must be an ISO 8601 date/time or an age like 6h, 2d"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Selection:
    """Which dead letters an operator asked for: any of ``reasons`` (``reason`` or
    ``reason:last_reason``), any of ``recording_ids``, failed at or after ``since``; an
    empty criterion selects everything."""

    reasons: frozenset[str] = frozenset()
    recording_ids: frozenset[str] = frozenset()
    since: datetime | None = None

    @classmethod
    def of(
        cls,
        reasons: Sequence[str] | None = None,
        recording_ids: Sequence[str] | None = None,
        since: datetime | None = None,
    ) -> Selection:
        """From command-line lists (None/empty: no restriction); an unknown reason: ConfigError."""
        known = known_reasons()
        for reason in reasons or ():
            if not set(reason.split(":", 1)) <= known:
                names = ", ".join(sorted(known))
                raise ConfigError(f"--reason {printable(reason, 60)!r}: unknown (known: {names})")
        return cls(frozenset(reasons or ()), frozenset(recording_ids or ()), since)

    def matches(self, info: DeadLetterInfo) -> bool:
        """Whether ``info`` is selected (pure)."""
        if self.reasons and not {info.reason, info.reason_key} & self.reasons:
            return False
        if self.recording_ids and info.recording_id not in self.recording_ids:
            return False
        if self.since is None:
            return True
        return info.failed_at is not None and info.failed_at >= self.since


@dataclass
class DlqScan:
    """Reads every DLQ message once, holding what it read until :meth:`release` (see the
    module docstring). Use as a context manager: everything still held is released on exit.

    ``keep_hidden`` marks a message deleted (by ``redrive``), so it is not released.
    """

    sqs: Any
    dlq_url: str
    hold_seconds: int = SCAN_HOLD_SECONDS
    deadline_seconds: float = SCAN_DEADLINE_SECONDS
    clock: Callable[[], float] = time.monotonic
    seen: set[str] = field(default_factory=set)
    held: dict[str, str] = field(default_factory=dict)  # message id -> latest receipt handle
    timed_out: bool = False
    release_failures: int = 0

    def __enter__(self) -> DlqScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        """Batches (<= 10) of messages not seen before in this scan, each held."""
        started = self.clock()
        stale = 0
        while True:
            if self.clock() - started > self.deadline_seconds:
                self.timed_out = True
                return
            with aws_errors("ReceiveMessage"):
                messages = self.sqs.receive_message(
                    QueueUrl=self.dlq_url,
                    MaxNumberOfMessages=SQS_MAX_BATCH,
                    WaitTimeSeconds=SCAN_WAIT_SECONDS,
                    VisibilityTimeout=self.hold_seconds,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["All"],
                ).get("Messages", [])
            if not messages:
                return
            fresh = []
            for message in messages:
                message_id = message["MessageId"]
                self.held[message_id] = message["ReceiptHandle"]
                if message_id not in self.seen:
                    self.seen.add(message_id)
                    fresh.append(message)
            if fresh:
                stale = 0
                yield fresh
            else:
                stale += 1
                if stale >= SCAN_STALE_RECEIVES:
                    return

    def keep_hidden(self, message_id: str) -> None:
        """Do not release ``message_id``: deleted (by ``redrive``) or hidden on purpose."""
        self.held.pop(message_id, None)

    def release(self) -> None:
        """Make every held message visible again at once (visibility 0), in batches of 10.

        Best effort: a failed entry (its hold lapsed and it was received again elsewhere)
        comes back by itself when its hold ends; failures are counted.
        """
        items = list(self.held.items())
        self.held.clear()
        for start in range(0, len(items), SQS_MAX_BATCH):
            entries = [
                {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                for index, (_, handle) in enumerate(items[start : start + SQS_MAX_BATCH])
            ]
            try:
                with aws_errors("ChangeMessageVisibilityBatch"):
                    response = self.sqs.change_message_visibility_batch(
                        QueueUrl=self.dlq_url, Entries=entries
                    )
                self.release_failures += len(response.get("Failed", []))
            except Exception:  # noqa: BLE001 - releasing is best effort; the hold ends anyway
                self.release_failures += len(entries)


@dataclass
class Listing:
    """What ``dlq list`` saw: the selected dead letters' count, every one's reason counts."""

    listed: int = 0
    total: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    listed_by_reason: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False

    def summary(self) -> dict[str, Any]:
        """The closing JSON object of ``--json``."""
        return {
            "summary": True,
            "listed": self.listed,
            "total": self.total,
            "listed_by_reason": dict(sorted(self.listed_by_reason.items())),
            "by_reason": dict(sorted(self.by_reason.items())),
            "complete": not self.timed_out,
        }

    def summary_lines(self) -> list[str]:
        """The closing lines of the text output: counts by reason."""
        lines = [f"listed {self.listed} of {self.total} dead letter(s)"]
        for reason, count in sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            listed = self.listed_by_reason.get(reason, 0)
            shown = f" ({listed} listed)" if listed != count else ""
            lines.append(f"  {reason}: {count}{shown}")
        return lines


def list_dead_letters(
    sqs: Any,
    dlq_url: str,
    selection: Selection,
    on_entry: Callable[[DeadLetterInfo], None],
    *,
    hold_seconds: int = SCAN_HOLD_SECONDS,
) -> Listing:
    """Read the whole DLQ once, call ``on_entry`` for each selected dead letter (as soon as it
    is read: output streams, memory holds ids and handles only), and count every one by
    reason. Consumes nothing: every message is visible again when this returns."""
    listing = Listing()
    with DlqScan(sqs, dlq_url, hold_seconds=hold_seconds) as scan:
        for batch in scan.batches():
            for message in batch:
                info = parse_dead_letter(message)
                listing.total += 1
                listing.by_reason[info.reason_key] = listing.by_reason.get(info.reason_key, 0) + 1
                if selection.matches(info):
                    listing.listed += 1
                    key = info.reason_key
                    listing.listed_by_reason[key] = listing.listed_by_reason.get(key, 0) + 1
                    on_entry(info)
        listing.timed_out = scan.timed_out
    return listing
