"""The Recording table on a real moto server: claims, leases, done and failed rows (the pure key
layout is tests/unit/test_recordings.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.harness.fixtures_aws import AwsEnv, create_table
from worker.aws import AwsClients
from worker.errors import (
    AlreadyDone,
    InvalidRow,
    LeaseHeld,
    RowNotFound,
)
from worker.recordings import (
    REQUESTED_CALL_END,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PROCESSING,
    DoneRecord,
    RecordingTable,
)

RID = "7165d412-7fe0-4fb6-81ae-68b135a26f7c"

# --- parse_creation_date ---------------------------------------------------------------------


# --- keys_for --------------------------------------------------------------------------------


# --- choose_connect_audio --------------------------------------------------------------------


# --- RecordingTable on moto ------------------------------------------------------------------

pytest_anyio = pytest.mark.anyio


@dataclass
class Db:
    """A fresh Recording table, the repository under test and boto3 helpers to seed/inspect."""

    table: RecordingTable
    name: str
    boto: Any

    def seed(self, recording_id: str = RID, **extra: Any) -> dict[str, Any]:
        item: dict[str, Any] = {
            "videoID": {"S": recording_id},
            "agentID": {"S": "agent-42"},
            "creationDate": {"S": "2024-03-05 10:00:00"},
            "title": {"S": "backend-owned"},
            "tags": {"SS": ["a", "b"]},
            "nested": {"M": {"k": {"N": "1"}}},
            "isProcessed": {"BOOL": False},
        }
        item.update(extra)
        self.boto.put_item(TableName=self.name, Item=item)
        return item

    def row(self, recording_id: str = RID) -> dict[str, Any]:
        response = self.boto.get_item(
            TableName=self.name, Key={"videoID": {"S": recording_id}}, ConsistentRead=True
        )
        item: dict[str, Any] = response.get("Item", {})
        return item


@pytest.fixture
def db(world: AwsEnv, clients: AwsClients) -> Db:
    name = create_table(world, wait=False)
    return Db(RecordingTable(clients.dynamodb, name), name, world.client("dynamodb"))


@pytest_anyio
async def test_get_reads_the_row(db: Db) -> None:
    db.seed(callEndSeconds={"N": "14.5"}, processingStatus={"S": "DONE"})
    row = await db.table.get(RID)
    assert row.recording_id == RID
    assert row.agent_id == "agent-42"
    assert row.creation_date == datetime(2024, 3, 5, 10, tzinfo=UTC)
    assert row.status == STATUS_DONE
    assert row.is_processed is False
    assert row.call_end_seconds == 14.5
    assert row.lease_owner is None


@pytest_anyio
async def test_get_missing_row_and_invalid_rows(db: Db) -> None:
    with pytest.raises(RowNotFound):
        await db.table.get("nope")
    db.boto.put_item(TableName=db.name, Item={"videoID": {"S": "no-agent"}})
    with pytest.raises(InvalidRow, match="agentID"):
        await db.table.get("no-agent")
    db.seed("bad-date", creationDate={"S": "05/03/2024"})
    with pytest.raises(InvalidRow, match="creationDate"):
        await db.table.get("bad-date")
    db.seed("slash-agent", agentID={"S": "../etc"})
    with pytest.raises(InvalidRow, match="agentID"):
        await db.table.get("slash-agent")


@pytest_anyio
async def test_claim_lease_excludes_a_second_owner(db: Db) -> None:
    db.seed()
    await db.table.claim_lease(RID, "worker-a", 300)
    row = db.row()
    assert row["leaseOwner"] == {"S": "worker-a"}
    assert float(row["leaseExpiresAt"]["N"]) > time.time() + 200
    assert row["processingStatus"] == {"S": STATUS_PROCESSING}
    assert row["processingAttempts"] == {"N": "1"}

    with pytest.raises(LeaseHeld, match="worker-a"):
        await db.table.claim_lease(RID, "worker-b", 300)
    assert db.row()["leaseOwner"] == {"S": "worker-a"}
    # The owner itself may re-claim (a redelivery to the same worker).
    await db.table.claim_lease(RID, "worker-a", 300)
    assert db.row()["processingAttempts"] == {"N": "2"}


@pytest_anyio
async def test_claim_keeps_the_requested_call_end_for_backfill(db: Db) -> None:
    # Issue 16: the claim itself writes the message's call end, so a row that then FAILED
    # can be re-enqueued from the table alone; a later message's claim replaces it.
    db.seed()
    await db.table.claim_lease(RID, "worker-a", 300, requested_call_end=83.25)
    assert db.row()[REQUESTED_CALL_END] == {"N": "83.25"}
    await db.table.mark_failed(RID, "media broken", owner="worker-a")
    await db.table.claim_lease(RID, "worker-b", 300, requested_call_end=90.0)
    row = db.row()
    assert row[REQUESTED_CALL_END] == {"N": "90.0"}
    assert row["processingAttempts"] == {"N": "2"}
    await db.table.claim_lease(RID, "worker-b", 300)  # no call end given: left as it was
    assert db.row()[REQUESTED_CALL_END] == {"N": "90.0"}


@pytest_anyio
async def test_expired_lease_is_taken_over(db: Db) -> None:
    db.seed(
        leaseOwner={"S": "dead-worker"},
        leaseExpiresAt={"N": str(time.time() - 1)},
        processingAttempts={"N": "3"},
    )
    await db.table.claim_lease(RID, "worker-b", 300)
    row = db.row()
    assert row["leaseOwner"] == {"S": "worker-b"}
    assert row["processingAttempts"] == {"N": "4"}
    with pytest.raises(LeaseHeld):  # the dead worker comes back: its lease is gone
        await db.table.renew_lease(RID, "dead-worker", 300)


@pytest_anyio
async def test_lease_without_expiry_is_not_held_forever(db: Db) -> None:
    db.seed(leaseOwner={"S": "half-written"})  # no leaseExpiresAt: treat as expired
    await db.table.claim_lease(RID, "worker-b", 300)
    assert db.row()["leaseOwner"] == {"S": "worker-b"}


@pytest_anyio
async def test_claim_refuses_a_row_already_done_for_the_same_call_end(db: Db) -> None:
    # Worker B read the row before worker A marked it DONE; B's claim must not reprocess it.
    db.seed(processingStatus={"S": STATUS_DONE}, callEndSeconds={"N": "14.0"})
    with pytest.raises(AlreadyDone):
        await db.table.claim_lease(RID, "worker-b", 300, unless_done_call_end=14.0)
    row = db.row()
    assert row["processingStatus"] == {"S": STATUS_DONE}  # not overwritten with PROCESSING
    assert "leaseOwner" not in row
    # A corrected call end is new work: the claim succeeds.
    await db.table.claim_lease(RID, "worker-b", 300, unless_done_call_end=15.0)
    assert db.row()["leaseOwner"] == {"S": "worker-b"}


@pytest_anyio
async def test_claim_lease_on_missing_row(db: Db) -> None:
    with pytest.raises(RowNotFound):
        await db.table.claim_lease("missing", "worker-a", 300)


@pytest_anyio
async def test_renew_lease_extends_expiry(db: Db) -> None:
    db.seed()
    await db.table.claim_lease(RID, "worker-a", 10)
    first = float(db.row()["leaseExpiresAt"]["N"])
    await db.table.renew_lease(RID, "worker-a", 1000)
    assert float(db.row()["leaseExpiresAt"]["N"]) > first + 900
    assert db.row()["processingAttempts"] == {"N": "1"}  # renewing is not a new attempt


@pytest_anyio
async def test_mark_done_sets_exactly_the_spec_attributes(db: Db) -> None:
    seeded = db.seed(processingError={"S": "old failure"})
    await db.table.claim_lease(RID, "worker-a", 300)
    done = DoneRecord(
        video_key="2024/03/05/agent-42/r/recording.mp4",
        thumbnail_key="2024/03/05/agent-42/r/thumbnail.png",
        media_duration_seconds=61.253,
        call_end_seconds=14.0,
        connect_audio_offset_seconds=-0.5,
        sync_method="waveform",
        sync_offset_seconds=0.4375,
        sync_confidence=312.46,
        sync_drift_ppm=-81.37,
    )
    await db.table.mark_done(RID, "worker-a", done)

    row = db.row()
    written = {
        "isProcessed": {"BOOL": True},
        "processingStatus": {"S": STATUS_DONE},
        "videoKey": {"S": done.video_key},
        "thumbnailKey": {"S": done.thumbnail_key},
        "mediaDurationSeconds": {"N": "61.253"},
        "callEndSeconds": {"N": "14"},
        "connectAudioOffsetSeconds": {"N": "-0.5"},
        "syncMethod": {"S": "waveform"},
        "syncOffsetSeconds": {"N": "0.4375"},
        "syncConfidence": {"N": "312.46"},
        "syncDriftPpm": {"N": "-81.37"},
    }
    for name, value in written.items():
        if "N" in value:
            assert Decimal(row[name]["N"]) == Decimal(value["N"]), name
        else:
            assert row[name] == value, name
    processed_at = row["processedAt"]["S"]
    assert processed_at.endswith("Z")
    parsed = datetime.fromisoformat(processed_at)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 3600
    # Everything else is exactly as the backend left it; lease and old error are gone.
    untouched = {k: v for k, v in seeded.items() if k not in written and k != "processingError"}
    for name, value in untouched.items():
        assert row[name] == value, name
    expected_names = set(untouched) | set(written) | {"processedAt", "processingAttempts"}
    assert set(row) == expected_names


@pytest_anyio
async def test_mark_done_without_the_lease_fails(db: Db) -> None:
    db.seed()
    await db.table.claim_lease(RID, "worker-a", 300)
    done = DoneRecord("v", "t", 1.0, 1.0, 0.0)
    with pytest.raises(LeaseHeld):
        await db.table.mark_done(RID, "worker-b", done)
    assert "isProcessed" in db.row() and db.row()["isProcessed"] == {"BOOL": False}


@pytest_anyio
async def test_mark_failed_never_overwrites_done(db: Db) -> None:
    db.seed()
    await db.table.claim_lease(RID, "worker-a", 300)
    await db.table.mark_done(RID, "worker-a", DoneRecord("v", "t", 1.0, 1.0, 0.0))
    await db.table.mark_failed(RID, "media_invalid: corrupt")
    row = db.row()
    assert row["processingStatus"] == {"S": STATUS_DONE}
    assert "processingError" not in row


@pytest_anyio
async def test_mark_failed_writes_one_short_line(db: Db) -> None:
    seeded = db.seed()
    await db.table.claim_lease(RID, "worker-a", 300)
    await db.table.mark_failed(RID, "bad\nmedia " + "x" * 2000, owner="worker-a")
    row = db.row()
    assert row["processingStatus"] == {"S": STATUS_FAILED}
    error = row["processingError"]["S"]
    assert "\n" not in error and error.startswith("bad media x") and len(error) <= 500
    assert "leaseOwner" not in row and "leaseExpiresAt" not in row
    assert row["title"] == seeded["title"] and row["isProcessed"] == {"BOOL": False}


@pytest_anyio
async def test_mark_failed_respects_another_workers_live_lease(db: Db) -> None:
    db.seed()
    await db.table.claim_lease(RID, "worker-a", 300)
    await db.table.mark_failed(RID, "invalid message seen by worker-b", owner="worker-b")
    row = db.row()
    assert row["processingStatus"] == {"S": STATUS_PROCESSING}
    assert row["leaseOwner"] == {"S": "worker-a"}


@pytest_anyio
async def test_mark_failed_beside_a_live_lease_leaves_the_holder_the_last_word(db: Db) -> None:
    db.seed()
    await db.table.claim_lease(RID, "worker-a", 300)
    await db.table.mark_failed(RID, "gave up waiting", owner="worker-b", beside_live_lease=True)
    row = db.row()
    assert row["processingStatus"] == {"S": STATUS_FAILED}
    assert row["processingError"] == {"S": "gave up waiting"}
    assert row["leaseOwner"] == {"S": "worker-a"}  # not taken away
    await db.table.renew_lease(RID, "worker-a", 300)  # the holder keeps working
    await db.table.mark_done(RID, "worker-a", DoneRecord("v.mp4", "t.png", 4.0, 3.0, 0.5))
    row = db.row()
    assert row["processingStatus"] == {"S": STATUS_DONE} and "processingError" not in row


@pytest_anyio
async def test_mark_failed_on_missing_row_is_a_no_op(db: Db) -> None:
    await db.table.mark_failed("missing", "row_not_found")
    assert db.row("missing") == {}  # and no row was created


@pytest_anyio
async def test_release_lease(db: Db) -> None:
    db.seed()
    await db.table.claim_lease(RID, "worker-a", 300)
    await db.table.release_lease(RID, "worker-b")  # not ours: nothing happens, no error
    assert db.row()["leaseOwner"] == {"S": "worker-a"}
    await db.table.release_lease(RID, "worker-a")
    row = db.row()
    assert "leaseOwner" not in row and "leaseExpiresAt" not in row
    assert "processingStatus" not in row
    assert row["processingAttempts"] == {"N": "1"} and row["title"] == {"S": "backend-owned"}
    await db.table.claim_lease(RID, "worker-b", 300)  # free for the next worker
    await db.table.release_lease("missing", "worker-a")  # no row: no error, nothing created
    assert db.row("missing") == {}


@pytest_anyio
@pytest.mark.parametrize(
    ("earlier", "restored"),
    [
        ({"isProcessed": {"BOOL": True}, "videoKey": {"S": "k/recording.webm"}}, STATUS_DONE),
        ({"isProcessed": {"N": "1"}, "videoKey": {"S": "k/recording.mp4"}}, STATUS_DONE),
        # Every spelling read_bool accepts (older writers; true_like keeps their type).
        ({"isProcessed": {"S": "true"}, "videoKey": {"S": "k/recording.mp4"}}, STATUS_DONE),
        ({"isProcessed": {"S": " TRUE "}, "videoKey": {"S": "k/recording.mp4"}}, STATUS_DONE),
        ({"isProcessed": {"N": "2"}, "videoKey": {"S": "k/recording.mp4"}}, STATUS_DONE),
        ({"isProcessed": {"N": "1.0"}, "videoKey": {"S": "k/recording.mp4"}}, STATUS_DONE),
        ({"processingError": {"S": "media_invalid"}}, STATUS_FAILED),
    ],
)
async def test_release_after_a_rerun_restores_the_earlier_status(
    db: Db, earlier: dict[str, Any], restored: str
) -> None:
    # A re-run (corrected call end) claims a DONE/FAILED row; if it is given back, the row must
    # say what it said before, not lose its status.
    db.seed(processingStatus={"S": restored}, callEndSeconds={"N": "14"}, **earlier)
    await db.table.claim_lease(RID, "worker-a", 300, unless_done_call_end=20.0)
    assert db.row()["processingStatus"] == {"S": STATUS_PROCESSING}
    await db.table.release_lease(RID, "worker-a")
    row = db.row()
    assert row["processingStatus"] == {"S": restored}
    assert "leaseOwner" not in row


@pytest_anyio
@pytest.mark.parametrize("processed", [{"S": "false"}, {"N": "0"}, {"BOOL": False}])
async def test_release_after_a_rerun_of_an_unprocessed_row_restores_no_done(
    db: Db, processed: dict[str, Any]
) -> None:
    db.seed(isProcessed=processed, videoKey={"S": "k/recording.mp4"})
    await db.table.claim_lease(RID, "worker-a", 300)
    await db.table.release_lease(RID, "worker-a")
    assert "processingStatus" not in db.row()


@pytest_anyio
async def test_a_done_row_written_as_a_string_still_acknowledges_duplicates_after_a_rerun(
    db: Db,
) -> None:
    # The original message (call end 14) must still be recognised as done after a failed
    # re-run for a corrected call end was given back.
    db.seed(
        processingStatus={"S": STATUS_DONE},
        isProcessed={"S": "true"},
        videoKey={"S": "k/recording.mp4"},
        callEndSeconds={"N": "14"},
    )
    await db.table.claim_lease(RID, "worker-a", 300, unless_done_call_end=20.0)
    await db.table.release_lease(RID, "worker-a")
    with pytest.raises(AlreadyDone):
        await db.table.claim_lease(RID, "worker-b", 300, unless_done_call_end=14.0)


@pytest_anyio
async def test_release_lease_keeps_a_previous_done(db: Db) -> None:
    db.seed(processingStatus={"S": STATUS_DONE}, leaseOwner={"S": "worker-a"})
    await db.table.release_lease(RID, "worker-a")
    row = db.row()
    assert row["processingStatus"] == {"S": STATUS_DONE}
    assert "leaseOwner" not in row


@pytest_anyio
@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ({"N": "0"}, {"N": "1"}),  # Java DynamoDBMapper style
        ({"S": "false"}, {"S": "true"}),
        ({"BOOL": False}, {"BOOL": True}),
        (None, {"BOOL": True}),
    ],
)
async def test_mark_done_keeps_the_type_of_is_processed(
    db: Db, stored: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    db.seed(isProcessed=stored) if stored else db.seed()
    if stored is None:
        db.boto.update_item(
            TableName=db.name, Key={"videoID": {"S": RID}}, UpdateExpression="REMOVE isProcessed"
        )
    await db.table.claim_lease(RID, "worker-a", 300)
    await db.table.mark_done(RID, "worker-a", DoneRecord("v", "t", 1.0, 1.0, 0.0))
    assert db.row()["isProcessed"] == expected
    assert (await db.table.get(RID)).is_processed is True


@pytest_anyio
async def test_mark_done_rejects_non_finite_numbers(db: Db) -> None:
    db.seed()
    await db.table.claim_lease(RID, "worker-a", 300)
    with pytest.raises(ValueError, match="DynamoDB"):
        await db.table.mark_done(RID, "worker-a", DoneRecord("v", "t", float("nan"), 1.0, 0.0))
    assert db.row()["leaseOwner"] == {"S": "worker-a"}  # nothing half-written
    assert "videoKey" not in db.row()
