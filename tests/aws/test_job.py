"""process_job (SPEC §1) against a real moto server and real ffmpeg, and the consumer's pure
helpers (backoff, error selection)."""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.harness.fixtures_aws import AwsEnv, aws_base_env, provision_world
from tests.harness.media_tools import band_share, decode_pcm, ffprobe_json, probe_duration, window
from tests.harness.worker_harness import (
    CONNECT_ALIAS,
    CONNECT_WAV,
    Contact,
    get_row,
    mounted_tmpfs,
    seed_contact,
    settings_for,
)
from worker.aws import open_clients
from worker.errors import (
    AwsUnavailable,
    ConnectAudioNotReady,
    InvalidMessage,
    InvalidRow,
    LeaseHeld,
    MediaError,
    PermanentError,
    RecordingNotFound,
    RowNotFound,
    ScratchBusy,
    ScratchFull,
    TooLargeForScratch,
    TransientError,
    first_error,
)
from worker.job import JobDeps, process_job
from worker.messages import JobMessage
from worker.outcome import backoff_seconds
from worker.recordings import RecordingTable
from worker.scratch import scratch_prefix, sweep_stale_scratch
from worker.storage import ObjectStore

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def aws(moto_server: str) -> Iterator[AwsEnv]:
    """One provisioned world for this module (every test uses its own recording ids)."""
    world = provision_world(moto_server)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in aws_base_env(moto_server).items():
            patch.setenv(name, value)
        yield world


@pytest.fixture(scope="module")
def short_recording(generated: Callable[[str], Path]) -> Path:
    """4 s, 160x120 H.264 + AAC (1000 Hz): quick to merge."""
    return generated("h264-aac")


@pytest.fixture
async def deps(aws: AwsEnv, tmp_path: Path) -> AsyncIterator[JobDeps]:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    settings = settings_for(aws, scratch)
    async with open_clients(settings) as clients:
        yield JobDeps(
            settings=settings,
            table=RecordingTable(clients.dynamodb, settings.table_name),
            store=ObjectStore(clients.s3),
            worker_id="test-worker",
        )


def _download(aws: AwsEnv, key: str, path: Path) -> Path:
    aws.client("s3").download_file(aws.output_bucket, key, str(path))
    return path


async def test_happy_path_output_thumbnail_and_row(
    aws: AwsEnv, deps: JobDeps, tmp_path: Path
) -> None:
    contact = seed_contact(
        aws, extra={"customerName": {"S": "Ada"}, "isProcessed": {"BOOL": False}}
    )
    result = await process_job(
        JobMessage(contact.recording_id, 5.0), deps, scratch=deps.settings.scratch_dir
    )

    # The Lambda's keys; VP8 video stays WebM.
    assert result.output_key == f"{contact.output_dir}/recording.webm"
    assert not result.duplicate
    output = _download(aws, result.output_key, tmp_path / "out.webm")
    thumbnail = _download(aws, contact.thumbnail_key, tmp_path / "thumb.png")
    assert thumbnail.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    head = aws.client("s3").head_object(Bucket=aws.output_bucket, Key=result.output_key)
    assert head["ContentType"] == "video/webm"

    # Content, lightly: the recording's duration, video copied, Connect tones before the call
    # end (5 s) and the recording's 1000 Hz after it.
    assert probe_duration(output) == pytest.approx(8.0, abs=0.3)
    codecs = {s["codec_type"]: s["codec_name"] for s in ffprobe_json(output)["streams"]}  # type: ignore[union-attr,index]
    assert codecs == {"video": "vp8", "audio": "opus"}
    pcm = decode_pcm(output)
    call = window(pcm, 16000, 1.0, 4.5)
    after = window(pcm, 16000, 5.5, 7.5)
    assert band_share(call, 16000, 440) + band_share(call, 16000, 660) > 0.8
    assert band_share(after, 16000, 1000) > 0.8

    row = get_row(aws, contact.recording_id)
    assert row["isProcessed"] is True
    assert row["processingStatus"] == "DONE"
    assert row["videoKey"] == result.output_key
    assert row["thumbnailKey"] == contact.thumbnail_key
    assert row["processedAt"].endswith("Z")
    assert float(row["mediaDurationSeconds"]) == pytest.approx(8.0, abs=0.3)
    assert float(row["callEndSeconds"]) == 5.0
    # The Connect WAV lasts 5 s and ends at the call end: offset 0.
    assert float(row["connectAudioOffsetSeconds"]) == pytest.approx(0.0, abs=0.05)
    assert int(row["processingAttempts"]) == 1
    assert "leaseOwner" not in row and "leaseExpiresAt" not in row
    # The backend's attributes are untouched.
    assert row["customerName"] == "Ada"
    assert row["agentID"] == contact.agent_id
    assert row["creationDate"] == "2026-03-14 23:26:53"
    # Scratch is cleaned up.
    assert list(deps.settings.scratch_dir.iterdir()) == []


async def test_same_job_twice_is_a_duplicate(
    aws: AwsEnv, deps: JobDeps, short_recording: Path
) -> None:
    contact = seed_contact(aws, recording=short_recording)
    job = JobMessage(contact.recording_id, 3.0)
    first = await process_job(job, deps, scratch=deps.settings.scratch_dir)
    processed_at = get_row(aws, contact.recording_id)["processedAt"]
    second = await process_job(job, deps, scratch=deps.settings.scratch_dir)
    assert not first.duplicate and second.duplicate
    row = get_row(aws, contact.recording_id)
    assert int(row["processingAttempts"]) == 1
    assert row["processedAt"] == processed_at
    # A corrected call end is new work, not a duplicate.
    third = await process_job(
        JobMessage(contact.recording_id, 2.5), deps, scratch=deps.settings.scratch_dir
    )
    assert not third.duplicate
    assert float(get_row(aws, contact.recording_id)["callEndSeconds"]) == 2.5
    # backfill --force: the same call end again, asked to reprocess (issue 16).
    fourth = await process_job(
        JobMessage(contact.recording_id, 2.5, reprocess=True),
        deps,
        scratch=deps.settings.scratch_dir,
    )
    assert not fourth.duplicate
    row = get_row(aws, contact.recording_id)
    assert int(row["processingAttempts"]) == 3
    assert float(row["requestedCallEndSeconds"]) == 2.5  # kept by the claim, for backfill


async def test_connect_audio_missing_is_transient_and_releases_lease(
    aws: AwsEnv, deps: JobDeps
) -> None:
    contact = seed_contact(aws, connect_audio=None)
    with pytest.raises(ConnectAudioNotReady):
        await process_job(
            JobMessage(contact.recording_id, 5.0), deps, scratch=deps.settings.scratch_dir
        )
    row = get_row(aws, contact.recording_id)
    assert "leaseOwner" not in row
    assert "processingStatus" not in row
    assert int(row["processingAttempts"]) == 1
    assert list(deps.settings.scratch_dir.iterdir()) == []


async def test_connect_audio_key_from_message(
    aws: AwsEnv, deps: JobDeps, short_recording: Path
) -> None:
    contact = seed_contact(aws, recording=short_recording, connect_audio=None)
    # Filed under the day after creationDate (a call across midnight): a key the prefix search
    # could have found too, so the custody rule (worker/custody.py) lets it through.
    rid = contact.recording_id
    next_day = f"connect/{CONNECT_ALIAS}/CallRecordings/2026/03/15/{rid}"
    key = f"{next_day}_20260315T00:05_UTC.wav"
    s3 = aws.client("s3")
    s3.put_object(Bucket=aws.ac_audio_bucket, Key=key, Body=CONNECT_WAV.read_bytes())
    job = JobMessage(rid, 3.0, connect_audio_key=key)
    result = await process_job(job, deps, scratch=deps.settings.scratch_dir)
    assert result.output_key == f"{contact.output_dir}/recording.mp4"
    row = get_row(aws, rid)
    # 5 s of Connect audio ending at the 3 s call end: its first 2 s are cut.
    assert float(row["connectAudioOffsetSeconds"]) == pytest.approx(-2.0, abs=0.05)
    missing = JobMessage(rid, 2.0, connect_audio_key=f"{next_day}_none.wav")
    with pytest.raises(ConnectAudioNotReady):
        await process_job(missing, deps, scratch=deps.settings.scratch_dir)
    # Another contact's call (it exists) is refused before any download or lease.
    other = "elsewhere/call.wav"
    s3.put_object(Bucket=aws.ac_audio_bucket, Key=other, Body=CONNECT_WAV.read_bytes())
    with pytest.raises(InvalidMessage, match="not this recording's Connect audio"):
        await process_job(
            JobMessage(rid, 2.0, connect_audio_key=other), deps, scratch=deps.settings.scratch_dir
        )
    assert "leaseOwner" not in get_row(aws, rid)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no_row", RowNotFound),
        ("no_recording", RecordingNotFound),
        ("corrupt", MediaError),
        ("no_agent", InvalidRow),
    ],
)
async def test_permanent_failures(
    aws: AwsEnv, deps: JobDeps, case: str, expected: type[Exception]
) -> None:
    contact: Contact
    if case == "no_row":
        contact = seed_contact(aws, row=False)
    elif case == "no_recording":
        contact = seed_contact(aws, recording=None)
    elif case == "corrupt":
        contact = seed_contact(aws, recording=b"\x1a\x45\xdf\xa3 this is not a webm" * 50)
    else:
        contact = seed_contact(aws)
        aws.client("dynamodb").update_item(
            TableName=aws.table_name,
            Key={"videoID": {"S": contact.recording_id}},
            UpdateExpression="REMOVE agentID",
        )
    with pytest.raises(expected) as caught:
        await process_job(
            JobMessage(contact.recording_id, 5.0), deps, scratch=deps.settings.scratch_dir
        )
    assert isinstance(caught.value, PermanentError)
    assert "\n" not in str(caught.value)
    # The reason goes to the DLQ and the row: no host paths in it.
    assert str(deps.settings.scratch_dir) not in str(caught.value)
    row = get_row(aws, contact.recording_id)
    assert "leaseOwner" not in row
    assert list(deps.settings.scratch_dir.iterdir()) == []


async def test_live_lease_of_another_worker_blocks(aws: AwsEnv, deps: JobDeps) -> None:
    contact = seed_contact(aws)
    aws.client("dynamodb").update_item(
        TableName=aws.table_name,
        Key={"videoID": {"S": contact.recording_id}},
        UpdateExpression="SET leaseOwner = :o, leaseExpiresAt = :e",
        ExpressionAttributeValues={":o": {"S": "other"}, ":e": {"N": str(time.time() + 300)}},
    )
    with pytest.raises(LeaseHeld):
        await process_job(
            JobMessage(contact.recording_id, 5.0), deps, scratch=deps.settings.scratch_dir
        )
    assert get_row(aws, contact.recording_id)["leaseOwner"] == "other"


class _StallingStore(ObjectStore):
    """An object store that, once both inputs are on disk, stalls until cancelled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.downloads = 0
        self.stalled = anyio.Event()

    async def download(self, bucket: str, key: str, destination: Path) -> int:
        size = await super().download(bucket, key, destination)
        self.downloads += 1
        if self.downloads == 2:  # the Connect audio and the recording: mid-job
            self.stalled.set()
            await anyio.sleep_forever()
        return size


async def test_cancelled_job_releases_lease_and_scratch(aws: AwsEnv, deps: JobDeps) -> None:
    contact = seed_contact(aws)
    store = _StallingStore(deps.store._s3)
    stalling = JobDeps(
        settings=deps.settings, table=deps.table, store=store, worker_id=deps.worker_id
    )
    held: dict[str, Any] = {}

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tasks:

            async def cancel_mid_job() -> None:
                await store.stalled.wait()
                held.update(get_row(aws, contact.recording_id))
                held["scratch"] = sorted(p.name for p in deps.settings.scratch_dir.rglob("*"))
                scope.cancel()

            tasks.start_soon(cancel_mid_job)
            await process_job(
                JobMessage(contact.recording_id, 5.0), stalling, scratch=deps.settings.scratch_dir
            )
    # Cancelled for certain, mid-job: the lease was held and the inputs were on disk.
    assert scope.cancelled_caught
    assert held["leaseOwner"].startswith(deps.worker_id)
    assert held["processingStatus"] == "PROCESSING"
    assert len(held["scratch"]) >= 2
    # The cancellation must not leave the lease, the status or the files behind.
    row = get_row(aws, contact.recording_id)
    assert "leaseOwner" not in row
    assert "processingStatus" not in row
    assert list(deps.settings.scratch_dir.iterdir()) == []


class _SlowClaimTable(RecordingTable):
    """A table whose claim lands in DynamoDB, then answers late (a slow network reply)."""

    claimed = False

    async def claim_lease(self, *args: Any, **kwargs: Any) -> None:
        await super().claim_lease(*args, **kwargs)
        self.claimed = True
        await anyio.sleep(30)


async def test_cancel_while_the_claim_is_answered_leaves_no_lease(
    aws: AwsEnv, deps: JobDeps
) -> None:
    contact = seed_contact(aws)
    table = _SlowClaimTable(deps.table._db, deps.table.table_name)
    slow = JobDeps(settings=deps.settings, table=table, store=deps.store, worker_id=deps.worker_id)
    with anyio.move_on_after(1.0) as scope:
        await process_job(
            JobMessage(contact.recording_id, 5.0), slow, scratch=slow.settings.scratch_dir
        )
    assert scope.cancelled_caught and table.claimed
    row = get_row(aws, contact.recording_id)
    assert "leaseOwner" not in row
    assert "processingStatus" not in row


def test_backoff_grows_exponentially_with_jitter_and_bounds() -> None:
    rng = random.Random(7)
    for count in range(1, 8):
        delays = {backoff_seconds(count, 15, 900, rng) for _ in range(50)}
        top = min(900, 15 * 2 ** (count - 1))
        assert all(max(1, top // 2) <= d <= top for d in delays), (count, delays)
        assert len(delays) > 1  # jittered
    assert backoff_seconds(10_000, 15, 900) <= 900
    assert backoff_seconds(1, 0.1, 0.1) == 1  # never 0: 0 would mean "retry at once"
    assert backoff_seconds(5, 10**6, 10**6) <= 43200


async def test_first_error_prefers_permanent_and_skips_cancellation() -> None:
    transient = AwsUnavailable("x")
    permanent = RecordingNotFound("y")
    group = BaseExceptionGroup("g", [transient, ExceptionGroup("h", [permanent])])
    assert first_error(group) is permanent
    assert first_error(ExceptionGroup("g", [ValueError("v"), transient])) is transient
    assert first_error(permanent) is permanent


def test_sweep_removes_scratch_of_dead_processes_only(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / (scratch_prefix("rec-a", dead_pid) + "x1")
        ours = tmp_path / (scratch_prefix("rec-b") + "x2")  # this process, before any job
        running = tmp_path / (scratch_prefix("rec-c", alive.pid) + "x3")
        unrelated = tmp_path / "keep-me"
        for path in (stale, ours, running, unrelated):
            path.mkdir()
            (path / "recording-input.mp4").write_bytes(b"x" * 10)
        assert sweep_stale_scratch(tmp_path) == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, "keep-me"])
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.parametrize("shared", [False, True])
async def test_a_recording_over_the_scratch_cap_is_permanent_even_when_shared(
    aws: AwsEnv, deps: JobDeps, shared: bool
) -> None:
    # ObjectStore with a cap smaller than the recording: it can never fit, whatever else runs
    # (retrying it as scratch_busy only ends in a silent SQS redrive).
    small = JobDeps(
        settings=deps.settings,
        table=deps.table,
        store=ObjectStore(deps.store._s3, scratch_max_bytes=1000),  # type: ignore[attr-defined]
        worker_id=deps.worker_id,
    )
    contact = seed_contact(aws, connect_audio=None)  # permanent first: before the Connect search
    scratch = deps.settings.scratch_dir
    if shared:  # another job is running on the same disk
        (scratch / (scratch_prefix("other-recording") + "busy")).mkdir()
    with pytest.raises(TooLargeForScratch) as caught:
        await process_job(JobMessage(contact.recording_id, 5.0), small, scratch=scratch)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.reason == "scratch_full"
    assert "leaseOwner" not in get_row(aws, contact.recording_id)


@pytest.mark.parametrize("shared", [False, True])
async def test_a_disk_full_right_now_is_transient_only_when_shared(
    aws: AwsEnv, deps: JobDeps, shared: bool, tmp_path: Path
) -> None:
    # A 1 MB disk with 700 kB taken: the 420 kB recording could fit, just not now.
    contact = seed_contact(aws)
    with mounted_tmpfs(tmp_path / "tmpfs", "1m") as scratch:
        (scratch / "ballast").write_bytes(b"\0" * 700_000)
        if shared:
            (scratch / (scratch_prefix("other-recording") + "busy")).mkdir()
        with pytest.raises(ScratchFull if not shared else ScratchBusy) as caught:
            await process_job(JobMessage(contact.recording_id, 5.0), deps, scratch=scratch)
        assert isinstance(caught.value, TransientError) is shared
        assert not isinstance(caught.value, TooLargeForScratch)
        assert sorted(p.name for p in scratch.iterdir() if p.name.startswith("job-")) == (
            [scratch_prefix("other-recording") + "busy"] if shared else []
        )


async def test_the_scratch_directory_is_removed_in_a_thread(
    aws: AwsEnv, deps: JobDeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unlinking multi-GB files takes a while: on the event loop it would stall every other
    # job's heartbeat and /healthz.
    real_rmtree = shutil.rmtree
    calls: list[tuple[str, bool]] = []

    def spy(path: Any, *args: Any, **kwargs: Any) -> None:
        calls.append((Path(path).name, threading.current_thread() is threading.main_thread()))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", spy)
    contact = seed_contact(aws, recording=None)
    scratch = deps.settings.scratch_dir
    with pytest.raises(RecordingNotFound):
        await process_job(JobMessage(contact.recording_id, 5.0), deps, scratch=scratch)
    assert [name for name, _ in calls] and all(name.startswith("job-") for name, _ in calls)
    assert not any(on_loop for _, on_loop in calls), "rmtree ran on the event loop"
    assert list(scratch.iterdir()) == []
