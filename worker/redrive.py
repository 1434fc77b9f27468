"""``redrive``: move the selected dead letters back to the job queue (issue 16).

The DLQ is read with :class:`worker.deadletters.DlqScan` (every message once, held while the
command runs). A selected message is **sent to the queue first** (its original body and the
producer's own attributes, without the worker's dead-letter attributes) and **then deleted
from the DLQ**, one batch of at most 10 at a time. Messages that are not selected are never
touched: no send, no delete, the same MessageId, body and attributes; they are only made
visible again when the command ends.

The window: a process killed between a batch's SendMessageBatch and its DeleteMessageBatch
leaves those (<= 10) messages in both queues. Nothing is lost; the DLQ copies reappear when
the hold ends and a later redrive sends them again, a duplicate the worker acknowledges
without work once the recording is DONE (SPEC §6). Never the other way round: a message is
deleted only after its send succeeded.

A sent message whose DLQ copy cannot be deleted (a ``Failed`` entry of DeleteMessageBatch,
retried) is reported, not counted as moved, and hidden in the DLQ for just under 12 hours so
that the next redrive does not send it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from worker import admin
from worker.admin import aws_errors, resolve_dlq_url
from worker.config import SQS_MAX_VISIBILITY_SECONDS
from worker.deadletters import (
    SCAN_HOLD_SECONDS,
    DeadLetterInfo,
    DlqScan,
    Selection,
    parse_dead_letter,
)
from worker.errors import ConfigError
from worker.queue import DLQ_ATTRIBUTE_NAMES, SQS_BATCH_LIMIT, SQS_MAX_BATCH, message_bytes

# Message attributes the worker adds when it dead-letters a message
# (worker/queue/attributes.py); a redriven message goes back without them, like the original.
DEAD_LETTER_ATTRIBUTES: Final = frozenset(DLQ_ATTRIBUTE_NAMES)
# Attempts at deleting a sent message's DLQ copy, and the pause before each retry.
DELETE_ATTEMPTS: Final = 3
DELETE_RETRY_SECONDS: Final = 0.5
# How long a re-sent message whose DLQ copy could not be deleted is hidden: under SQS's
# 12-hour limit, which counts from the message's receipt.
HIDE_SECONDS: Final = SQS_MAX_VISIBILITY_SECONDS - 600


@dataclass
class RedriveResult:
    """What ``redrive`` did.

    ``moved``: sent and deleted from the DLQ. ``failed``: could not be sent; still in the DLQ.
    ``not_deleted``: ids of sent messages whose DLQ copy could not be deleted (hidden 12 h).
    ``kept``: dead letters not selected, left as they were. ``selected``: matched the
    selection (in a dry run: what would move). ``complete``: the whole DLQ was read.
    """

    dlq_url: str
    moved: int = 0
    failed: int = 0
    kept: int = 0
    selected: int = 0
    not_deleted: list[str] = field(default_factory=list)
    complete: bool = True


def redrive(
    queue_url: str,
    dlq_url: str | None = None,
    *,
    selection: Selection | None = None,
    max_messages: int | None = None,
    dry_run: bool = False,
    on_entry: Callable[[str, DeadLetterInfo], None] | None = None,
    sqs: Any | None = None,
    hold_seconds: int = SCAN_HOLD_SECONDS,
    delete_retry_seconds: float = DELETE_RETRY_SECONDS,
) -> RedriveResult:
    """Move the dead letters ``selection`` picks (all by default), at most ``max_messages``.

    ``on_entry(action, info)`` is told of each selected message as it is handled: ``moved``,
    ``would move`` (dry run), ``not sent`` or ``not deleted``.
    """
    if max_messages is not None and max_messages <= 0:
        raise ConfigError("--max-messages must be a positive integer")
    client = sqs or admin.sqs_client()
    source = resolve_dlq_url(queue_url, dlq_url, sqs=client)
    if source.rstrip("/") == queue_url.rstrip("/"):
        # Receiving and re-sending on one queue would loop.
        raise ConfigError("the DLQ and the queue are the same queue; nothing to redrive")
    chosen = selection or Selection()
    report = on_entry or (lambda action, info: None)
    result = RedriveResult(dlq_url=source)
    with DlqScan(client, source, hold_seconds=hold_seconds) as scan:
        for batch in scan.batches():
            picked: list[tuple[dict[str, Any], DeadLetterInfo]] = []
            for message in batch:
                info = parse_dead_letter(message)
                room = max_messages is None or result.selected < max_messages
                if room and chosen.matches(info):
                    result.selected += 1
                    picked.append((message, info))
                else:
                    result.kept += 1
            if dry_run:
                for _, info in picked:
                    report("would move", info)
            else:
                for chunk in by_payload(picked):
                    _move(
                        client, queue_url, source, chunk, scan, result, report, delete_retry_seconds
                    )
            if max_messages is not None and result.selected >= max_messages:
                break
        result.complete = not scan.timed_out
    return result


def _move(
    client: Any,
    queue_url: str,
    source: str,
    picked: list[tuple[dict[str, Any], DeadLetterInfo]],
    scan: DlqScan,
    result: RedriveResult,
    report: Callable[[str, DeadLetterInfo], None],
    retry_seconds: float,
) -> None:
    """Send one batch (<= 10), then delete from the DLQ exactly the entries that were sent."""
    entries = [send_entry(str(index), message) for index, (message, _) in enumerate(picked)]
    with aws_errors("SendMessageBatch"):
        response = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
    ok = {int(entry["Id"]) for entry in response.get("Successful", [])}
    sent = [(message, info) for index, (message, info) in enumerate(picked) if index in ok]
    for index, (_, info) in enumerate(picked):
        if index not in ok:
            result.failed += 1  # still held: released (visible again) when the scan ends
            report("not sent", info)
    handles = {message["MessageId"]: message["ReceiptHandle"] for message, _ in sent}
    undeleted = _delete(client, source, handles, retry_seconds)
    for message, info in sent:
        message_id = message["MessageId"]
        scan.keep_hidden(message_id)  # deleted, or hidden on purpose just below
        if message_id in undeleted:
            result.not_deleted.append(message_id)
            report("not deleted", info)
        else:
            result.moved += 1
            report("moved", info)
    _hide(client, source, {mid: undeleted[mid] for mid in undeleted})


def _delete(
    client: Any, source: str, handles: Mapping[str, str], retry_seconds: float
) -> dict[str, str]:
    """Delete the DLQ copies (one batch); retry failed entries. Returns those left undeleted."""
    pending = dict(handles)
    for attempt in range(DELETE_ATTEMPTS):
        if not pending:
            break
        if attempt:
            time.sleep(retry_seconds * attempt)
        ids = sorted(pending)
        entries = [
            {"Id": str(index), "ReceiptHandle": pending[message_id]}
            for index, message_id in enumerate(ids)
        ]
        with aws_errors("DeleteMessageBatch"):
            response = client.delete_message_batch(QueueUrl=source, Entries=entries)
        for entry in response.get("Successful", []):
            pending.pop(ids[int(entry["Id"])], None)
    return pending


def _hide(client: Any, source: str, handles: Mapping[str, str]) -> None:
    """Best effort: keep DLQ copies of already re-sent messages out of the next redrive."""
    items = list(handles.items())
    for start in range(0, len(items), SQS_MAX_BATCH):
        entries = [
            {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": HIDE_SECONDS}
            for index, (_, handle) in enumerate(items[start : start + SQS_MAX_BATCH])
        ]
        try:
            with aws_errors("ChangeMessageVisibilityBatch"):
                client.change_message_visibility_batch(QueueUrl=source, Entries=entries)
        except Exception:  # noqa: BLE001, S110 - reported as not deleted all the same
            pass


def by_payload(
    picked: list[tuple[dict[str, Any], DeadLetterInfo]], limit: int = SQS_BATCH_LIMIT
) -> list[list[tuple[dict[str, Any], DeadLetterInfo]]]:
    """``picked`` in consecutive chunks whose re-sent payload (bodies + kept attributes) fits one
    SendMessageBatch (pure). SQS refuses a whole batch over ``limit`` (BatchRequestTooLong), so
    ten large dead letters would otherwise block every redrive; a message alone always goes."""
    chunks: list[list[tuple[dict[str, Any], DeadLetterInfo]]] = []
    size = 0
    for pair in picked:
        entry = send_entry("0", pair[0])
        need = message_bytes(entry["MessageBody"], entry.get("MessageAttributes"))
        if not chunks or size + need > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(pair)
        size += need
    return chunks


def send_entry(entry_id: str, message: Mapping[str, Any]) -> dict[str, Any]:
    """The SendMessageBatch entry re-sending ``message``: body and producer attributes, without
    the worker's dead-letter attributes (pure)."""
    entry: dict[str, Any] = {"Id": entry_id, "MessageBody": message["Body"]}
    attributes: dict[str, Any] = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        if name in DEAD_LETTER_ATTRIBUTES:
            continue
        kept = {"DataType": value["DataType"]}
        for field_name in ("StringValue", "BinaryValue"):
            if field_name in value:
                kept[field_name] = value[field_name]
        attributes[name] = kept
    if attributes:
        entry["MessageAttributes"] = attributes
    return entry
