"""Every way a message can end leaves a reason and a row in a final state (docs/operating.md,
"Every way a message can end"), end to end on the moto server with real ffmpeg and a queue
whose maxReceiveCount is 3 (backoff 1-2 s)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.fixtures_aws import AwsEnv
from tests.harness.polling import eventually
from tests.harness.worker_harness import (
    attributes,
    dlq_messages,
    get_row,
    jobs,
    metric,
    queue_depth,
    running_consumer,
    seed_contact,
    send_job,
    set_max_receive_count,
    settings_for,
    with_fresh_queues,
)
from worker.errors import AwsUnavailable
from worker.queue import ReceivedMessage

pytestmark = pytest.mark.anyio


@pytest.fixture
def aws(world: AwsEnv) -> AwsEnv:
    """The module's world with this test's own queue (maxReceiveCount 3) and DLQ."""
    fresh = with_fresh_queues(world)
    set_max_receive_count(fresh, 3)
    return fresh


@pytest.fixture(scope="module")
def short_recording(generated: Callable[[str], Path]) -> Path:
    """4 s, 160x120 H.264 + AAC: quick to merge."""
    return generated("h264-aac")


def _collect(aws: AwsEnv, into: list[Any]) -> Callable[[], bool]:
    def check() -> bool:
        into.extend(dlq_messages(aws))
        return bool(into)

    return check


async def test_a_missing_recording_wins_over_missing_connect_audio(
    aws: AwsEnv, scratch: Path
) -> None:
    # The Connect search alone would say "not uploaded yet" (transient) and retry until the
    # redrive; the recording object can never arrive, so it is dead-lettered at once.
    contact = seed_contact(aws, recording=None, connect_audio=None)
    message_id = send_job(aws, contact.recording_id, 3)
    found: list[Any] = []
    async with running_consumer(settings_for(aws, scratch, RETRY_BACKOFF_MAX_SECONDS="2")):
        await eventually(_collect(aws, found), what="the DLQ")
        await eventually(lambda: queue_depth(aws) == (0, 0), what="message deleted")
    attrs = attributes(found[0])
    assert attrs["errorReason"] == "recording_not_found"
    assert attrs["receiveCount"] == "1" and attrs["originalMessageId"] == message_id
    assert "errorDetail" not in attrs
    row = get_row(aws, contact.recording_id)
    assert row["processingStatus"] == "FAILED"
    assert contact.input_key in row["processingError"]
    assert int(row["processingAttempts"]) == 1


async def test_a_recording_that_can_never_fit_is_dead_lettered_at_once(
    aws: AwsEnv, scratch: Path, short_recording: Path
) -> None:
    # Above SCRATCH_MAX_BYTES while another job shares the disk: still permanent.
    (scratch / "job-1-other-recording-busy").mkdir()
    contact = seed_contact(aws, recording=short_recording, connect_audio=None)
    send_job(aws, contact.recording_id, 3)
    found: list[Any] = []
    settings = settings_for(aws, scratch, SCRATCH_MAX_BYTES="1000", RETRY_BACKOFF_MAX_SECONDS="2")
    async with running_consumer(settings):
        await eventually(_collect(aws, found), what="the DLQ")
    attrs = attributes(found[0])
    assert (attrs["errorReason"], attrs["receiveCount"]) == ("scratch_full", "1")
    assert attrs["errorClass"] == "TooLargeForScratch"
    row = get_row(aws, contact.recording_id)
    assert row["processingStatus"] == "FAILED" and "SCRATCH_MAX_BYTES" in row["processingError"]


async def test_without_a_redrive_policy_transient_failures_keep_being_retried(
    aws: AwsEnv, scratch: Path, short_recording: Path
) -> None:
    # Today's behaviour for a queue without redrive (DLQ_URL set): no last receive is known,
    # so the message is retried (with backoff) for as long as SQS keeps it.
    bare_url = aws.client("sqs").create_queue(QueueName=f"bare-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    aws = dataclasses.replace(aws, queue_url=bare_url, env={**aws.env, "QUEUE_URL": bare_url})
    contact = seed_contact(aws, recording=short_recording, connect_audio=None)
    send_job(aws, contact.recording_id, 3)
    retries = metric("komorebi_retries_total", reason="connect_audio_not_ready")
    settings = settings_for(aws, scratch, RETRY_BACKOFF_MAX_SECONDS="1")
    async with running_consumer(settings):
        await eventually(
            lambda: (
                metric("komorebi_retries_total", reason="connect_audio_not_ready") >= retries + 4
            ),
            what="four retries (past what a maxReceiveCount of 3 would allow)",
        )
    assert dlq_messages(aws) == []
    row = get_row(aws, contact.recording_id)
    assert row.get("processingStatus") != "FAILED" and "leaseOwner" not in row
    assert int(row["processingAttempts"]) >= 4


async def test_a_failed_dead_letter_on_the_last_receive_still_fails_the_row(
    aws: AwsEnv, scratch: Path, short_recording: Path
) -> None:
    # The DLQ cannot be written on the last receive: SQS's redrive will move the message
    # without our attributes, so the row must say why all the same.
    set_max_receive_count(aws, 1)
    contact = seed_contact(aws, recording=short_recording, connect_audio=None)
    send_job(aws, contact.recording_id, 3)
    dead_letter_failures = metric("komorebi_retries_total", reason="aws_unavailable")
    dead_letters = jobs("dead_letter")
    async with running_consumer(settings_for(aws, scratch)) as consumer:

        async def broken_dlq(message: ReceivedMessage, error: Exception) -> None:
            raise AwsUnavailable("SendMessage: InternalError: try again")

        consumer.queue.dead_letter = broken_dlq  # type: ignore[method-assign,assignment]
        await eventually(
            lambda: get_row(aws, contact.recording_id).get("processingStatus") == "FAILED",
            what="the row FAILED",
        )
    row = get_row(aws, contact.recording_id)
    assert row["processingError"] == "Connect recording not found after 1 attempt"
    assert metric("komorebi_retries_total", reason="aws_unavailable") == dead_letter_failures + 1
    assert jobs("dead_letter") == dead_letters  # counted as a retry: it is not in the DLQ


async def test_a_lease_held_through_every_retry_still_ends_with_a_reason(
    aws: AwsEnv, scratch: Path, short_recording: Path
) -> None:
    # Another worker's lease stays live through all three receives (a very long job, or a
    # stuck one): the message is dead-lettered with the reason, and the row says FAILED and
    # why, while the holder's lease is left alone (its own result has the last word).
    contact = seed_contact(aws, recording=short_recording)
    aws.client("dynamodb").update_item(
        TableName=aws.table_name,
        Key={"videoID": {"S": contact.recording_id}},
        UpdateExpression="SET leaseOwner = :o, leaseExpiresAt = :e, processingStatus = :p",
        ExpressionAttributeValues={
            ":o": {"S": "other-worker/1234"},
            ":e": {"N": str(int(time.time()) + 3600)},
            ":p": {"S": "PROCESSING"},
        },
    )
    send_job(aws, contact.recording_id, 3)
    found: list[Any] = []
    async with running_consumer(settings_for(aws, scratch, RETRY_BACKOFF_MAX_SECONDS="2")):
        await eventually(_collect(aws, found), what="the DLQ")
    attrs = attributes(found[0])
    assert (attrs["errorReason"], attrs["errorDetail"]) == ("retries_exhausted", "lease_held")
    row = get_row(aws, contact.recording_id)
    assert row["processingStatus"] == "FAILED"
    assert row["processingError"] == "recording kept leased by another worker after 3 attempts"
    assert row["leaseOwner"] == "other-worker/1234"
