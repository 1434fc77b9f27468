"""``backfill``: re-enqueue the Recording rows of a creation-date range (issue 16).

After an outage or a bad deploy the rows left FAILED (or never processed) can be sent to the
queue again from the table alone: the worker keeps the call end each message asked for on the
row when it claims it (``requestedCallEndSeconds``, :data:`worker.recordings.REQUESTED_CALL_END`),
and a DONE row keeps ``callEndSeconds``. A row no worker ever claimed has no call end anywhere:
it is listed as skipped, never guessed.

Reading: a paginated Scan (``Limit`` items per page) with a FilterExpression on
``creationDate``, handled page by page, so memory holds one page and one batch, whatever the
table's size. The filter compares strings and is widened by a day on each side (``creationDate``
is ``yyyy-MM-dd HH:mm:ss`` or ISO 8601, possibly with an offset); the exact range is applied to
the parsed date here. A Scan reads the whole table (its cost is the table's size, not the
range's): a global secondary index on ``creationDate`` would make this a Query, but the table
belongs to the backend, which defines no such index, and a day-by-day backfill is rare enough
that a Scan is cheaper than an index written on every row forever.

Sending: the SPEC §2 body, batches of at most 10, paced by a token bucket
(:mod:`worker.ratelimit`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal

from worker.admin import aws_errors
from worker.errors import ConfigError, InvalidRow
from worker.messages import JobMessage, format_timestamp, validate_recording_id
from worker.queue import SQS_MAX_BATCH
from worker.ratelimit import TokenBucket
from worker.recordings import (
    PARTITION_KEY,
    REQUESTED_CALL_END,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PROCESSING,
    parse_creation_date,
    read_bool,
    read_number,
    read_string,
)

StatusChoice = Literal["failed", "unprocessed", "all"]
STATUS_CHOICES: Final = ("failed", "unprocessed", "all")
# Items DynamoDB evaluates per Scan page: what the command holds in memory at most.
PAGE_SIZE: Final = 500
DEFAULT_RATE: Final = 10.0
# Attributes read from each row (nothing else is transferred).
_PROJECTED: Final = (
    PARTITION_KEY,
    "creationDate",
    "processingStatus",
    "isProcessed",
    "videoKey",
    REQUESTED_CALL_END,
    "callEndSeconds",
    "leaseExpiresAt",
)
# The row states backfill tells apart.
DONE, FAILED, IN_PROGRESS, UNPROCESSED = "DONE", "FAILED", "IN_PROGRESS", "UNPROCESSED"
_SELECTED: Final[dict[str, frozenset[str]]] = {
    "failed": frozenset({FAILED}),
    "unprocessed": frozenset({UNPROCESSED, IN_PROGRESS}),
    "all": frozenset({DONE, FAILED, UNPROCESSED, IN_PROGRESS}),
}


@dataclass(frozen=True)
class Window:
    """``[start, end)`` in UTC."""

    start: datetime
    end: datetime

    def contains(self, moment: datetime) -> bool:
        """Whether ``moment`` lies in the window."""
        return self.start <= moment < self.end

    def scan_bounds(self) -> tuple[str, str]:
        """String bounds for the Scan's filter (``>= lo AND < hi``), a day wider on each side
        so that offsets and both spellings of ``creationDate`` fall inside (pure)."""
        # Clamped to datetime's range: a window from 0001-01-01 or to 9999-12-30 is valid.
        low = self.start - min(timedelta(days=1), self.start - datetime.min.replace(tzinfo=UTC))
        high = self.end + min(timedelta(days=2), datetime.max.replace(tzinfo=UTC) - self.end)
        return low.date().isoformat(), high.date().isoformat()


def _moment(text: str, option: str) -> tuple[datetime, bool]:
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC), True
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{option} {value[:40]!r}: must be a date (2026-11-28) or an ISO 8601 time"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC), False


def parse_window(start_text: str, end_text: str) -> Window:
    """``--from``/``--to``: dates (the ``--to`` day included) or ISO 8601 times (``--to``
    excluded), UTC unless an offset is given. :class:`ConfigError` when empty or reversed."""
    start, _ = _moment(start_text, "--from")
    end, whole_day = _moment(end_text, "--to")
    if whole_day:
        if end.date() == date.max:
            # ``--to 9999-12-31`` would end past datetime's range (an OverflowError).
            raise ConfigError(f"--to {end_text.strip()[:40]!r}: date out of range")
        end += timedelta(days=1)
    if end <= start:
        raise ConfigError("--to must not be before --from")
    return Window(start, end)


@dataclass(frozen=True)
class RowView:
    """What backfill reads of one row."""

    recording_id: str
    creation_date: datetime | None
    state: str
    call_end: float | None
    lease_expires_at: float | None


def row_state(item: Mapping[str, Any], now: float) -> str:
    """DONE, FAILED, IN_PROGRESS (a live lease) or UNPROCESSED (never processed, or a lease
    that expired with the row still PROCESSING: its message is gone) (pure)."""
    status = read_string(item.get("processingStatus"))
    if status == STATUS_DONE:
        return DONE
    if status == STATUS_FAILED:
        return FAILED
    if status == STATUS_PROCESSING:
        expires = read_number(item.get("leaseExpiresAt"))
        return IN_PROGRESS if expires is not None and expires > now else UNPROCESSED
    # Rows the Lambda processed have isProcessed and no processingStatus.
    if read_bool(item.get("isProcessed")):
        return DONE
    return UNPROCESSED


def view(item: Mapping[str, Any], now: float) -> RowView:
    """A raw (low-level) DynamoDB item as :class:`RowView` (pure)."""
    created = read_string(item.get("creationDate"))
    try:
        creation = parse_creation_date(created) if created is not None else None
    except InvalidRow:
        creation = None
    call_end = read_number(item.get(REQUESTED_CALL_END))
    if call_end is None:
        call_end = read_number(item.get("callEndSeconds"))
    return RowView(
        recording_id=read_string(item.get(PARTITION_KEY)) or "",
        creation_date=creation,
        state=row_state(item, now),
        call_end=call_end,
        lease_expires_at=read_number(item.get("leaseExpiresAt")),
    )


@dataclass(frozen=True)
class Decision:
    """``send`` the job, or skip it (``why``)."""

    send: bool
    why: str
    job: JobMessage | None = None


def decide(row: RowView, status: StatusChoice, *, force: bool) -> Decision | None:
    """What to do with a row in the window; None when ``--status`` does not select it (pure)."""
    if row.state not in _SELECTED[status]:
        return None
    if row.state == IN_PROGRESS:
        return Decision(False, "in progress (a worker holds its lease)")
    if row.state == DONE and not force:
        return Decision(False, "DONE (re-enqueued only with --force)")
    if row.call_end is None:
        return Decision(False, "no call end known (never claimed by a worker)")
    try:
        validate_recording_id(row.recording_id)
    except ValueError:
        return Decision(False, "recording id unusable in a message")
    # A DONE row's message must say so, or the worker acknowledges it as a duplicate.
    job = JobMessage(row.recording_id, row.call_end, reprocess=row.state == DONE)
    return Decision(True, f"call end {format_timestamp(row.call_end)}", job)


@dataclass
class BackfillResult:
    """Counts of one run; ``pages`` and ``largest_page`` show that memory stayed per page."""

    enqueued: int = 0
    skipped: int = 0
    failed: int = 0
    not_selected: int = 0
    outside: int = 0
    pages: int = 0
    largest_page: int = 0
    skipped_by_why: dict[str, int] = field(default_factory=dict)

    def summary_lines(self, dry_run: bool) -> list[str]:
        """The closing lines: counts."""
        verb = "would enqueue" if dry_run else "enqueued"
        lines = [
            f"{verb} {self.enqueued}, skipped {self.skipped}, failed {self.failed}, "
            f"not selected by --status {self.not_selected}; {self.pages} page(s) scanned"
        ]
        lines += [f"  skipped: {why}: {n}" for why, n in sorted(self.skipped_by_why.items())]
        return lines


@dataclass
class Backfill:
    """One backfill run (the I/O edge): Scan pages in, batches of messages out."""

    dynamodb: Any
    sqs: Any
    table_name: str
    queue_url: str
    status: StatusChoice = "failed"
    force: bool = False
    dry_run: bool = False
    rate: float = DEFAULT_RATE
    page_size: int = PAGE_SIZE
    on_line: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall: Callable[[], float] = time.time
    result: BackfillResult = field(default_factory=BackfillResult)

    def __post_init__(self) -> None:
        capacity = max(1.0, min(float(SQS_MAX_BATCH), self.rate))
        self._bucket = TokenBucket(self.rate, capacity)
        self._batch_size = int(capacity)
        self._pending: list[tuple[RowView, Decision]] = []

    def run(self, window: Window) -> BackfillResult:
        """Scan the table for ``window`` and enqueue (or list) every selected row."""
        low, high = window.scan_bounds()
        names = {f"#a{index}": name for index, name in enumerate(_PROJECTED)}
        created = next(key for key, name in names.items() if name == "creationDate")
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "Limit": self.page_size,
            "ProjectionExpression": ", ".join(names),
            "FilterExpression": f"{created} >= :low AND {created} < :high",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {":low": {"S": low}, ":high": {"S": high}},
        }
        while True:
            with aws_errors("Scan"):
                page = self.dynamodb.scan(**request)
            items = page.get("Items", [])
            self.result.pages += 1
            self.result.largest_page = max(self.result.largest_page, len(items))
            for item in items:
                self._row(view(item, self.wall()), window)
            self._flush()
            start_key = page.get("LastEvaluatedKey")
            if not start_key:
                return self.result
            request["ExclusiveStartKey"] = start_key

    def _row(self, row: RowView, window: Window) -> None:
        if row.creation_date is None or not window.contains(row.creation_date):
            if row.creation_date is None:
                self._skip(row, "creationDate unreadable")
            else:
                self.result.outside += 1
            return
        decision = decide(row, self.status, force=self.force)
        if decision is None:
            self.result.not_selected += 1
        elif not decision.send:
            self._skip(row, decision.why)
        elif self.dry_run:
            self.result.enqueued += 1
            self.on_line(f"would enqueue  {row.recording_id}  {row.state}  {decision.why}")
        else:
            self._pending.append((row, decision))
            if len(self._pending) >= self._batch_size:
                self._flush()

    def _skip(self, row: RowView, why: str) -> None:
        self.result.skipped += 1
        self.result.skipped_by_why[why] = self.result.skipped_by_why.get(why, 0) + 1
        self.on_line(f"skipped  {row.recording_id or '-'}  {row.state}  {why}")

    def _flush(self) -> None:
        while self._pending:
            size = self._batch_size
            batch, self._pending = self._pending[:size], self._pending[size:]
            wait = self._bucket.delay(len(batch), self.clock())
            if wait > 0:
                self.sleep(wait)
            self._bucket.take(len(batch), self.clock())
            entries = [
                {"Id": str(index), "MessageBody": decision.job.to_body()}
                for index, (_, decision) in enumerate(batch)
                if decision.job is not None
            ]
            with aws_errors("SendMessageBatch"):
                response = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            sent = {e["Id"]: e.get("MessageId", "") for e in response.get("Successful", [])}
            failures = {e["Id"]: e.get("Code", "failed") for e in response.get("Failed", [])}
            for index, (row, decision) in enumerate(batch):
                if str(index) in sent:
                    self.result.enqueued += 1
                    self.on_line(
                        f"enqueued  {row.recording_id}  {row.state}  {decision.why}  "
                        f"message={sent[str(index)]}"
                    )
                else:
                    self.result.failed += 1
                    code = failures.get(str(index), "failed")
                    self.on_line(
                        f"failed  {row.recording_id}  {row.state}  SendMessageBatch: {code}"
                    )
