"""``dlq list`` and the selective ``redrive`` (issue 16) on a DLQ of a few hundred mixed dead
letters, on moto and on LocalStack: every message seen once, nothing consumed, only the
selected ones moved, the others untouched, and no loss when the command is killed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.harness.cli import assert_one_line_error, run_cli
from tests.harness.fixtures_aws import AwsEnv
from tests.harness.fixtures_dlq import FAILED_AT, Denying, drain, fresh_queues, mixed_letters, seed
from tests.harness.polling import wait_until
from tests.harness.worker_harness import queue_depth
from worker import admin, cli
from worker.deadletters import (
    DeadLetterInfo,
    Selection,
    list_dead_letters,
    parse_dead_letter,
    parse_since,
)
from worker.dlq_reasons import REDRIVE_POLICY_REASON
from worker.errors import ConfigError
from worker.redrive import redrive

# A few hundred dead letters; moto's ReceiveMessage costs time in proportion to the queue's
# length (a scan is quadratic there), so it gets fewer than LocalStack.
COUNTS = {"moto": 60, "localstack": 300}


def _list(world: AwsEnv, dlq_url: str, selection: Selection | None = None) -> Any:
    seen: list[DeadLetterInfo] = []
    listing = list_dead_letters(world.client("sqs"), dlq_url, selection or Selection(), seen.append)
    return listing, seen


# --- pure --------------------------------------------------------------------------------------


def test_a_dead_letter_without_attributes_is_a_redrive_policy_one() -> None:
    info = parse_dead_letter(
        {
            "MessageId": "m-1",
            "Body": '{"recordingID": "abc", "callEndingTimestamp": 3}',
            "Attributes": {"SentTimestamp": "1764291600000"},
        }
    )
    assert info.reason == REDRIVE_POLICY_REASON
    assert info.original_message_id == "m-1"  # SQS's redrive keeps the MessageId
    assert info.failed_at == datetime(2025, 11, 28, 1, 0, tzinfo=UTC)
    assert info.failed_at_source == "SentTimestamp"
    assert info.recording_id == "abc"


def test_hostile_text_is_printed_on_one_safe_line() -> None:
    info = parse_dead_letter(
        {
            "MessageId": "m",
            "Body": json.dumps({"recordingID": "x\x1b[2J\ny"}),
            "MessageAttributes": {
                "errorReason": {"DataType": "String", "StringValue": "invalid_message"},
                "errorMessage": {"DataType": "String", "StringValue": "a\nb\x07"},
            },
        }
    )
    line = info.line()
    assert "\x1b" not in line and "\n" not in line and "\x07" not in line
    assert info.recording_id == "x?[2J y"


def test_since_accepts_dates_times_and_ages() -> None:
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    assert parse_since("6h", now) == now - timedelta(hours=6)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("2026-11-28") == datetime(2026, 11, 28, tzinfo=UTC)
    assert parse_since("2026-11-28T01:30:00+01:00") == datetime(2026, 11, 28, 0, 30, tzinfo=UTC)
    with pytest.raises(ConfigError, match="--since"):
        parse_since("yesterday")


def test_selection_matches_reason_or_reason_with_its_last_reason() -> None:
    info = parse_dead_letter(
        {
            "MessageId": "m",
            "Body": '{"recordingID": "r1"}',
            "MessageAttributes": {
                "errorReason": {"DataType": "String", "StringValue": "retries_exhausted"},
                "errorDetail": {"DataType": "String", "StringValue": "lease_held"},
                "failedAt": {"DataType": "String", "StringValue": "2026-11-28T01:00:00Z"},
            },
        }
    )
    assert Selection.of(["retries_exhausted"]).matches(info)
    assert Selection.of(["retries_exhausted:lease_held"]).matches(info)
    assert not Selection.of(["retries_exhausted:aws_unavailable"]).matches(info)
    assert Selection.of(None, ["r1"]).matches(info)
    assert not Selection.of(None, ["r2"]).matches(info)
    assert Selection.of(since=FAILED_AT).matches(info)
    assert not Selection.of(since=FAILED_AT + timedelta(seconds=1)).matches(info)


# --- dlq list ----------------------------------------------------------------------------------


@pytest.mark.backends("moto", "localstack")
def test_dlq_list_shows_each_dead_letter_once_and_consumes_nothing(backend_world: AwsEnv) -> None:
    _, dlq_url = fresh_queues(backend_world)
    count = COUNTS[backend_world.backend]
    letters = mixed_letters(count)
    seed(backend_world.client("sqs"), dlq_url, letters)

    listing, seen = _list(backend_world, dlq_url)
    assert listing.total == listing.listed == count
    assert len({info.message_id for info in seen}) == count  # each exactly once
    assert listing.by_reason == dict(Counter(letter.reason_key for letter in letters))
    by_id = {info.recording_id: info for info in seen}
    exhausted = by_id["rec-00000"]
    assert (exhausted.reason, exhausted.last_reason, exhausted.receive_count) == (
        "retries_exhausted",
        "connect_audio_not_ready",
        8,
    )
    assert exhausted.original_message_id == "orig-0"
    assert exhausted.failed_at == FAILED_AT and exhausted.failed_at_source == "failedAt"
    assert by_id["rec-00008"].failed_at_source == "SentTimestamp"  # no failedAt: when sent
    assert by_id["rec-00007"].reason == REDRIVE_POLICY_REASON

    # Nothing consumed, everything visible again at once: a second listing sees all of them.
    again, seen_again = _list(backend_world, dlq_url)
    assert again.total == count
    assert {i.message_id for i in seen_again} == {i.message_id for i in seen}

    only, chosen = _list(
        backend_world,
        dlq_url,
        Selection.of(["media_invalid"], since=FAILED_AT - timedelta(minutes=1)),
    )
    expected = [
        letter
        for index, letter in enumerate(letters)
        if letter.reason_key == "media_invalid" and index % 10 == 5
    ]  # kind 9 failed an hour earlier, kind 8 has only its (recent) SentTimestamp
    expected_ids = {letter.recording_id for letter in expected}
    assert expected_ids <= {info.recording_id for info in chosen}
    assert all(info.reason == "media_invalid" for info in chosen)
    assert only.total == count and only.listed == len(chosen)


@pytest.mark.backends("moto", "localstack")
def test_dlq_list_command_prints_json_lines_and_counts(backend_world: AwsEnv) -> None:
    queue_url, dlq_url = fresh_queues(backend_world)
    letters = mixed_letters(30)
    seed(backend_world.client("sqs"), dlq_url, letters)
    env = {**backend_world.env, "QUEUE_URL": queue_url}
    env.pop("DLQ_URL")  # found from the queue's RedrivePolicy
    result = run_cli("dlq", "list", "--json", "--reason", "retries_exhausted", env=env)
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    entries, summary = objects[:-1], objects[-1]
    assert len(entries) == 15 and all(e["reason"] == "retries_exhausted" for e in entries)
    assert summary["listed"] == 15 and summary["total"] == 30 and summary["complete"]
    assert summary["by_reason"]["retries_exhausted:connect_audio_not_ready"] == 12
    text = run_cli("dlq", "list", env=env)
    assert text.returncode == 0, text.stderr
    assert "listed 30 of 30 dead letter(s)" in text.stdout
    assert "  redrive_policy: 3" in text.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["dlq", "list", "--reason", "media_invalidd"],
        ["redrive", "--reason", "media_invalid", "--reason", "retries_exhausted:nope"],
        ["redrive", "--reason", "nope", "--dry-run"],
    ],
)
def test_an_unknown_reason_is_a_usage_error_and_touches_nothing(
    world: AwsEnv, argv: list[str]
) -> None:
    # The real console script: exit 2, one line naming the known reasons; nothing moved.
    queue_url, dlq_url = fresh_queues(world)
    sqs = world.client("sqs")
    letters = mixed_letters(6)
    seed(sqs, dlq_url, letters)
    result = run_cli(*argv, env={**world.env, "QUEUE_URL": queue_url, "DLQ_URL": dlq_url})
    line = assert_one_line_error(result, 2)
    assert ": unknown (known: " in line and "retries_exhausted" in line, line
    assert "media_invalid, media_no_audio" in line, line
    assert result.stdout == ""
    assert drain(sqs, queue_url) == []
    assert len(drain(sqs, dlq_url)) == len(letters)


def test_dlq_list_without_permission_is_one_line(
    world: AwsEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_url, dlq_url = fresh_queues(world)
    monkeypatch.setenv("QUEUE_URL", queue_url)
    monkeypatch.setenv("DLQ_URL", dlq_url)
    denying = Denying(world.client("sqs"), "receive_message")
    monkeypatch.setattr(admin, "sqs_client", lambda: denying)
    for argv in (["dlq", "list"], ["redrive", "--reason", "media_invalid"]):
        assert cli.main(argv) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("komorebi-worker: ReceiveMessage: AccessDenied")


# --- redrive -----------------------------------------------------------------------------------


@pytest.mark.backends("moto", "localstack")
def test_redrive_moves_only_the_selected_and_leaves_the_others_untouched(
    backend_world: AwsEnv,
) -> None:
    sqs = backend_world.client("sqs")
    queue_url, dlq_url = fresh_queues(backend_world)
    count = COUNTS[backend_world.backend]
    letters = mixed_letters(count)
    seed(sqs, dlq_url, letters)
    _, before = _list(backend_world, dlq_url)
    kept_before = {i.message_id: i for i in before if i.reason != "retries_exhausted"}

    moved: list[str] = []
    result = redrive(
        queue_url,
        dlq_url,
        selection=Selection.of(["retries_exhausted"]),
        sqs=sqs,
        on_entry=lambda action, info: moved.append(f"{action} {info.recording_id}"),
    )
    wanted = [letter for letter in letters if letter.reason_key.startswith("retries_exhausted")]
    assert (result.moved, result.failed, result.not_deleted) == (len(wanted), 0, [])
    assert result.kept == count - len(wanted)
    assert sorted(moved) == sorted(f"moved {letter.recording_id}" for letter in wanted)

    requeued = drain(sqs, queue_url)
    assert sorted(m["Body"] for m in requeued) == sorted(letter.body for letter in wanted)
    for message in requeued:  # the producer's attribute goes back, ours do not
        assert set(message["MessageAttributes"]) == {"producer"}

    # The others: the very same messages (ids, bodies, attributes), visible at once.
    listing, after = _list(backend_world, dlq_url)
    assert listing.total == len(kept_before)
    assert {i.message_id: i for i in after} == kept_before
    remaining = drain(sqs, dlq_url)
    for message in remaining:
        original = next(
            letter for letter in letters if letter.body == message["Body"]
        )  # bodies of kept letters are unique
        assert {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()} == {
            k: v["StringValue"] for k, v in original.attributes.items()
        }


@pytest.mark.backends("moto", "localstack")
def test_redrive_by_recording_id_dry_run_and_max_messages(
    backend_world: AwsEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sqs = backend_world.client("sqs")
    queue_url, dlq_url = fresh_queues(backend_world)
    letters = mixed_letters(40)
    seed(sqs, dlq_url, letters)
    monkeypatch.setenv("QUEUE_URL", queue_url)
    monkeypatch.setenv("DLQ_URL", dlq_url)

    def redrive_cli(*argv: str) -> list[str]:
        assert cli.main(["redrive", *argv]) == 0
        return capsys.readouterr().out.splitlines()

    dry = redrive_cli("--reason", "media_invalid", "--dry-run")
    assert dry[-1].startswith("would move 12 message(s)")
    assert sum(line.startswith("would move  rec-") for line in dry) == 12
    assert drain(sqs, queue_url) == []

    picked = redrive_cli("--recording-id", "rec-00003", "--recording-id", "rec-00011")
    assert picked[-1].startswith("moved 2 message(s)")
    assert sorted(json.loads(m["Body"])["recordingID"] for m in drain(sqs, queue_url)) == [
        "rec-00003",
        "rec-00011",
    ]
    capped = redrive_cli("--max-messages", "5")
    assert capped[-1].startswith("moved 5 message(s)")
    assert len(drain(sqs, queue_url)) == 5
    assert _list(backend_world, dlq_url)[0].total == 40 - 2 - 5

    env = {**backend_world.env, "QUEUE_URL": queue_url, "DLQ_URL": dlq_url}
    assert_one_line_error(run_cli("redrive", "--max-messages", "0", env=env), 2)


_KILLED_REDRIVE = textwrap.dedent(
    """
    import os, signal, sys
    from worker import admin
    from worker.redrive import redrive

    class KilledAfterThirdSend:
        def __init__(self, real):
            self.real, self.sends = real, 0
        def __getattr__(self, name):
            return getattr(self.real, name)
        def send_message_batch(self, **kwargs):
            answer = self.real.send_message_batch(**kwargs)
            self.sends += 1
            if self.sends == 3:  # sent, not yet deleted from the DLQ
                os.kill(os.getpid(), signal.SIGKILL)
            return answer

    redrive(sys.argv[1], sys.argv[2], sqs=KilledAfterThirdSend(admin.sqs_client()),
            hold_seconds=2)
    """
)


@pytest.mark.backends("moto", "localstack")
def test_redrive_killed_between_send_and_delete_loses_nothing(backend_world: AwsEnv) -> None:
    sqs = backend_world.client("sqs")
    queue_url, dlq_url = fresh_queues(backend_world)
    letters = mixed_letters(60)
    seed(sqs, dlq_url, letters)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_REDRIVE, queue_url, dlq_url],
        env={**backend_world.env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The killed scan's 2 s hold lapses: its held DLQ messages come back.
    wait_until(
        lambda: queue_depth(backend_world, dlq_url)[1] == 0,
        timeout=30,
        what="the killed scan's held DLQ messages visible again",
    )
    in_queue = [m["Body"] for m in drain(sqs, queue_url)]
    in_dlq = [m["Body"] for m in drain(sqs, dlq_url)]
    everything = sorted(letter.body for letter in letters)
    assert sorted(set(in_queue) | set(in_dlq)) == everything  # nothing lost
    assert len(in_queue) == 30  # three batches sent
    # The window: only the last batch (sent, not deleted) is in both queues.
    assert len(in_queue) + len(in_dlq) == len(letters) + 10
    assert len(set(in_queue) & set(in_dlq)) == 10
