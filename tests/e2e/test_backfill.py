"""``backfill`` (issue 16): the pure pieces (window, row state, decision, token bucket), then
thousands of rows on moto and on dynalite, read page by page, the selected ones enqueued."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.harness.cli import run_cli
from tests.harness.fixtures_aws import AwsEnv, create_table
from tests.harness.fixtures_dlq import drain, fresh_queues
from worker import cli
from worker.backfill import (
    DONE,
    FAILED,
    IN_PROGRESS,
    UNPROCESSED,
    Backfill,
    BackfillResult,
    RowView,
    decide,
    parse_window,
    row_state,
)
from worker.errors import ConfigError
from worker.messages import parse_message
from worker.ratelimit import TokenBucket, parse_rate
from worker.recordings import REQUESTED_CALL_END

DAY = datetime(2026, 11, 27, tzinfo=UTC)

# --- pure --------------------------------------------------------------------------------------


def test_window_days_include_the_last_day_and_times_exclude_the_end() -> None:
    window = parse_window("2026-11-27", "2026-11-27")
    assert (window.start, window.end) == (DAY, DAY + timedelta(days=1))
    timed = parse_window("2026-11-27T06:00:00+01:00", "2026-11-27T12:00")
    assert timed.start == DAY + timedelta(hours=5) and timed.end == DAY + timedelta(hours=12)
    assert not timed.contains(timed.end)
    assert window.scan_bounds() == ("2026-11-26", "2026-11-30")
    with pytest.raises(ConfigError, match="--to"):
        parse_window("2026-11-28", "2026-11-27")
    with pytest.raises(ConfigError, match="--from"):
        parse_window("last week", "2026-11-27")


@pytest.mark.parametrize(
    ("item", "state"),
    [
        ({"processingStatus": {"S": "DONE"}}, DONE),
        ({"isProcessed": {"BOOL": True}}, DONE),  # processed by the Lambda: no status
        ({"isProcessed": {"N": "1"}}, DONE),
        ({"processingStatus": {"S": "FAILED"}}, FAILED),
        ({"processingStatus": {"S": "PROCESSING"}, "leaseExpiresAt": {"N": "2000"}}, IN_PROGRESS),
        ({"processingStatus": {"S": "PROCESSING"}, "leaseExpiresAt": {"N": "500"}}, UNPROCESSED),
        ({}, UNPROCESSED),
    ],
)
def test_row_state(item: dict[str, Any], state: str) -> None:
    assert row_state(item, now=1000.0) == state


def _row(state: str, call_end: float | None = 12.5, rid: str = "rec-1") -> RowView:
    return RowView(rid, DAY, state, call_end, None)


def test_decisions() -> None:
    assert decide(_row(DONE), "failed", force=False) is None
    assert decide(_row(FAILED), "unprocessed", force=False) is None
    sent = decide(_row(FAILED), "failed", force=False)
    assert sent is not None and sent.send and sent.job is not None
    assert parse_message(sent.job.to_body()).call_end_seconds == 12.5
    skipped = decide(_row(DONE), "all", force=False)
    assert skipped is not None and not skipped.send and "--force" in skipped.why
    forced = decide(_row(DONE), "all", force=True)
    assert forced is not None and forced.send
    unknown = decide(_row(UNPROCESSED, None), "unprocessed", force=False)
    assert unknown is not None and not unknown.send and "no call end" in unknown.why
    busy = decide(_row(IN_PROGRESS), "all", force=True)
    assert busy is not None and not busy.send
    hostile = decide(_row(FAILED, rid="../x"), "failed", force=False)
    assert hostile is not None and not hostile.send


def test_token_bucket_paces_batches() -> None:
    bucket = TokenBucket(rate=5.0, capacity=5.0)
    assert bucket.delay(5, now=0.0) == 0.0  # starts full
    bucket.take(5, now=0.0)
    assert bucket.delay(5, now=0.0) == pytest.approx(1.0)
    assert bucket.delay(5, now=0.5) == pytest.approx(0.5)
    assert bucket.delay(1, now=10.0) == 0.0  # never more than the capacity saved up
    bucket.take(1, now=10.0)
    assert bucket.delay(5, now=10.0) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        bucket.delay(6, now=10.0)
    assert parse_rate("10/s") == 10.0 and parse_rate("2.5") == 2.5
    with pytest.raises(ValueError):
        parse_rate("0/s")


# --- on a table --------------------------------------------------------------------------------


def _rows(day_rows: int, other_rows: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Rows of the day (mixed states and spellings) and of the days around it; returns the
    items and the FAILED/stuck ones --status failed|unprocessed must enqueue (id -> call end)."""
    now = datetime.now(UTC).timestamp()
    items: list[dict[str, Any]] = []
    failed: dict[str, float] = {}
    for index in range(day_rows):
        rid = f"day-{index:05d}"
        when = DAY + timedelta(seconds=index * 37 % 86400)
        created = (
            when.strftime("%Y-%m-%d %H:%M:%S")
            if index % 2
            else when.isoformat().replace("+00:00", "Z")
        )
        item: dict[str, Any] = {"videoID": {"S": rid}, "creationDate": {"S": created}}
        kind = index % 10
        if kind in (0, 1):
            item |= {"processingStatus": {"S": "FAILED"}, REQUESTED_CALL_END: {"N": f"{index}.5"}}
            failed[rid] = index + 0.5
        elif kind == 2:  # an invalid message's FAILED: no call end anywhere
            item |= {"processingStatus": {"S": "FAILED"}}
        elif kind == 3:
            item |= {"processingStatus": {"S": "DONE"}, "callEndSeconds": {"N": "9"}}
        elif kind == 5:  # stuck: PROCESSING, lease long expired
            item |= {
                "processingStatus": {"S": "PROCESSING"},
                "leaseExpiresAt": {"N": str(now - 3600)},
                REQUESTED_CALL_END: {"N": "3"},
            }
        elif kind == 6:
            item |= {
                "processingStatus": {"S": "PROCESSING"},
                "leaseExpiresAt": {"N": str(now + 3600)},
                REQUESTED_CALL_END: {"N": "3"},
            }
        elif kind in (7, 8):
            item |= {"isProcessed": {"BOOL": True}}
        items.append(item)
    # Offsets: the string says the day before, the time is inside; and the other way round.
    inside = {"videoID": {"S": "tz-in"}, "creationDate": {"S": "2026-11-26T23:30:00-05:00"}}
    outside = {"videoID": {"S": "tz-out"}, "creationDate": {"S": "2026-11-27T23:30:00-05:00"}}
    for item in (inside, outside):
        item |= {"processingStatus": {"S": "FAILED"}, REQUESTED_CALL_END: {"N": "1"}}
    items += [inside, outside]
    failed["tz-in"] = 1.0
    for index in range(other_rows):
        when = DAY + timedelta(days=(-2, -1, 1, 2)[index % 4], seconds=index * 13 % 86400)
        items.append(
            {
                "videoID": {"S": f"other-{index:05d}"},
                "creationDate": {"S": when.strftime("%Y-%m-%d %H:%M:%S")},
                "processingStatus": {"S": "FAILED"},
                REQUESTED_CALL_END: {"N": "4"},
            }
        )
    return items, failed


def _put(world: AwsEnv, table: str, items: list[dict[str, Any]]) -> None:
    db = world.client("dynamodb")
    for start in range(0, len(items), 25):
        requests = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        pending: dict[str, Any] = {table: requests}
        while pending:
            pending = db.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}


@pytest.mark.backends("moto", "localstack")
def test_backfill_enqueues_the_failed_rows_of_a_day_page_by_page(backend_world: AwsEnv) -> None:
    table = create_table(backend_world)
    items, failed = _rows(day_rows=200, other_rows=1800)
    _put(backend_world, table, items)
    queue_url, _ = fresh_queues(backend_world)
    lines: list[str] = []
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    def backfill(**options: Any) -> BackfillResult:
        return Backfill(
            dynamodb=backend_world.client("dynamodb"),
            sqs=backend_world.client("sqs"),
            table_name=table,
            queue_url=queue_url,
            page_size=100,
            on_line=lines.append,
            **options,
        ).run(parse_window("2026-11-27", "2026-11-27"))

    result = backfill(status="failed", rate=50.0, clock=lambda: clock[0], sleep=sleep)

    assert result.enqueued == len(failed) == 41 and result.failed == 0
    assert result.skipped == 20 and result.skipped_by_why == {
        "no call end known (never claimed by a worker)": 20
    }
    # Read page by page: never more than a page of rows held.
    assert result.pages >= len(items) // 100 and result.largest_page <= 100
    # Paced: 41 messages at 50/s with a burst of 10 take (41 - 10) / 50 s.
    assert clock[0] == pytest.approx((41 - 10) / 50)
    sent = [parse_message(m["Body"]) for m in drain(backend_world.client("sqs"), queue_url)]
    assert {job.recording_id: job.call_end_seconds for job in sent} == failed
    assert sum(line.startswith("enqueued  ") for line in lines) == 41
    assert any(line.startswith("skipped  day-00002  FAILED  no call end") for line in lines)

    stuck = backfill(status="unprocessed", dry_run=True)
    # Stuck PROCESSING rows go again; never-claimed rows are listed; live leases are left.
    assert stuck.enqueued == 20 and stuck.skipped == 60
    assert drain(backend_world.client("sqs"), queue_url) == []  # a dry run sends nothing


@pytest.mark.backends("moto", "localstack")
def test_backfill_command_done_rows_only_with_force(
    backend_world: AwsEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    table = create_table(backend_world)
    items, _ = _rows(day_rows=20, other_rows=10)
    _put(backend_world, table, items)
    queue_url, _ = fresh_queues(backend_world)
    env = {**backend_world.env, "QUEUE_URL": queue_url, "RECORDING_TABLE_NAME": table}
    day = ("--from", "2026-11-27", "--to", "2026-11-27")

    # The console script once; the other runs in-process (the same main, faster).
    forced = run_cli("backfill", *day, "--status", "all", "--force", "--rate", "100/s", env=env)
    assert forced.returncode == 0, forced.stderr
    assert "enqueued 9, skipped 12" in forced.stdout
    bodies = [parse_message(m["Body"]) for m in drain(backend_world.client("sqs"), queue_url)]
    assert len(bodies) == 9
    redone = [job for job in bodies if job.recording_id == "day-00003"]
    # A DONE row's message asks to reprocess, or the worker would call it a duplicate.
    assert [(job.call_end_seconds, job.reprocess) for job in redone] == [(9.0, True)]
    assert {job.recording_id for job in bodies if job.reprocess} == {"day-00003", "day-00013"}

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["backfill", *day, "--status", "all", "--dry-run"]) == 0
    plain = capsys.readouterr().out.splitlines()
    done = [line for line in plain if line.startswith("skipped  ")]
    assert sum(line.endswith("DONE (re-enqueued only with --force)") for line in done) == 6
    assert plain[-4].startswith("would enqueue 7, skipped 14")
    assert drain(backend_world.client("sqs"), queue_url) == []

    for argv, code in (
        (["--from", "2026-11-28", "--to", "x"], 2),
        ([*day, "--rate", "fast"], 2),
    ):
        assert cli.main(["backfill", *argv]) == code
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    monkeypatch.setenv("RECORDING_TABLE_NAME", "no-such-table")
    assert cli.main(["backfill", *day]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "Scan: ResourceNotFoundException" in error[0]
