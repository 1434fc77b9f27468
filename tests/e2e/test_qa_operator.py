"""QA cases for the operator commands (issue 16) that the builders' tests did not cover, each
guarding a defect found by running the commands as an operator would: dead letters too large
to re-send ten at a time, dates and ages past datetime's range, and output piped into ``head``.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime

import pytest

from tests.harness.cli import SCRIPT, assert_one_line_error, run_cli
from tests.harness.fixtures_aws import AwsEnv, aws_base_env
from tests.harness.fixtures_dlq import drain, fresh_queues
from worker.backfill import parse_window
from worker.deadletters import parse_dead_letter, parse_since
from worker.errors import ConfigError
from worker.queue import SQS_BATCH_LIMIT
from worker.redrive import by_payload, redrive

# A body of 110 KB: three exceed a 256 KiB batch, ten the 1 MiB of newer queues (and moto's).
LARGE = 110_000


def _large_letters(world: AwsEnv, dlq_url: str, count: int) -> None:
    sqs = world.client("sqs")
    for index in range(count):
        sqs.send_message(
            QueueUrl=dlq_url,
            MessageBody=f"{index:03d}" + "x" * LARGE,
            MessageAttributes={"errorReason": {"DataType": "String", "StringValue": "unexpected"}},
        )


def test_large_dead_letters_are_re_sent_in_batches_that_fit(world: AwsEnv) -> None:
    # Ten 110 KB dead letters in one SendMessageBatch is 1.1 MB: SQS refuses the whole batch
    # (BatchRequestTooLong) and, before the fix, no redrive could ever move them.
    queue_url, dlq_url = fresh_queues(world)
    _large_letters(world, dlq_url, 12)
    result = redrive(queue_url, dlq_url, sqs=world.client("sqs"), hold_seconds=60)
    assert (result.moved, result.failed, result.not_deleted) == (12, 0, [])
    moved = drain(world.client("sqs"), queue_url)
    assert sorted(m["Body"][:3] for m in moved) == [f"{i:03d}" for i in range(12)]
    assert all(len(m["Body"]) == LARGE + 3 for m in moved)
    assert drain(world.client("sqs"), dlq_url) == []


def test_payload_chunks_keep_order_and_fit() -> None:
    def message(index: int, size: int) -> dict[str, object]:
        return {"MessageId": f"m{index}", "ReceiptHandle": "h", "Body": "x" * size}

    sizes = [LARGE, LARGE, LARGE, 10, SQS_BATCH_LIMIT + 5, 10, 10]
    picked = [(m, parse_dead_letter(m)) for m in (message(i, s) for i, s in enumerate(sizes))]
    chunks = by_payload(picked)
    assert [[m["MessageId"] for m, _ in chunk] for chunk in chunks] == [
        ["m0", "m1"],
        ["m2", "m3"],
        ["m4"],  # too large for any batch: alone (the queue itself decides)
        ["m5", "m6"],
    ]


@pytest.mark.parametrize("age", ["99999999999w", "9999999999999999d"])
def test_an_age_before_year_one_is_a_usage_error(age: str) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        parse_since(age, datetime(2026, 12, 6, tzinfo=UTC))


def test_backfill_windows_at_the_ends_of_the_calendar() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        parse_window("2026-11-27", "9999-12-31")
    assert parse_window("0001-01-01", "0001-01-01").scan_bounds() == ("0001-01-01", "0001-01-04")
    assert parse_window("9999-12-29", "9999-12-30").scan_bounds()[1] == "9999-12-31"


def test_out_of_range_dates_are_one_line_not_a_traceback(world: AwsEnv) -> None:
    env = {**aws_base_env(world.endpoint), "QUEUE_URL": "http://127.0.0.1:1/q"}
    assert_one_line_error(run_cli("dlq", "list", "--since", "99999999999w", env=env), 2)
    result = run_cli("backfill", "--from", "2026-11-27", "--to", "9999-12-31", env=env)
    assert_one_line_error(result, 2)


def test_dlq_list_into_head_stops_quietly_and_releases(world: AwsEnv) -> None:
    queue_url, dlq_url = fresh_queues(world)
    sqs = world.client("sqs")
    for index in range(15):
        sqs.send_message(QueueUrl=dlq_url, MessageBody=f'{{"recordingID": "r{index}"}}')
    env = {
        "PATH": "/usr/bin:/bin",
        **aws_base_env(world.endpoint),
        "QUEUE_URL": queue_url,
        "DLQ_URL": dlq_url,
    }
    # The reader closes the pipe after the first line (``| head -1``).
    with subprocess.Popen(
        [str(SCRIPT), "dlq", "list"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()
        stderr = process.stderr.read().decode()
        code = process.wait(timeout=60)
    assert first.startswith(b"r")
    assert "Traceback" not in stderr, stderr
    assert code == 1
    assert stderr.strip() == "komorebi-worker: output closed; stopped"
    # Everything it held is visible again at once: nothing lost to the broken pipe.
    assert len(drain(sqs, dlq_url)) == 15
