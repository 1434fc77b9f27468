"""The Recording row's DynamoDB I/O that every write goes through (:class:`RowAccess`).

The backend owns the row: this package never puts a whole item. Every write is an UpdateItem
that names exactly the attributes it sets or removes, guarded by a condition expression, so
attributes the worker does not know about are never touched.
"""

from __future__ import annotations

from typing import Any

from worker.aws import DYNAMODB, error_code, translated
from worker.errors import ConditionFailed, LeaseHeld, RowNotFound
from worker.recordings.codec import PARTITION_KEY, RecordingRow, decode_row, read_string, string

_CONDITION_FAILED = "ConditionalCheckFailedException"


def _condition_failed(error: BaseException) -> BaseException | None:
    return ConditionFailed() if error_code(error) == _CONDITION_FAILED else None


class RowAccess:
    """Reads of a Recording row and the one conditional UpdateItem every write uses."""

    def __init__(self, dynamodb_client: Any, table_name: str) -> None:
        self._db = dynamodb_client
        self.table_name = table_name

    def _key(self, recording_id: str) -> dict[str, dict[str, str]]:
        return {PARTITION_KEY: string(recording_id)}

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
        return decode_row(recording_id, item)

    async def _raise_lease_lost(self, recording_id: str, owner: str) -> None:
        item = await self._raw(recording_id)
        if item is None:
            raise RowNotFound(f"no row for recording {recording_id} in {self.table_name}")
        holder = read_string(item.get("leaseOwner")) or "nobody"
        raise LeaseHeld(f"recording {recording_id} is leased by {holder}, not {owner}")
