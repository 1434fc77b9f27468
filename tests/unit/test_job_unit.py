"""process_job's nine steps (SPEC §1) and every outcome, on in-memory fakes (harness/fakes.py).

No moto, no ffmpeg, no subprocess, no socket: each test takes milliseconds. The same job on
moto and real ffmpeg is tests/aws/test_job.py (the integration lane). Outcomes that the message's
settling decides (row FAILED, retry, DLQ) run through :class:`worker.delivery.Delivery` with
a fake queue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tests.harness.fakes import (
    CONNECT_ALIAS,
    CONNECT_BUCKET,
    INPUT_BUCKET,
    OUTPUT_BUCKET,
    FakeMerger,
    FakeQueue,
    FakeStore,
    FakeTable,
    unit_settings,
)
from worker.config import Settings
from worker.delivery import Delivery
from worker.errors import (
    AwsUnavailable,
    ConnectAudioNotReady,
    InvalidMessage,
    InvalidRow,
    LeaseHeld,
    MediaError,
    MediaTimeout,
    PermanentError,
    RecordingNotFound,
    RowNotFound,
    ScratchBusy,
    ScratchFull,
    TooLargeForScratch,
    TransientError,
)
from worker.job import JobDeps, JobResult, process_job
from worker.media import WEBM
from worker.media.sync import SyncResult
from worker.messages import JobMessage
from worker.protection import TaskProtector
from worker.queue import ReceivedMessage
from worker.scratch import scratch_prefix

pytestmark = pytest.mark.anyio

RID = "rec-1"
AGENT = "agent-7"
CREATED = "2026-11-27 23:50:00"
DAY = f"connect/{CONNECT_ALIAS}/CallRecordings/2026/11/27"
NEXT_DAY = f"connect/{CONNECT_ALIAS}/CallRecordings/2026/11/28"
INPUT_KEY = f"2026/11/27/{AGENT}/{RID}.mp4"
CONNECT_KEY = f"{DAY}/{RID}_20261127T23:50_UTC.wav"
OUTPUT_KEY = f"2026/11/27/{AGENT}/{RID}/recording.mp4"
THUMBNAIL_KEY = f"2026/11/27/{AGENT}/{RID}/thumbnail.png"
RECORDING = b"komorebi-recording"
CONNECT = b"connect-audio"
# The job's own stages, in order (probe and merge are the real merger's).
STAGES = [
    "read_row",
    "claim_lease",
    "check_recording",
    "find_connect_audio",
    "download",
    "upload",
    "update_row",
]


@dataclass
class Unit:
    """One in-memory world: a row, its two objects, the fakes, the job's deps."""

    table: FakeTable
    store: FakeStore
    merger: FakeMerger
    deps: JobDeps
    scratch: Path

    async def run(self, call_end: float = 5.0, key: str | None = None) -> JobResult:
        return await process_job(JobMessage(RID, call_end, key), self.deps, scratch=self.scratch)

    @property
    def row(self) -> dict[str, Any]:
        return self.table.rows[RID]

    def job_directories(self) -> list[str]:
        return sorted(p.name for p in self.scratch.iterdir() if p.name.startswith("job-"))

    def assert_released(self) -> None:
        """No lease, no PROCESSING, no scratch left behind."""
        assert "leaseOwner" not in self.row and "leaseExpiresAt" not in self.row
        assert "processingStatus" not in self.row
        assert self.job_directories() == []


def make_unit(tmp_path: Path, settings: Settings | None = None) -> Unit:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    table, store, merger = FakeTable(), FakeStore(), FakeMerger()
    table.put(RID, agentID=AGENT, creationDate=CREATED, customerName="Ada")
    store.put(INPUT_BUCKET, INPUT_KEY, RECORDING)
    store.put(CONNECT_BUCKET, CONNECT_KEY, CONNECT)
    deps = JobDeps(settings or unit_settings(scratch), table, store, "unit-worker", merger)
    return Unit(table, store, merger, deps, scratch)


@pytest.fixture
async def unit(tmp_path: Path) -> Unit:
    return make_unit(tmp_path)


def stages(logs: list[dict[str, Any]]) -> list[str]:
    return [line["stage"] for line in logs if line["event"] == "stage.finished"]


# --- success -------------------------------------------------------------------------------


async def test_success_uploads_both_outputs_and_marks_the_row_done(unit: Unit) -> None:
    unit.merger.sync = SyncResult("waveform", 0.1234567, 9.876, "measured", drift_ppm=-41.2371)
    with capture_logs(processors=[merge_contextvars]) as logs:
        result = await unit.run(call_end=5.0)
    assert result == JobResult(RID, False, OUTPUT_KEY, 12.5)
    # (2)+(3) both inputs went into the merge, under the job's names, with the call end.
    (inputs,) = unit.merger.calls
    assert (inputs.recording.name, inputs.connect_audio.name) == (
        "recording-input.mp4",
        "connect-audio.wav",
    )
    assert inputs.call_end_seconds == 5.0
    assert inputs.name == f"recording {RID}"
    assert inputs.workdir.name.startswith(scratch_prefix(RID))
    # (8) the merge's output and thumbnail, under the layout's keys, with their types.
    assert unit.store.data(OUTPUT_BUCKET, OUTPUT_KEY) == b"merged:" + RECORDING + b"|" + CONNECT
    assert unit.store.objects[OUTPUT_BUCKET, OUTPUT_KEY].content_type == "video/mp4"
    assert unit.store.data(OUTPUT_BUCKET, THUMBNAIL_KEY) == b"\x89PNG thumbnail"
    assert unit.store.objects[OUTPUT_BUCKET, THUMBNAIL_KEY].content_type == "image/png"
    # (9) the row: DONE with SPEC §4's attributes, the lease gone, the backend's own kept.
    row = dict(unit.row)
    assert row.pop("processedAt")
    assert row == {
        "videoID": RID,
        "agentID": AGENT,
        "creationDate": CREATED,
        "customerName": "Ada",
        "processingAttempts": 1,
        "requestedCallEndSeconds": 5.0,  # the message's call end, kept by the claim
        "isProcessed": True,
        "processingStatus": "DONE",
        "videoKey": OUTPUT_KEY,
        "thumbnailKey": THUMBNAIL_KEY,
        "mediaDurationSeconds": 12.5,
        "callEndSeconds": 5.0,
        "connectAudioOffsetSeconds": 0.25,
        "syncMethod": "waveform",
        "syncOffsetSeconds": 0.123457,
        "syncConfidence": 9.88,
        "syncDriftPpm": -41.24,
    }
    assert unit.job_directories() == []
    assert stages(logs) == STAGES


async def test_the_row_keeps_the_messages_call_end_when_the_merge_clamps_it(unit: Unit) -> None:
    # A re-sent message must be recognised as a duplicate: the row stores what it said.
    result = await unit.run(call_end=30.0)
    assert unit.merger.calls[0].call_end_seconds == 30.0
    assert unit.row["callEndSeconds"] == 30.0
    assert result.media_duration_seconds == 12.5


async def test_a_webm_output_gets_its_own_extension_and_type(unit: Unit) -> None:
    unit.merger.container = WEBM
    result = await unit.run()
    key = OUTPUT_KEY.replace(".mp4", ".webm")
    assert result.output_key == key
    assert unit.store.objects[OUTPUT_BUCKET, key].content_type == "video/webm"
    assert unit.row["videoKey"] == key


async def test_the_merge_options_come_from_the_settings(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    settings = unit_settings(
        scratch, align="start", loudness_target=-16.0, ffmpeg_timeout_base_seconds=7.0
    )
    unit = make_unit(tmp_path, settings)
    await unit.run()
    options = unit.merger.calls[0].options
    assert (options.align, options.loudness_target, options.timeout_base_seconds) == (
        "start",
        -16.0,
        7.0,
    )
    assert options.audio == settings.audio


# --- duplicates ----------------------------------------------------------------------------


def _done(unit: Unit, call_end: float) -> None:
    unit.row.update(
        processingStatus="DONE", isProcessed=True, callEndSeconds=call_end, videoKey="old.mp4"
    )


async def test_a_row_done_for_the_same_call_end_is_acknowledged_without_work(unit: Unit) -> None:
    _done(unit, 5.0)
    before = dict(unit.row)
    assert await unit.run(call_end=5.0004) == JobResult(RID, True, None, None)
    assert unit.row == before
    assert [call[0] for call in unit.table.calls] == ["get"]
    assert unit.store.calls == [] and unit.merger.calls == []
    assert unit.job_directories() == []


async def test_a_row_done_for_another_call_end_is_processed_again(unit: Unit) -> None:
    _done(unit, 9.0)
    result = await unit.run(call_end=5.0)
    assert not result.duplicate
    assert unit.row["callEndSeconds"] == 5.0 and unit.row["videoKey"] == OUTPUT_KEY


async def test_done_by_another_worker_between_read_and_claim_is_a_duplicate(unit: Unit) -> None:
    async def finished_elsewhere() -> None:
        _done(unit, 5.0)

    unit.table.hooks["claim_lease"] = finished_elsewhere
    assert (await unit.run(call_end=5.0)).duplicate
    assert unit.row["videoKey"] == "old.mp4"
    assert unit.store.calls == [] and unit.job_directories() == []


# --- the lease -----------------------------------------------------------------------------


async def test_a_live_lease_of_another_worker_blocks(unit: Unit) -> None:
    unit.row.update(leaseOwner="other", leaseExpiresAt=time.time() + 300)
    with pytest.raises(LeaseHeld) as caught:
        await unit.run()
    assert isinstance(caught.value, TransientError)
    assert unit.row["leaseOwner"] == "other"
    assert unit.store.calls == [] and unit.merger.calls == []
    assert unit.job_directories() == []


async def test_an_expired_lease_of_another_worker_is_taken_over(unit: Unit) -> None:
    unit.row.update(leaseOwner="other", leaseExpiresAt=time.time() - 1, processingAttempts=3)
    await unit.run()
    assert unit.row["processingStatus"] == "DONE"
    assert unit.row["processingAttempts"] == 4
    assert "leaseOwner" not in unit.row


async def test_each_job_claims_with_its_own_owner_and_the_call_end(unit: Unit) -> None:
    await unit.run()
    await unit.run(call_end=6.0)
    owners = [args[1] for args in unit.table.called("claim_lease")]
    assert len(set(owners)) == 2
    assert all(owner.startswith("unit-worker/") for owner in owners)


async def test_losing_the_lease_before_mark_done_fails_and_leaves_the_taker_alone(
    unit: Unit,
) -> None:
    async def taken_over() -> None:
        unit.row.update(leaseOwner="other", leaseExpiresAt=time.time() + 300)

    unit.table.hooks["mark_done"] = taken_over
    with pytest.raises(LeaseHeld):
        await unit.run()
    assert unit.row["leaseOwner"] == "other" and unit.row["processingStatus"] == "PROCESSING"
    assert "videoKey" not in unit.row
    assert unit.job_directories() == []


class _FastHeartbeat(Settings):
    """Settings whose lease is renewed every 10 ms (the real minimum is a third of 1 s)."""

    @property
    def heartbeat_interval(self) -> float:
        return 0.01


async def test_a_lease_taken_over_mid_job_cancels_the_job(tmp_path: Path) -> None:
    base = unit_settings(tmp_path / "scratch")
    unit = make_unit(tmp_path, _FastHeartbeat(**vars(base)))
    unit.merger.stall = True

    async def taken_over() -> None:
        unit.row.update(leaseOwner="other", leaseExpiresAt=time.time() + 300)

    unit.table.hooks["renew_lease"] = taken_over
    with anyio.fail_after(5), pytest.raises(LeaseHeld):
        await unit.run()
    assert unit.merger.started.is_set()
    assert unit.row["leaseOwner"] == "other"
    assert unit.job_directories() == []


async def test_a_failed_renewal_is_logged_and_the_job_goes_on(tmp_path: Path) -> None:
    base = unit_settings(tmp_path / "scratch")
    unit = make_unit(tmp_path, _FastHeartbeat(**vars(base)))
    unit.table.faults["renew_lease"] = AwsUnavailable("DynamoDB: throttled")
    renewals = anyio.Event()

    async def renewal_seen() -> None:
        renewals.set()

    unit.table.hooks["renew_lease"] = renewal_seen
    stalled_merger = unit.merger
    stalled_merger.stall = True
    with capture_logs() as logs, anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(unit.run)
            await renewals.wait()
            await anyio.sleep(0.05)  # a few more failed renewals: the job must not end
            assert unit.row["leaseOwner"].startswith("unit-worker/")
            group.cancel_scope.cancel()
    failed = [line for line in logs if line["event"] == "lease_renew_failed"]
    assert failed and failed[0]["reason"] == "aws_unavailable"
    unit.assert_released()


# --- the row -------------------------------------------------------------------------------


async def test_a_missing_row_is_permanent(unit: Unit) -> None:
    del unit.table.rows[RID]
    with pytest.raises(RowNotFound) as caught:
        await unit.run()
    assert isinstance(caught.value, PermanentError)
    assert unit.store.calls == [] and unit.job_directories() == []


@pytest.mark.parametrize(
    "broken",
    [{"agentID": None}, {"agentID": "a/../b"}, {"creationDate": None}, {"creationDate": "soon"}],
)
async def test_an_invalid_row_is_permanent_and_untouched(
    unit: Unit, broken: dict[str, Any]
) -> None:
    unit.row.update(broken)
    before = dict(unit.row)
    with pytest.raises(InvalidRow):
        await unit.run()
    assert unit.row == before
    assert unit.store.calls == [] and unit.job_directories() == []


# --- the recording and the Connect audio ---------------------------------------------------


async def test_a_missing_recording_is_permanent_before_the_connect_search(unit: Unit) -> None:
    del unit.store.objects[INPUT_BUCKET, INPUT_KEY]
    del unit.store.objects[CONNECT_BUCKET, CONNECT_KEY]  # missing too: still not transient
    with pytest.raises(RecordingNotFound) as caught:
        await unit.run()
    assert isinstance(caught.value, PermanentError)
    assert INPUT_KEY in caught.value.message
    assert unit.store.called("list_prefix") == []
    unit.assert_released()


async def test_a_recording_gone_between_head_and_download_is_permanent(unit: Unit) -> None:
    async def deleted() -> None:
        del unit.store.objects[INPUT_BUCKET, INPUT_KEY]

    unit.store.hooks[f"download:{INPUT_KEY}"] = deleted
    with pytest.raises(RecordingNotFound):
        await unit.run()
    unit.assert_released()


async def test_missing_connect_audio_is_transient_and_releases_the_lease(unit: Unit) -> None:
    del unit.store.objects[CONNECT_BUCKET, CONNECT_KEY]
    unit.row["processingError"] = "an earlier failure"
    with pytest.raises(ConnectAudioNotReady) as caught:
        await unit.run()
    assert isinstance(caught.value, TransientError)
    # Both days searched, the lease given back, the status what it was before the claim.
    prefixes = [args[1] for args in unit.store.called("list_prefix")]
    assert prefixes == [f"{DAY}/{RID}", f"{NEXT_DAY}/{RID}"]
    assert "leaseOwner" not in unit.row
    assert unit.row["processingStatus"] == "FAILED"
    assert unit.merger.calls == [] and unit.job_directories() == []


async def test_connect_audio_filed_under_the_next_day_is_found(unit: Unit) -> None:
    del unit.store.objects[CONNECT_BUCKET, CONNECT_KEY]
    unit.store.put(CONNECT_BUCKET, f"{NEXT_DAY}/{RID}_20261128T00:10_UTC.wav", b"next-day")
    await unit.run()
    assert unit.store.data(OUTPUT_BUCKET, OUTPUT_KEY).endswith(b"|next-day")


async def test_of_several_candidates_the_newest_of_this_contact_wins(unit: Unit) -> None:
    old, new = datetime(2026, 11, 27, 23, 55, tzinfo=UTC), datetime(2026, 11, 28, 1, tzinfo=UTC)
    unit.store.put(CONNECT_BUCKET, CONNECT_KEY, b"older", last_modified=old)
    newest = f"{DAY}/{RID}_20261127T23:58_UTC.wav"
    unit.store.put(CONNECT_BUCKET, newest, b"newest", last_modified=new)
    # Another contact whose id merely starts with ours, newer still: never chosen.
    unit.store.put(CONNECT_BUCKET, f"{DAY}/{RID}0_20261127T23:59_UTC.wav", b"foreign")
    with capture_logs() as logs:
        await unit.run()
    assert unit.store.data(OUTPUT_BUCKET, OUTPUT_KEY).endswith(b"|newest")
    (line,) = [line for line in logs if line["event"] == "connect_audio_candidates"]
    assert line["chosen"] == newest and len(line["candidates"]) == 3


async def test_a_given_connect_audio_key_skips_the_search(unit: Unit) -> None:
    given = f"{NEXT_DAY}/{RID}_20261128T00:01_UTC.wav"
    unit.store.put(CONNECT_BUCKET, given, b"given")
    await unit.run(key=given)
    assert unit.store.called("list_prefix") == []
    assert unit.store.data(OUTPUT_BUCKET, OUTPUT_KEY).endswith(b"|given")


async def test_a_given_connect_audio_key_not_there_yet_is_transient(unit: Unit) -> None:
    with pytest.raises(ConnectAudioNotReady):
        await unit.run(key=f"{DAY}/{RID}_20261127T23:59_UTC.wav")
    unit.assert_released()


@pytest.mark.parametrize(
    "key",
    [
        f"{DAY}/other-contact_20261127T23:50_UTC.wav",  # another contact, same day
        f"{DAY}/{RID}0_20261127T23:50_UTC.wav",  # an id that merely starts with ours
        f"connect/{CONNECT_ALIAS}/CallRecordings/2026/11/20/{RID}_x.wav",  # another day
        f"connect/other-instance/CallRecordings/2026/11/27/{RID}_x.wav",  # another instance
        f"{DAY}/{RID}/../other-contact.wav",  # path tricks
    ],
)
async def test_a_foreign_connect_audio_key_is_refused_before_any_work(unit: Unit, key: str) -> None:
    unit.store.put(CONNECT_BUCKET, key, b"someone else's call")
    before = dict(unit.row)
    with pytest.raises(InvalidMessage) as caught:
        await unit.run(key=key)
    assert isinstance(caught.value, PermanentError)
    assert "is not this recording's Connect audio" in caught.value.message
    assert unit.row == before  # not even claimed
    assert unit.store.calls == [] and unit.job_directories() == []


# --- scratch -------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
async def test_a_recording_over_the_scratch_cap_is_permanent_even_when_shared(
    unit: Unit, shared: bool
) -> None:
    unit.store.scratch_max_bytes = len(RECORDING) - 1
    del unit.store.objects[CONNECT_BUCKET, CONNECT_KEY]  # permanent first
    if shared:
        (unit.scratch / (scratch_prefix("other-recording") + "busy")).mkdir()
    with pytest.raises(TooLargeForScratch) as caught:
        await unit.run()
    assert caught.value.reason == "scratch_full"
    assert unit.store.called("list_prefix") == []
    assert "leaseOwner" not in unit.row


@pytest.mark.parametrize("shared", [False, True])
async def test_a_disk_full_right_now_is_transient_only_when_shared(
    unit: Unit, shared: bool
) -> None:
    unit.store.free_bytes = len(RECORDING) - 1  # the Connect audio fits, the recording not
    if shared:
        (unit.scratch / (scratch_prefix("other-recording") + "busy")).mkdir()
    with pytest.raises(ScratchBusy if shared else ScratchFull) as caught:
        await unit.run()
    assert isinstance(caught.value, TransientError) is shared
    assert not isinstance(caught.value, TooLargeForScratch)
    assert unit.store.called("download")  # the HEAD let it through: the download decided
    assert unit.job_directories() == ([scratch_prefix("other-recording") + "busy"] * shared)


# --- the merge and the upload --------------------------------------------------------------


@pytest.mark.parametrize(
    "error", [MediaError("no video stream in recording rec-1"), MediaTimeout("ffmpeg: 120 s")]
)
async def test_a_failed_merge_uploads_nothing_and_releases_the_lease(
    unit: Unit, error: Exception
) -> None:
    unit.merger.error = error
    with pytest.raises(type(error)):
        await unit.run()
    assert not any(bucket == OUTPUT_BUCKET for bucket, _ in unit.store.objects)
    unit.assert_released()


@pytest.mark.parametrize("failing", [OUTPUT_KEY, THUMBNAIL_KEY])
async def test_a_failed_upload_leaves_the_row_undone(unit: Unit, failing: str) -> None:
    unit.store.faults[f"upload:{failing}"] = AwsUnavailable("S3: 503 Slow Down")
    with pytest.raises(AwsUnavailable):
        await unit.run()
    assert "videoKey" not in unit.row and "isProcessed" not in unit.row
    assert unit.table.called("mark_done") == []
    unit.assert_released()


# --- cancellation --------------------------------------------------------------------------


async def test_a_job_cancelled_mid_merge_releases_its_lease_and_scratch(unit: Unit) -> None:
    unit.merger.stall = True
    held: dict[str, Any] = {}
    with anyio.fail_after(5), anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:

            async def cancel_mid_job() -> None:
                await unit.merger.started.wait()
                held.update(unit.row, scratch=sorted(p.name for p in unit.scratch.rglob("*")))
                scope.cancel()

            group.start_soon(cancel_mid_job)
            await unit.run()
    assert scope.cancelled_caught
    # Cancelled for certain, mid-job: the lease was held and both inputs were on disk.
    assert held["leaseOwner"].startswith("unit-worker/")
    assert held["processingStatus"] == "PROCESSING"
    assert {"recording-input.mp4", "connect-audio.wav"} <= set(held["scratch"])
    unit.assert_released()


async def test_a_cancel_while_the_claim_is_answered_leaves_no_lease(unit: Unit) -> None:
    claimed = anyio.Event()
    claim = unit.table.claim_lease

    async def slow_reply(*args: Any, **kwargs: Any) -> None:
        await claim(*args, **kwargs)  # the write lands, then the reply is late
        claimed.set()
        await anyio.sleep_forever()

    unit.table.claim_lease = slow_reply  # type: ignore[method-assign]
    with anyio.fail_after(5), anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:

            async def cancel_after_claim() -> None:
                await claimed.wait()
                scope.cancel()

            group.start_soon(cancel_after_claim)
            await unit.run()
    assert scope.cancelled_caught and claimed.is_set()
    unit.assert_released()


# --- what the settling makes of each outcome (Delivery with a fake queue) -------------------


def _message(body: str, receive_count: int = 1) -> ReceivedMessage:
    return ReceivedMessage("m-1", "receipt-1", body, receive_count, None)


async def _deliver(unit: Unit, queue: FakeQueue, body: str | None = None) -> None:
    delivery = Delivery(unit.deps.settings, unit.deps, queue, TaskProtector(None, 60))  # type: ignore[arg-type]
    job = body or JobMessage(RID, 5.0).to_body()
    await delivery.handle(_message(job), time.monotonic())


async def test_delivered_success_deletes_the_message(unit: Unit) -> None:
    queue = FakeQueue()
    await _deliver(unit, queue)
    assert queue.deleted == ["m-1"] and queue.dead_lettered == []
    assert unit.row["processingStatus"] == "DONE"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (MediaError("recording rec-1 has no video stream"), "media_invalid"),
        (InvalidRow("row rec-1 has no agentID"), "invalid_row"),
    ],
)
async def test_a_permanent_failure_is_dead_lettered_and_the_row_failed(
    unit: Unit, error: Exception, reason: str
) -> None:
    unit.merger.error = error
    if isinstance(error, InvalidRow):
        del unit.row["agentID"]
    queue = FakeQueue()
    await _deliver(unit, queue)
    ((message_id, dead),) = queue.dead_lettered
    assert message_id == "m-1" and dead.reason == reason
    assert queue.deleted == ["m-1"]
    assert unit.row["processingStatus"] == "FAILED"
    assert unit.row["processingError"] == dead.message
    assert "leaseOwner" not in unit.row and unit.job_directories() == []


async def test_a_transient_merge_failure_is_retried_with_the_lease_released(unit: Unit) -> None:
    unit.merger.error = MediaTimeout("ffmpeg ran past 120 s")
    queue = FakeQueue()
    await _deliver(unit, queue)
    assert queue.dead_lettered == [] and queue.deleted == []
    # The heartbeat's first extension, then the backoff (1 s at most in unit settings).
    backoff = queue.visibility[-1]
    assert backoff[0] == "m-1" and 1 <= backoff[1] <= 15
    unit.assert_released()


async def test_a_foreign_connect_key_is_dead_lettered_with_the_row_failed(unit: Unit) -> None:
    foreign = f"{DAY}/other-contact_20261127T23:50_UTC.wav"
    queue = FakeQueue()
    await _deliver(unit, queue, JobMessage(RID, 5.0, foreign).to_body())
    ((_, dead),) = queue.dead_lettered
    assert dead.reason == "invalid_message"
    assert unit.row["processingStatus"] == "FAILED"
    assert "processingAttempts" not in unit.row  # refused before the claim


async def test_a_delivered_duplicate_is_deleted_and_the_row_left_alone(unit: Unit) -> None:
    _done(unit, 5.0)
    before = dict(unit.row)
    queue = FakeQueue()
    await _deliver(unit, queue)
    assert queue.deleted == ["m-1"] and queue.dead_lettered == []
    assert unit.row == before
