"""What a job needs from the outside world, as small protocols (SPEC §1's adapters).

:func:`worker.job.process_job` talks to three things: the Recording table (:class:`Table`),
the object store (:class:`Store`) and the media engine (:class:`Merger`). Each is named here
by what the job calls on it, with the signatures of the real adapters
(:class:`worker.recordings.RecordingTable`, :class:`worker.storage.ObjectStore`,
:func:`worker.job.probe_and_merge`), so ``mypy --strict`` checks that they fit and the unit
tests run the job's steps against in-memory fakes (``tests/harness/fakes.py``) in milliseconds.

The meaning, not only the shape, is part of each protocol: the docstrings say which typed
errors a method raises, since the job (and :mod:`worker.outcome`) depend on exactly those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from worker.keys import ObjectSummary
from worker.media import MergeOptions, MergeResult
from worker.recordings import CALL_END_TOLERANCE_SECONDS, DoneRecord, RecordingRow

__all__ = ["MergeInputs", "Merger", "Store", "Table"]


class Table(Protocol):
    """The Recording table (SPEC §4): one row per recording, every write conditional."""

    async def get(self, recording_id: str) -> RecordingRow:
        """The row, read strongly consistent; :class:`~worker.errors.RowNotFound` when
        absent, :class:`~worker.errors.InvalidRow` when unusable in a key."""
        ...

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
        """Take the lease, mark PROCESSING, count the attempt. :class:`~worker.errors.LeaseHeld`
        while another owner's lease is live; :class:`~worker.errors.AlreadyDone` when the row
        is DONE for ``unless_done_call_end``; :class:`~worker.errors.RowNotFound`."""
        ...

    async def renew_lease(self, recording_id: str, owner: str, lease_seconds: int) -> None:
        """Extend our lease; :class:`~worker.errors.LeaseHeld` once another owner took it."""
        ...

    async def release_lease(self, recording_id: str, owner: str) -> None:
        """Give our lease up, the status back to what it was; a no-op if not ours."""
        ...

    async def mark_done(self, recording_id: str, owner: str, done: DoneRecord) -> None:
        """Record success and drop the lease; :class:`~worker.errors.LeaseHeld` if lost."""
        ...

    async def mark_failed(
        self,
        recording_id: str,
        reason: str,
        *,
        owner: str | None = None,
        beside_live_lease: bool = False,
    ) -> None:
        """Record a permanent failure; never over DONE, never over another live lease."""
        ...


class Store(Protocol):
    """The object store (S3): the input, Connect and output buckets."""

    async def list_prefix(
        self, bucket: str, prefix: str, *, page_size: int = 1000
    ) -> list[ObjectSummary]:
        """Every object under ``prefix``, in key order."""
        ...

    async def head(self, bucket: str, key: str) -> ObjectSummary:
        """One object's size and time; :class:`~worker.errors.ObjectNotFound` if absent."""
        ...

    async def download(self, bucket: str, key: str, destination: Path) -> int:
        """The object to ``destination``, its size returned;
        :class:`~worker.errors.ObjectNotFound`, :class:`~worker.errors.ScratchFull`."""
        ...

    async def upload(self, source: Path, bucket: str, key: str, *, content_type: str) -> int:
        """``source`` to ``s3://bucket/key``; its size returned."""
        ...

    def check_fits(self, directory: Path, size: int) -> None:
        """:class:`~worker.errors.TooLargeForScratch` when ``size`` bytes can never be
        downloaded into ``directory``, :class:`~worker.errors.ScratchFull` when not now."""
        ...


@dataclass(frozen=True)
class MergeInputs:
    """One job's merge: both inputs on disk, the call end, where the results go.

    The output's name is the merger's to choose (its container depends on the recording's
    video codec, known only once probed): it goes into ``workdir`` and is returned in
    :attr:`MergeResult.output`. The thumbnail is written to ``thumbnail``.
    """

    recording: Path
    connect_audio: Path
    call_end_seconds: float
    workdir: Path
    thumbnail: Path
    # How the recording is named in errors (the row and the DLQ say which input failed).
    name: str
    options: MergeOptions


class Merger(Protocol):
    """The media engine (SPEC §5): probe both inputs, merge them, check the output.

    Raises :class:`~worker.errors.MediaError` and its subclasses (permanent),
    :class:`~worker.errors.MediaTimeout` (transient), :class:`~worker.errors.ScratchFull`.
    """

    async def __call__(self, inputs: MergeInputs, /) -> MergeResult: ...
