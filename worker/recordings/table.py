"""The Recording table (:class:`RecordingTable`): the row's reads, its lease and its status
transitions, in one object (what :class:`worker.protocols.Table` describes)."""

from __future__ import annotations

from worker.recordings.lease import LeaseWrites
from worker.recordings.status import StatusWrites


class RecordingTable(LeaseWrites, StatusWrites):
    """Reads and conditional updates of Recording rows.

    Reads and the conditional UpdateItem: :class:`~worker.recordings.access.RowAccess`; the
    lease: :class:`~worker.recordings.lease.LeaseWrites`; DONE and FAILED:
    :class:`~worker.recordings.status.StatusWrites`.
    """
