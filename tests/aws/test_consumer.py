"""The consumer (SPEC §6) in-process, on a real moto server with real ffmpeg: outcomes decided
by error type, retries with backoff, the DLQ, heartbeat, duplicates, leases, the 12-hour cap.

The tests marked ``backends`` also run on a second, independent implementation (LocalStack for
SQS and S3, dynalite for DynamoDB: tests/harness/emulators.py); the differences from moto they meet
are in docs/deploy.md ("Two AWS emulators").
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from tests.harness.fixtures_aws import AwsEnv
from tests.harness.polling import eventually
from tests.harness.worker_harness import (
    age_queued_messages,
    attributes,
    dlq_messages,
    get_row,
    jobs,
    metric,
    queue_depth,
    receive_now,
    running_consumer,
    seed_contact,
    send_job,
    send_raw,
    set_max_receive_count,
    settings_for,
    slow_merge,
    upload_connect_audio,
    with_fresh_queues,
)
from worker import consumer as consumer_module
from worker import media, recordings
from worker.aws import open_clients
from worker.consumer import Consumer
from worker.errors import ConfigError
from worker.media import run as media_run
from worker.observability import HealthState, configure_logging
from worker.protection import TaskProtector

pytestmark = pytest.mark.anyio


# The end-to-end paths that must hold on every AWS implementation, not just moto.
on_both_backends = pytest.mark.backends("moto", "localstack")


@pytest.fixture
def aws(backend_world: AwsEnv) -> AwsEnv:
    """The shared world (of this test's backend) with this test's own empty queue and DLQ."""
    return with_fresh_queues(backend_world)


@pytest.fixture(scope="module")
def short_recording(generated: Callable[[str], Path]) -> Path:
    """4 s, 160x120 H.264 + AAC (1000 Hz): quick to merge."""
    return generated("h264-aac")


def _done(aws: AwsEnv, recording_id: str) -> Callable[[], bool]:
    return lambda: get_row(aws, recording_id).get("processingStatus") == "DONE"


def _queue_empty(aws: AwsEnv) -> Callable[[], bool]:
    return lambda: queue_depth(aws) == (0, 0)


@on_both_backends
async def test_message_processed_and_deleted(
    aws: AwsEnv, scratch: Path, short_recording: Path
) -> None:
    contact = seed_contact(aws, recording=short_recording, extra={"note": {"S": "keep me"}})
    send_job(aws, contact.recording_id, "00:00:03")
    successes = jobs("success")
    async with running_consumer(settings_for(aws, scratch)):
        await eventually(_done(aws, contact.recording_id), what="row DONE")
        await eventually(_queue_empty(aws), what="message deleted")
    row = get_row(aws, contact.recording_id)
    assert row["isProcessed"] is True and row["note"] == "keep me"
    keys = {
        o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=aws.output_bucket)["Contents"]
    }
    assert keys == {f"{contact.output_dir}/recording.mp4", contact.thumbnail_key}
    assert jobs("success") == successes + 1
    assert dlq_messages(aws) == []
    assert list(scratch.iterdir()) == []


@on_both_backends
async def test_connect_audio_uploaded_late_is_retried_then_succeeds(
    aws: AwsEnv, scratch: Path, short_recording: Path
) -> None:
    contact = seed_contact(aws, recording=short_recording, connect_audio=None)
    send_job(aws, contact.recording_id, 3)
    retries = metric("komorebi_retries_total", reason="connect_audio_not_ready")
    async with running_consumer(settings_for(aws, scratch)):
        await eventually(
            lambda: (
                metric("komorebi_retries_total", reason="connect_audio_not_ready") >= retries + 1
            ),
            what="a retry for the missing Connect audio",
        )
        # Retried, not dead-lettered; the lease was given back for the next attempt.
        row = get_row(aws, contact.recording_id)
        assert "leaseOwner" not in row and row.get("processingStatus") != "FAILED"
        upload_connect_audio(aws, contact)
        await eventually(_done(aws, contact.recording_id), what="row DONE after the upload")
        await eventually(_queue_empty(aws), what="message deleted")
    row = get_row(aws, contact.recording_id)
    assert int(row["processingAttempts"]) >= 2
    assert dlq_messages(aws) == []


def histogram(name: str, **labels: str) -> dict[str, float]:
    """One histogram child of the worker's registry: ``sum``, ``count`` and each bucket bound."""
    values = {
        "sum": metric(f"{name}_sum", **labels),
        "count": metric(f"{name}_count", **labels),
    }
    for bound in ("1800.0", "3600.0", "7200.0"):
        values[bound] = metric(f"{name}_bucket", le=bound, **labels)
    return values


def grew(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: round(after[key] - before[key], 3) for key in before}


async def test_a_message_that_waited_shows_its_wait_in_the_slo_histograms(
    aws: AwsEnv, scratch: Path, short_recording: Path
) -> None:
    # Sent "5000 s ago" (its SentTimestamp moved back in moto): both end-to-end histograms see
    # 5000 s plus the real receive and job (no more than this test's own time since the send;
    # 1 s for the timestamps' resolution), in the 3600-7200 s bucket.
    contact = seed_contact(aws, recording=short_recording)
    sent = time.monotonic()
    send_job(aws, contact.recording_id, 3)
    assert age_queued_messages(aws, 5000) == 1
    wait = histogram("komorebi_queue_wait_seconds", delivery="first")
    done = histogram("komorebi_message_to_done_seconds")
    async with running_consumer(settings_for(aws, scratch)):
        await eventually(_done(aws, contact.recording_id), what="row DONE")
        await eventually(_queue_empty(aws), what="message deleted")
    real = time.monotonic() - sent + 1.0
    waited = grew(wait, histogram("komorebi_queue_wait_seconds", delivery="first"))
    assert waited["count"] == 1 and 5000 <= waited["sum"] <= 5000 + real, (waited, real)
    assert (waited["1800.0"], waited["3600.0"], waited["7200.0"]) == (0, 0, 1)
    took = grew(done, histogram("komorebi_message_to_done_seconds"))
    assert took["count"] == 1 and waited["sum"] <= took["sum"] <= 5000 + real, (took, real)
    assert (took["1800.0"], took["3600.0"], took["7200.0"]) == (0, 0, 1)


@on_both_backends
async def test_message_to_done_counts_from_the_first_send_across_a_retry(
    aws: AwsEnv, scratch: Path, short_recording: Path, json_logs: io.StringIO
) -> None:
    # The Connect audio is missing on the first receive: retried after a backoff. SQS keeps
    # the message's SentTimestamp through ChangeMessageVisibility, so the second receive's
    # queue wait and the message's time to DONE both include that backoff.
    contact = seed_contact(aws, recording=short_recording, connect_audio=None)
    message_id = send_job(aws, contact.recording_id, 3)
    first = histogram("komorebi_queue_wait_seconds", delivery="first")
    repeat = histogram("komorebi_queue_wait_seconds", delivery="repeat")
    done = histogram("komorebi_message_to_done_seconds")
    retries = metric("komorebi_retries_total", reason="connect_audio_not_ready")
    settings = settings_for(
        aws, scratch, RETRY_BACKOFF_BASE_SECONDS="6", RETRY_BACKOFF_MAX_SECONDS="6"
    )
    async with running_consumer(settings):
        await eventually(
            lambda: (
                metric("komorebi_retries_total", reason="connect_audio_not_ready") >= retries + 1
            ),
            what="a retry for the missing Connect audio",
        )
        upload_connect_audio(aws, contact)
        await eventually(_done(aws, contact.recording_id), what="row DONE after the upload")
        await eventually(_queue_empty(aws), what="message deleted")
    records = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    (retry,) = [
        r for r in records if r.get("message_id") == message_id and r["event"] == "job.retry"
    ]
    backoff = float(retry["retry_in_seconds"])
    assert 3 <= backoff <= 6  # 6 s x jitter 0.5-1
    waited_first = grew(first, histogram("komorebi_queue_wait_seconds", delivery="first"))
    waited_again = grew(repeat, histogram("komorebi_queue_wait_seconds", delivery="repeat"))
    took = grew(done, histogram("komorebi_message_to_done_seconds"))
    assert waited_first["count"] == 1 and waited_again["count"] == 1
    # The repeat's wait runs from the first send: the first wait + the first job + backoff.
    assert waited_again["sum"] >= waited_first["sum"] + backoff, (waited_first, waited_again)
    assert took["count"] == 1 and took["sum"] >= waited_again["sum"] >= backoff, took
    assert took["1800.0"] == 1  # well within the SLO


@on_both_backends
async def test_permanent_failures_go_to_the_dlq_at_once_and_worker_keeps_going(
    aws: AwsEnv, scratch: Path, short_recording: Path
) -> None:
    no_row = seed_contact(aws, row=False)
    no_recording = seed_contact(aws, recording=None)
    corrupt = seed_contact(aws, recording=b"\x00\x00\x00\x18ftypmp42 truncated nonsense" * 40)
    good = seed_contact(aws, recording=short_recording)
    bad_call_end = seed_contact(aws, recording=short_recording)
    bodies = {
        "bad_json": "{not json",
        "bad_id": json.dumps({"recordingID": "../etc/passwd", "callEndingTimestamp": "00:00:05"}),
        # A valid id with an invalid call end: its row must say FAILED too.
        "bad_call_end": json.dumps(
            {"recordingID": bad_call_end.recording_id, "callEndingTimestamp": "soon"}
        ),
    }
    sent = {name: send_raw(aws, body) for name, body in bodies.items()}
    sent["no_row"] = send_job(aws, no_row.recording_id)
    sent["no_recording"] = send_job(aws, no_recording.recording_id)
    sent["corrupt"] = send_job(aws, corrupt.recording_id)
    send_job(aws, good.recording_id, 3)

    async with running_consumer(settings_for(aws, scratch)):
        await eventually(_done(aws, good.recording_id), what="the valid job done")
        await eventually(_queue_empty(aws), what="every message handled")
    dead = {attributes(m)["originalMessageId"]: (m, attributes(m)) for m in dlq_messages(aws)}
    assert set(dead) == set(sent.values())
    expected = {
        "bad_json": "invalid_message",
        "bad_id": "invalid_message",
        "bad_call_end": "invalid_message",
        "no_row": "row_not_found",
        "no_recording": "recording_not_found",
        "corrupt": "media_invalid",
    }
    for name, message_id in sent.items():
        _message, attrs = dead[message_id]
        assert attrs["errorReason"] == expected[name], (name, attrs)
        assert attrs["errorClass"] and attrs["errorMessage"] and attrs["failedAt"]
        # At once: dead-lettered by the worker on the first delivery, not by redrive.
        assert attrs["receiveCount"] == "1"
        assert "\n" not in attrs["errorMessage"]
    assert dead[sent["bad_json"]][0]["Body"] == bodies["bad_json"]  # original body kept
    for contact in (no_recording, corrupt, bad_call_end):
        row = get_row(aws, contact.recording_id)
        assert row["processingStatus"] == "FAILED"
        assert row["processingError"] and "\n" not in row["processingError"]
        assert "leaseOwner" not in row
    assert get_row(aws, no_row.recording_id) == {}  # no row was invented
    assert list(scratch.iterdir()) == []


@on_both_backends
async def test_transient_failure_on_the_last_receive_is_dead_lettered_with_its_reason(
    aws: AwsEnv, scratch: Path, short_recording: Path
) -> None:
    # Connect audio that never arrives (recording disabled, an IVR-only contact), queue with
    # maxReceiveCount 3: the worker dead-letters it itself on the third receive, with the
    # reason, instead of SQS moving it silently; the row says FAILED and why.
    set_max_receive_count(aws, 3)
    contact = seed_contact(aws, recording=short_recording, connect_audio=None)
    sqs = aws.client("sqs")
    message_id = sqs.send_message(
        QueueUrl=aws.queue_url,
        MessageBody=json.dumps({"recordingID": contact.recording_id, "callEndingTimestamp": 3}),
        MessageAttributes={"traceId": {"DataType": "String", "StringValue": "trace-42"}},
    )["MessageId"]
    found: list[Any] = []

    def dead() -> bool:
        found.extend(dlq_messages(aws))
        return bool(found)

    settings = settings_for(aws, scratch, RETRY_BACKOFF_MAX_SECONDS="2")
    async with running_consumer(settings):
        await eventually(dead, what="the DLQ")
        await eventually(_queue_empty(aws), what="message deleted")
    assert [m["MessageId"] for m in found] != [message_id]  # sent by the worker, not SQS
    attrs = attributes(found[0])
    assert attrs["errorReason"] == "retries_exhausted"
    assert attrs["errorDetail"] == "connect_audio_not_ready"
    assert attrs["errorClass"] == "RetriesExhausted"
    assert attrs["receiveCount"] == "3" and attrs["originalMessageId"] == message_id
    assert attrs["errorMessage"] == "Connect recording not found after 3 attempts"
    assert attrs["traceId"] == "trace-42"  # the producer's attributes travel along
    row = get_row(aws, contact.recording_id)
    assert row["processingStatus"] == "FAILED"
    assert row["processingError"] == "Connect recording not found after 3 attempts"
    assert row.get("isProcessed") is not True and "leaseOwner" not in row
    assert int(row["processingAttempts"]) == 3
    assert list(scratch.iterdir()) == []


async def test_heartbeat_keeps_a_long_job_from_being_delivered_twice(
    aws: AwsEnv, scratch: Path, short_recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Visibility 2 s everywhere (queue default too): without the heartbeat the message would
    # be visible again 2 s after the receive. The merge reads the recording at real time:
    # 4 s of media take about 4 s.
    aws.client("sqs").set_queue_attributes(
        QueueUrl=aws.queue_url, Attributes={"VisibilityTimeout": "2"}
    )
    monkeypatch.setattr(media_run, "build_merge_args", slow_merge(1.0))
    contact = seed_contact(aws, recording=short_recording)
    send_job(aws, contact.recording_id, 3)
    extensions = metric("komorebi_visibility_extensions_total")
    stolen: list[Any] = []
    settings = settings_for(aws, scratch, VISIBILITY_TIMEOUT="2")
    async with running_consumer(settings) as consumer:
        await eventually(lambda: consumer.in_flight == 1, what="the job to start")
        while consumer.in_flight:
            # Anyone polling the queue meanwhile must get nothing.
            stolen += await anyio.to_thread.run_sync(lambda: receive_now(aws, hide=1))
            await anyio.sleep(0.3)
        await eventually(_done(aws, contact.recording_id), what="row DONE")
    assert stolen == []
    assert metric("komorebi_visibility_extensions_total") >= extensions + 3
    assert int(get_row(aws, contact.recording_id)["processingAttempts"]) == 1
    assert queue_depth(aws) == (0, 0)


@on_both_backends
async def test_same_message_twice_is_processed_once(
    aws: AwsEnv, scratch: Path, short_recording: Path
) -> None:
    contact = seed_contact(aws, recording=short_recording)
    send_job(aws, contact.recording_id, 3)
    send_job(aws, contact.recording_id, "00:00:03.000")
    before = {o: jobs(o) for o in ("success", "duplicate")}
    polls: list[tuple[int, int]] = []
    async with running_consumer(settings_for(aws, scratch, WORKER_CONCURRENCY="1")) as consumer:
        receive = consumer.queue.receive

        async def spy(max_messages: int, wait_seconds: int = 20, **options: Any) -> list[Any]:
            polls.append((max_messages, consumer.in_flight))
            return await receive(max_messages, wait_seconds, **options)

        consumer.queue.receive = spy  # type: ignore[method-assign]
        await eventually(
            lambda: jobs("duplicate") >= before["duplicate"] + 1, what="the duplicate acked"
        )
        await eventually(_queue_empty(aws), what="both messages deleted")
    assert jobs("success") == before["success"] + 1
    assert int(get_row(aws, contact.recording_id)["processingAttempts"]) == 1
    # Polled only with the slot free, for at most the free slots.
    assert polls and all(poll == (1, 0) for poll in polls), polls


async def test_a_queue_without_dlq_is_a_configuration_error(aws: AwsEnv, scratch: Path) -> None:
    sqs = aws.client("sqs")
    bare = sqs.create_queue(QueueName=f"bare-{aws.table_name[-10:]}")["QueueUrl"]
    settings = settings_for(aws, scratch, QUEUE_URL=bare, DLQ_URL="")
    async with open_clients(settings) as clients:
        consumer = Consumer(settings, clients, HealthState(), TaskProtector(None, 1))
        with pytest.raises(ConfigError, match="DLQ"):
            await consumer.run()


@on_both_backends
async def test_two_workers_on_one_recording_are_serialised_by_the_lease(
    aws: AwsEnv, scratch: Path, short_recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Worker A holds the lease (slow merge) when worker B gets a second message for the same
    # recording: B must back off (LeaseHeld is transient) and later acknowledge the message as
    # a duplicate. B starts only once A holds the lease: moto's DynamoDB does not serialise
    # concurrent conditional writes (real DynamoDB does), so simultaneous claims would race
    # in the emulator itself. B's backoff outlasts A's job, so its retry finds the row DONE.
    monkeypatch.setattr(media_run, "build_merge_args", slow_merge(2.0))
    contact = seed_contact(aws, recording=short_recording)
    lease_retries = metric("komorebi_retries_total", reason="lease_held")
    before = {o: jobs(o) for o in ("success", "duplicate")}
    settings_a = settings_for(aws, scratch, WORKER_CONCURRENCY="1")
    settings_b = settings_for(
        aws,
        scratch,
        WORKER_CONCURRENCY="1",
        RETRY_BACKOFF_BASE_SECONDS="8",
        RETRY_BACKOFF_MAX_SECONDS="8",
    )
    async with running_consumer(settings_a, worker_id="worker-a"):
        send_job(aws, contact.recording_id, 3)
        await eventually(
            lambda: get_row(aws, contact.recording_id).get("leaseOwner", "").startswith("worker-a"),
            what="worker A holding the lease",
        )
        send_job(aws, contact.recording_id, 3)
        async with running_consumer(settings_b, worker_id="worker-b"):
            await eventually(
                lambda: metric("komorebi_retries_total", reason="lease_held") >= lease_retries + 1,
                what="worker B backing off",
            )
            await eventually(_done(aws, contact.recording_id), what="row DONE")
            await eventually(_queue_empty(aws), what="both messages handled")
    assert jobs("success") == before["success"] + 1
    assert jobs("duplicate") == before["duplicate"] + 1
    assert int(get_row(aws, contact.recording_id)["processingAttempts"]) == 1


async def test_job_reaching_the_visibility_limit_is_dead_lettered(
    aws: AwsEnv, scratch: Path, short_recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The 12-hour cap, scaled down: a job that cannot finish in time is stopped (ffmpeg
    # killed, lease released, scratch removed) and dead-lettered as max_duration.
    monkeypatch.setattr(media_run, "build_merge_args", slow_merge(0.25))
    contact = seed_contact(aws, recording=short_recording)
    message_id = send_job(aws, contact.recording_id, 3)
    found: list[Any] = []

    def dead() -> bool:
        found.extend(dlq_messages(aws))
        return bool(found)

    async with running_consumer(settings_for(aws, scratch), max_job_seconds=2):
        await eventually(dead, what="the DLQ")
        await eventually(_queue_empty(aws), what="message deleted")
    assert attributes(found[0])["errorReason"] == "max_duration"
    assert attributes(found[0])["originalMessageId"] == message_id
    row = get_row(aws, contact.recording_id)
    assert row["processingStatus"] == "FAILED" and "leaseOwner" not in row
    assert list(scratch.iterdir()) == []


async def test_graceful_stop_gives_the_message_back_at_once(
    aws: AwsEnv, scratch: Path, short_recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(media_run, "build_merge_args", slow_merge(0.25))
    contact = seed_contact(aws, recording=short_recording)
    message_id = send_job(aws, contact.recording_id, 3)
    released = jobs("released")
    settings = settings_for(aws, scratch, SHUTDOWN_GRACE_SECONDS="0.5")
    async with running_consumer(settings) as consumer:
        await eventually(
            lambda: "leaseOwner" in get_row(aws, contact.recording_id), what="the job to start"
        )
        consumer.request_stop()
    # run() has returned: the job was cancelled after the grace period and cleaned up.
    assert jobs("released") == released + 1
    assert [m["MessageId"] for m in receive_now(aws)] == [message_id]
    row = get_row(aws, contact.recording_id)
    assert "leaseOwner" not in row and row.get("processingStatus") is None
    assert list(scratch.iterdir()) == []


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The worker's logging as configured in production (JSON, INFO) into a buffer."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    buffer = io.StringIO()
    configure_logging("INFO", "json", buffer)
    yield buffer
    structlog.reset_defaults()
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


async def test_unexpected_error_is_retried_and_logged_as_one_line(
    aws: AwsEnv,
    scratch: Path,
    short_recording: Path,
    monkeypatch: pytest.MonkeyPatch,
    json_logs: io.StringIO,
) -> None:
    # A bug (not a JobError) in the first attempt: the message must not be lost or
    # dead-lettered, the worker must not crash, and the log gets one line, no traceback.
    real_merge = media.merge
    calls: list[int] = []

    async def buggy_merge(request: media.MergeRequest, **kwargs: Any) -> media.MergeResult:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("boom\nsecond line")
        return await real_merge(request, **kwargs)

    monkeypatch.setattr(media, "merge", buggy_merge)
    contact = seed_contact(aws, recording=short_recording)
    message_id = send_job(aws, contact.recording_id, 3)
    unexpected = metric("komorebi_retries_total", reason="unexpected")
    async with running_consumer(settings_for(aws, scratch)):
        await eventually(_done(aws, contact.recording_id), what="row DONE after the retry")
        await eventually(_queue_empty(aws), what="message deleted")
    assert metric("komorebi_retries_total", reason="unexpected") == unexpected + 1
    records = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    mine = [r for r in records if r.get("message_id") == message_id]
    (retry,) = [r for r in mine if r["event"] == "job.retry"]
    assert retry["level"] == "error"
    assert retry["reason"] == "unexpected" and retry["error_type"] == "KeyError"
    assert "\n" not in retry["error"] and retry["retry_in_seconds"] >= 1
    assert [r["event"] for r in mine].count("job.succeeded") == 1
    assert "Traceback" not in json_logs.getvalue()
    assert dlq_messages(aws) == []


async def test_poll_in_progress_at_stop_is_not_orphaned(
    aws: AwsEnv, scratch: Path, short_recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQS (and moto) deliver to a long poll whose connection was dropped, so a worker that
    # cancels its poll on SIGTERM can hide messages for a whole visibility timeout. With a job
    # in flight the poll is left to finish: what it returns is given back at once, and the
    # cancelled job's message, given back later, is not swallowed by a dead poll either.
    monkeypatch.setattr(media_run, "build_merge_args", slow_merge(0.25))
    contact = seed_contact(aws, recording=short_recording)
    job_message = send_job(aws, contact.recording_id, 3)
    released = jobs("released")
    receiving = anyio.Event()
    settings = settings_for(aws, scratch, SHUTDOWN_GRACE_SECONDS="2")
    async with running_consumer(settings, poll_wait_seconds=20) as consumer:
        receive = consumer.queue.receive

        async def spy(max_messages: int, wait_seconds: int = 20, **options: Any) -> list[Any]:
            if consumer.in_flight == 1 and wait_seconds > 0:
                receiving.set()  # a long poll (<= grace/2) while the job runs
            return await receive(max_messages, wait_seconds, **options)

        consumer.queue.receive = spy  # type: ignore[method-assign]
        await receiving.wait()
        # Blocking calls: the consumer cannot run until both are done, so the poll's answer
        # (the new message) arrives after the stop request.
        late_message = send_job(aws, seed_contact(aws, recording=short_recording).recording_id)
        consumer.request_stop()
    assert jobs("released") == released + 2
    assert {m["MessageId"] for m in receive_now(aws)} == {job_message, late_message}
    assert "leaseOwner" not in get_row(aws, contact.recording_id)


async def test_a_hung_receive_is_abandoned_and_the_loop_keeps_ticking(
    aws: AwsEnv, scratch: Path, short_recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A black-holed ReceiveMessage must not freeze the loop (and fail /healthz) for the SDK's
    # read timeout times its attempts: it is given up after the wait plus an overrun.
    monkeypatch.setattr(consumer_module, "RECEIVE_OVERRUN_SECONDS", 0.5)
    contact = seed_contact(aws, recording=short_recording)
    hung = anyio.Event()
    async with running_consumer(settings_for(aws, scratch)) as consumer:
        receive = consumer.queue.receive

        async def black_hole_once(*args: Any, **options: Any) -> list[Any]:
            if not hung.is_set():
                hung.set()
                await anyio.sleep_forever()
            return await receive(*args, **options)

        consumer.queue.receive = black_hole_once  # type: ignore[method-assign]
        await hung.wait()
        # Sent while the loop is stuck in the black hole: only a later poll can take it.
        send_job(aws, contact.recording_id, 3)
        await eventually(_done(aws, contact.recording_id), what="the job done after the hang")


@on_both_backends
async def test_delivery_deleted_while_its_job_runs_is_seen_as_lost(
    aws: AwsEnv,
    scratch: Path,
    short_recording: Path,
    monkeypatch: pytest.MonkeyPatch,
    json_logs: io.StringIO,
) -> None:
    # Someone else deletes the delivery mid-job (an operator, a purge, a redelivery already
    # acknowledged): every implementation words the heartbeat's error its own way (moto:
    # ReceiptHandleIsInvalid; LocalStack and AWS: InvalidParameterValue naming the parameter
    # ReceiptHandle), and each must read as "this delivery is gone": heartbeats stop at once,
    # the job still finishes, and the receipt handle is never logged.
    monkeypatch.setattr(media_run, "build_merge_args", slow_merge(1.0))
    contact = seed_contact(aws, recording=short_recording)
    message_id = send_job(aws, contact.recording_id, 3)
    handles: list[str] = []
    settings = settings_for(aws, scratch, VISIBILITY_TIMEOUT="3")  # a heartbeat every second
    async with running_consumer(settings) as consumer:
        receive = consumer.queue.receive

        async def spy(max_messages: int, wait_seconds: int = 20, **options: Any) -> list[Any]:
            got = await receive(max_messages, wait_seconds, **options)
            handles.extend(m.receipt_handle for m in got)
            return got

        consumer.queue.receive = spy  # type: ignore[method-assign]
        await eventually(lambda: consumer.in_flight == 1 and bool(handles), what="job start")
        await anyio.to_thread.run_sync(
            lambda: aws.client("sqs").delete_message(
                QueueUrl=aws.queue_url, ReceiptHandle=handles[0]
            )
        )
        await eventually(lambda: '"heartbeat.lost"' in json_logs.getvalue(), what="lost")
        await eventually(_done(aws, contact.recording_id), what="row DONE")
        await eventually(lambda: consumer.in_flight == 0, what="job settled")
    records = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    mine = [r for r in records if r.get("message_id") == message_id]
    events = [r["event"] for r in mine]
    assert events.count("heartbeat.lost") == 1, events
    assert "heartbeat.failed" not in events, [r for r in mine if r["event"] == "heartbeat.failed"]
    assert events.count("job.succeeded") == 1
    text = json_logs.getvalue()
    for handle in handles:
        assert handle not in text
        assert handle[:24] not in text  # not even its start
    assert queue_depth(aws) == (0, 0)


@pytest.mark.backends("localstack")
async def test_two_workers_claiming_at_the_same_moment_merge_once(
    aws: AwsEnv, scratch: Path, short_recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two deliveries of one recording, two workers, and both lease claims sent at the same
    # moment (held at a barrier until both are ready). DynamoDB (and dynalite) serialise
    # conditional writes: exactly one claim wins, one merge runs; the loser backs off and later
    # acknowledges its delivery as a duplicate. Not on moto: it lets both claims win.
    merges: list[str] = []
    real_merge = media.merge

    async def counting_merge(request: media.MergeRequest, **kwargs: Any) -> media.MergeResult:
        merges.append(request.output.name)
        return await real_merge(request, **kwargs)

    monkeypatch.setattr(media, "merge", counting_merge)
    arrived: list[str] = []
    both = anyio.Event()
    real_claim = recordings.RecordingTable.claim_lease

    async def claim_together(
        table: recordings.RecordingTable, recording_id: str, owner: str, *args: Any, **kw: Any
    ) -> None:
        arrived.append(owner)
        if len(arrived) >= 2:
            both.set()
        with anyio.move_on_after(20):
            await both.wait()
        return await real_claim(table, recording_id, owner, *args, **kw)

    monkeypatch.setattr(recordings.RecordingTable, "claim_lease", claim_together)
    contact = seed_contact(aws, recording=short_recording)
    send_job(aws, contact.recording_id, 3)
    send_job(aws, contact.recording_id, 3)
    before = {o: jobs(o) for o in ("success", "duplicate")}
    lease_retries = metric("komorebi_retries_total", reason="lease_held")
    one_slot = {"WORKER_CONCURRENCY": "1"}
    settings_a = settings_for(aws, scratch, **one_slot)
    settings_b = settings_for(
        aws, scratch, **one_slot, RETRY_BACKOFF_BASE_SECONDS="2", RETRY_BACKOFF_MAX_SECONDS="2"
    )
    async with (
        running_consumer(settings_a, worker_id="worker-a"),
        running_consumer(settings_b, worker_id="worker-b"),
    ):
        await eventually(both.is_set, what="both workers claiming")
        await eventually(_done(aws, contact.recording_id), what="row DONE")
        await eventually(_queue_empty(aws), what="both messages handled", timeout=60)
    owners = {owner.split("/")[0] for owner in arrived[:2]}
    assert owners == {"worker-a", "worker-b"}, arrived
    assert len(merges) == 1, merges
    assert jobs("success") == before["success"] + 1
    assert jobs("duplicate") == before["duplicate"] + 1
    assert metric("komorebi_retries_total", reason="lease_held") >= lease_retries + 1
    assert int(get_row(aws, contact.recording_id)["processingAttempts"]) == 1
    assert dlq_messages(aws) == []
