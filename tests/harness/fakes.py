"""In-memory fakes of the job's adapters (:mod:`worker.protocols`) and of the queue, for unit
tests of :func:`worker.job.process_job` and :class:`worker.delivery.Delivery`: no socket, no
subprocess, milliseconds per test.

They keep the semantics the job depends on, not merely the shapes: the table's conditional
writes (a live lease of another owner, DONE for the same call end, a missing row), the store's
typed errors (a missing object, an object too large for scratch), the merger's files. Each
records its calls in ``calls`` and takes two knobs per method (or ``method:key`` for the
store): ``faults`` (raise this error) and ``hooks`` (await this first: change a row under the
job's feet, or stall until cancelled).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from worker.config import Settings
from worker.errors import (
    AlreadyDone,
    InvalidRow,
    JobError,
    LeaseHeld,
    ObjectNotFound,
    RowNotFound,
    ScratchFull,
    TooLargeForScratch,
    one_line,
)
from worker.keys import ObjectSummary
from worker.media import MP4, Container, MergeResult
from worker.media.sync import TIMESTAMP_ONLY, SyncResult
from worker.protocols import MergeInputs
from worker.queue import ReceivedMessage
from worker.recordings import (
    CALL_END_TOLERANCE_SECONDS,
    MAX_ERROR_CHARS,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PROCESSING,
    DoneRecord,
    RecordingRow,
    parse_creation_date,
)

INPUT_BUCKET = "unit-input"
CONNECT_BUCKET = "unit-connect"
OUTPUT_BUCKET = "unit-output"
CONNECT_ALIAS = "unit-instance"


def unit_settings(scratch: Path, **changes: Any) -> Settings:
    """Settings for in-memory jobs: the fakes' buckets, ``scratch`` as SCRATCH_DIR."""
    settings = Settings(
        ac_audio_bucket=CONNECT_BUCKET,
        input_bucket=INPUT_BUCKET,
        output_bucket=OUTPUT_BUCKET,
        connect_instance_alias=CONNECT_ALIAS,
        scratch_dir=scratch,
        worker_concurrency=2,
    )
    return replace(settings, **changes)


class Faked:
    """Calls recorded, faults raised and hooks awaited, per method name."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.faults: dict[str, BaseException] = {}
        self.hooks: dict[str, Callable[[], Awaitable[None]]] = {}

    def called(self, method: str) -> list[tuple[Any, ...]]:
        """The arguments of every call of ``method`` so far."""
        return [call[1:] for call in self.calls if call[0] == method]

    async def _enter(self, method: str, *args: Any, key: str | None = None) -> None:
        self.calls.append((method, *args))
        # A real await, as on the network: a cancellation can land here.
        await anyio.lowlevel.checkpoint()
        for name in (f"{method}:{key}", method) if key is not None else (method,):
            if name in self.hooks:
                await self.hooks[name]()
            if name in self.faults:
                raise self.faults[name]


class FakeTable(Faked):
    """The Recording table as plain dicts (attribute name -> Python value), with the
    conditions of :class:`worker.recordings.RecordingTable`'s writes."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, Any]] = {}
        self.clock = clock

    def put(self, recording_id: str, **attributes: Any) -> dict[str, Any]:
        """Store a row as the backend writes it; returns the live dict."""
        row = {"videoID": recording_id, **attributes}
        self.rows[recording_id] = row
        return row

    def _row(self, recording_id: str) -> dict[str, Any]:
        if recording_id not in self.rows:
            raise RowNotFound(f"no row for recording {recording_id} in the fake table")
        return self.rows[recording_id]

    def _lease_free(self, row: dict[str, Any], owner: str | None) -> bool:
        holder, expires = row.get("leaseOwner"), row.get("leaseExpiresAt")
        return holder is None or expires is None or expires < self.clock() or holder == owner

    def _lease_lost(self, recording_id: str, owner: str) -> LeaseHeld:
        holder = self._row(recording_id).get("leaseOwner") or "nobody"
        return LeaseHeld(f"recording {recording_id} is leased by {holder}, not {owner}")

    async def get(self, recording_id: str) -> RecordingRow:
        await self._enter("get", recording_id)
        row = self._row(recording_id)
        agent_id = row.get("agentID")
        if not isinstance(agent_id, str) or not agent_id.strip() or "/" in agent_id:
            raise InvalidRow(f"row {recording_id} has no agentID usable in an S3 key")
        if not isinstance(row.get("creationDate"), str):
            raise InvalidRow(f"row {recording_id} has no creationDate")
        return RecordingRow(
            recording_id=recording_id,
            agent_id=agent_id,
            creation_date=parse_creation_date(row["creationDate"]),
            status=row.get("processingStatus"),
            is_processed=bool(row.get("isProcessed")),
            call_end_seconds=row.get("callEndSeconds"),
            lease_owner=row.get("leaseOwner"),
            lease_expires_at=row.get("leaseExpiresAt"),
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
        await self._enter("claim_lease", recording_id, owner)
        row = self._row(recording_id)
        done_end = row.get("callEndSeconds")
        if (
            unless_done_call_end is not None
            and row.get("processingStatus") == STATUS_DONE
            and done_end is not None
            and abs(done_end - unless_done_call_end) <= call_end_tolerance
        ):
            raise AlreadyDone(f"recording {recording_id} is already done for this call end")
        if not self._lease_free(row, owner):
            raise self._lease_lost(recording_id, owner)
        row.update(
            leaseOwner=owner,
            leaseExpiresAt=round(self.clock() + lease_seconds, 3),
            processingStatus=STATUS_PROCESSING,
            processingAttempts=row.get("processingAttempts", 0) + 1,
        )
        if requested_call_end is not None:
            row["requestedCallEndSeconds"] = requested_call_end

    async def renew_lease(self, recording_id: str, owner: str, lease_seconds: int) -> None:
        await self._enter("renew_lease", recording_id, owner)
        row = self._row(recording_id)
        if row.get("leaseOwner") != owner:
            raise self._lease_lost(recording_id, owner)
        row["leaseExpiresAt"] = round(self.clock() + lease_seconds, 3)

    async def release_lease(self, recording_id: str, owner: str) -> None:
        await self._enter("release_lease", recording_id, owner)
        row = self.rows.get(recording_id)
        if row is None or row.get("leaseOwner") != owner:
            return
        del row["leaseOwner"]
        row.pop("leaseExpiresAt", None)
        if row.get("processingStatus") != STATUS_PROCESSING:
            return
        # Back to what the row's other attributes say it was before the claim.
        if row.get("videoKey") and row.get("isProcessed"):
            row["processingStatus"] = STATUS_DONE
        elif row.get("processingError"):
            row["processingStatus"] = STATUS_FAILED
        else:
            del row["processingStatus"]

    async def mark_done(self, recording_id: str, owner: str, done: DoneRecord) -> None:
        await self._enter("mark_done", recording_id, owner)
        row = self._row(recording_id)
        if row.get("leaseOwner") != owner:
            raise self._lease_lost(recording_id, owner)
        for name in ("leaseOwner", "leaseExpiresAt", "processingError"):
            row.pop(name, None)
        row.update(
            isProcessed=True,
            processingStatus=STATUS_DONE,
            videoKey=done.video_key,
            thumbnailKey=done.thumbnail_key,
            processedAt=datetime.now(UTC).isoformat(timespec="milliseconds"),
            mediaDurationSeconds=done.media_duration_seconds,
            callEndSeconds=done.call_end_seconds,
            connectAudioOffsetSeconds=done.connect_audio_offset_seconds,
            syncMethod=done.sync_method,
            syncOffsetSeconds=round(done.sync_offset_seconds, 6),
            syncConfidence=round(done.sync_confidence, 2),
            syncDriftPpm=round(done.sync_drift_ppm, 2),
        )

    async def mark_failed(
        self,
        recording_id: str,
        reason: str,
        *,
        owner: str | None = None,
        beside_live_lease: bool = False,
    ) -> None:
        await self._enter("mark_failed", recording_id, reason)
        row = self.rows.get(recording_id)
        if row is None or row.get("processingStatus") == STATUS_DONE:
            return
        failed = {
            "processingStatus": STATUS_FAILED,
            "processingError": one_line(reason, MAX_ERROR_CHARS) or "failed",
        }
        if self._lease_free(row, owner):
            row.pop("leaseOwner", None)
            row.pop("leaseExpiresAt", None)
            row.update(failed)
        elif beside_live_lease:
            row.update(failed)


@dataclass
class StoredObject:
    """One object of the fake store."""

    data: bytes
    last_modified: datetime
    content_type: str | None = None


class FakeStore(Faked):
    """Buckets as a dict of bytes. ``scratch_max_bytes`` as in the real store; ``free_bytes``
    plays a scratch disk with that much room left (:class:`ScratchFull` beyond it)."""

    def __init__(
        self, *, scratch_max_bytes: int | None = None, free_bytes: int | None = None
    ) -> None:
        super().__init__()
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.scratch_max_bytes = scratch_max_bytes
        self.free_bytes = free_bytes

    def put(
        self, bucket: str, key: str, data: bytes, *, last_modified: datetime | None = None
    ) -> None:
        """Store an object (modified now unless told)."""
        self.objects[bucket, key] = StoredObject(data, last_modified or datetime.now(UTC))

    def data(self, bucket: str, key: str) -> bytes:
        """An object's bytes (KeyError when absent)."""
        return self.objects[bucket, key].data

    def _summary(self, bucket: str, key: str) -> ObjectSummary:
        stored = self.objects.get((bucket, key))
        if stored is None:
            raise ObjectNotFound(bucket, key)
        return ObjectSummary(key, len(stored.data), stored.last_modified)

    async def list_prefix(
        self, bucket: str, prefix: str, *, page_size: int = 1000
    ) -> list[ObjectSummary]:
        await self._enter("list_prefix", bucket, prefix, key=prefix)
        keys = sorted(k for b, k in self.objects if b == bucket and k.startswith(prefix))
        return [self._summary(bucket, key) for key in keys]

    async def head(self, bucket: str, key: str) -> ObjectSummary:
        await self._enter("head", bucket, key, key=key)
        return self._summary(bucket, key)

    async def download(self, bucket: str, key: str, destination: Path) -> int:
        await self._enter("download", bucket, key, key=key)
        summary = self._summary(bucket, key)
        self.check_fits(destination.parent, summary.size)
        destination.write_bytes(self.data(bucket, key))
        return summary.size

    async def upload(self, source: Path, bucket: str, key: str, *, content_type: str) -> int:
        await self._enter("upload", bucket, key, key=key)
        data = source.read_bytes()
        self.objects[bucket, key] = StoredObject(data, datetime.now(UTC), content_type)
        return len(data)

    def check_fits(self, directory: Path, size: int) -> None:
        if self.scratch_max_bytes is not None and size > self.scratch_max_bytes:
            raise TooLargeForScratch(
                f"object of {size} bytes exceeds SCRATCH_MAX_BYTES={self.scratch_max_bytes}"
            )
        if self.free_bytes is not None and size > self.free_bytes:
            raise ScratchFull(
                f"object of {size} bytes does not fit in {self.free_bytes} free scratch bytes"
            )


@dataclass
class FakeMerger:
    """The media engine: writes ``merged:<recording>|<connect>`` as the output (so a test
    sees which inputs went in) and a small thumbnail; returns what the real merge returns.

    ``error``: raised instead. ``stall``: once called, waits until cancelled (``started``
    is set either way)."""

    container: Container = MP4
    media_duration_seconds: float = 12.5
    connect_audio_offset_seconds: float = 0.25
    sync: SyncResult = TIMESTAMP_ONLY
    error: BaseException | None = None
    stall: bool = False
    calls: list[MergeInputs] = field(default_factory=list)
    started: anyio.Event = field(default_factory=anyio.Event)

    async def __call__(self, inputs: MergeInputs, /) -> MergeResult:
        self.calls.append(inputs)
        self.started.set()
        await anyio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        if self.stall:
            await anyio.sleep_forever()
        output = inputs.workdir / f"recording.{self.container.extension}"
        merged = b"merged:" + inputs.recording.read_bytes() + b"|"
        output.write_bytes(merged + inputs.connect_audio.read_bytes())
        inputs.thumbnail.write_bytes(b"\x89PNG thumbnail")
        call_end = min(inputs.call_end_seconds, self.media_duration_seconds)
        return MergeResult(
            output=output,
            thumbnail=inputs.thumbnail,
            container=self.container,
            media_duration_seconds=self.media_duration_seconds,
            call_end_seconds=call_end,
            call_end_clamped=call_end < inputs.call_end_seconds,
            connect_duration_seconds=call_end,
            connect_audio_offset_seconds=self.connect_audio_offset_seconds,
            sync=self.sync,
        )


class FakeQueue:
    """The job queue as :class:`worker.settlement.Settler` uses it: what it was told to do."""

    def __init__(self, max_receive_count: int | None = 5) -> None:
        self.max_receive_count = max_receive_count
        self.deleted: list[str] = []
        self.dead_lettered: list[tuple[str, JobError]] = []
        self.visibility: list[tuple[str, int]] = []

    async def change_visibility(self, message: ReceivedMessage, seconds: int) -> None:
        self.visibility.append((message.message_id, seconds))

    async def delete(self, message: ReceivedMessage) -> None:
        self.deleted.append(message.message_id)

    async def dead_letter(self, message: ReceivedMessage, error: JobError) -> None:
        self.dead_lettered.append((message.message_id, error))
