"""The Recording row (SPEC §4) and its DynamoDB repository (the S3 key layout: :mod:`worker.keys`).

The backend owns the row: this package never puts a whole item. Every write is an UpdateItem
that names exactly the attributes it sets or removes, guarded by a condition expression, so
attributes the worker does not know about are never touched. One concept per module; what
callers use is re-exported here (``from worker.recordings import RecordingTable``):

- :mod:`~worker.recordings.codec`: the row's fields, what a successful job writes, the
  attribute encodings (pure);
- :mod:`~worker.recordings.access`: reading a row, the conditional UpdateItem;
- :mod:`~worker.recordings.lease`: claim, renew and release the lease;
- :mod:`~worker.recordings.status`: mark a row DONE or FAILED;
- :mod:`~worker.recordings.table`: :class:`RecordingTable`, all of it in one object.
"""

from __future__ import annotations

from worker.recordings.codec import (
    CALL_END_TOLERANCE_SECONDS,
    MAX_ERROR_CHARS,
    PARTITION_KEY,
    REQUESTED_CALL_END,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PROCESSING,
    DoneRecord,
    RecordingRow,
    parse_creation_date,
    read_bool,
    read_number,
    read_string,
)
from worker.recordings.table import RecordingTable

__all__ = [
    "CALL_END_TOLERANCE_SECONDS",
    "MAX_ERROR_CHARS",
    "PARTITION_KEY",
    "REQUESTED_CALL_END",
    "STATUS_DONE",
    "STATUS_FAILED",
    "STATUS_PROCESSING",
    "DoneRecord",
    "RecordingRow",
    "RecordingTable",
    "parse_creation_date",
    "read_bool",
    "read_number",
    "read_string",
]
