"""Every way a message can end, through one real ``komorebi-worker run`` process on the moto
server (docs/operating.md, "Every way a message can end"): a queue whose maxReceiveCount is 3,
backoff 1-2 s, real ffmpeg.

One worker process takes a batch of contacts, each seeded to end one way; when the queue is
empty each test checks its contact: the DLQ copy's attributes, the row's final state, the
worker still serving, and log lines that are one JSON object each, with no traceback and no
receipt handle. The endings that need a different world (DynamoDB unreachable on the last
receive, the DLQ gone, shutdown with an earlier status, redrive) have their own processes.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness.fixtures_aws import AwsEnv
from tests.harness.mid_merge import assert_given_back, sigterm_mid_merge
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.worker_harness import (
    CONNECT_WAV,
    RECORDING,
    STOP_TIMEOUT_SECONDS,
    Contact,
    WorkerProcess,
    attributes,
    get_row,
    queue_depth,
    receive_now,
    seed_contact,
    send_job,
    send_raw,
    set_max_receive_count,
    upload_connect_audio,
    with_fresh_queues,
    worker_env,
)

MAX_RECEIVE_COUNT = 3
# Above the short recording and the Connect WAV, below RECORDING (421 kB).
SCRATCH_CAP = "300000"
FAST = {
    "RETRY_BACKOFF_BASE_SECONDS": "1",
    "RETRY_BACKOFF_MAX_SECONDS": "2",
    "WORKER_CONCURRENCY": "3",
    "SCRATCH_MAX_BYTES": SCRATCH_CAP,
}
# A receipt handle (moto's, like SQS's, are long opaque tokens) never reaches a log line.
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{120,}")


@dataclass
class Scenario:
    """One message seeded to end one way; ``message_id`` once sent."""

    name: str
    body: str | None = None  # a raw body instead of a job message
    recording_id: str | None = None
    call_end: str | float = 3
    message_id: str = ""
    input_key: str = ""


@dataclass
class MatrixRun:
    """What the batch run left behind."""

    aws: AwsEnv
    scenarios: dict[str, Scenario]
    dlq: dict[str, dict[str, str]]  # originalMessageId -> attributes
    dlq_bodies: dict[str, str]
    worker: WorkerProcess
    exit_code: int
    healthy_before_stop: bool
    events: list[dict[str, Any]] = field(default_factory=list)


def _done_row() -> dict[str, Any]:
    return {
        "processingStatus": {"S": "DONE"},
        "isProcessed": {"BOOL": True},
        "videoKey": {"S": "earlier/recording.mp4"},
        "callEndSeconds": {"N": "3"},
    }


def _lease_of_another_live_worker() -> dict[str, Any]:
    return {
        "leaseOwner": {"S": "other-worker/1234"},
        "leaseExpiresAt": {"N": str(int(time.time()) + 3600)},
        "processingStatus": {"S": "PROCESSING"},
    }


def _seed(aws: AwsEnv, short: Path) -> tuple[dict[str, Scenario], Any]:
    """Seed every batch scenario; returns them and the late Connect upload's contact."""
    scenarios = [
        Scenario("invalid_json", body="{not json"),
        Scenario("missing_recording_id", body=json.dumps({"callEndingTimestamp": "00:00:03"})),
        Scenario(
            "bad_recording_id", body=json.dumps({"recordingID": "../x", "callEndingTimestamp": 3})
        ),
        Scenario("no_row", recording_id=f"norow-{time.time_ns()}"),
    ]
    contacts: dict[str, Any] = {}

    def contact(name: str, **kwargs: Any) -> None:
        made = seed_contact(aws, **kwargs)
        contacts[name] = made
        scenarios.append(Scenario(name, recording_id=made.recording_id, input_key=made.input_key))

    contact("no_recording_with_connect", recording=None)
    contact("no_recording_no_connect", recording=None, connect_audio=None)
    contact("connect_never_arrives", recording=short, connect_audio=None)
    contact("connect_arrives_late", recording=short, connect_audio=None)
    contact("connect_zero_bytes", recording=short, connect_audio=None)
    contact("undecodable", recording=b"\x00garbage, not a recording\xff" * 200)
    contact("above_scratch_cap", recording=RECORDING)
    contact("lease_held", recording=short, extra=_lease_of_another_live_worker())
    contact("duplicate_of_done", recording=short, extra=_done_row())
    contact("call_end_beyond_end", recording=short)
    by_name = {s.name: s for s in scenarios}
    by_name["call_end_beyond_end"].call_end = "01:00:00"
    zero = contacts["connect_zero_bytes"]
    aws.client("s3").put_object(Bucket=aws.ac_audio_bucket, Key=zero.connect_key, Body=b"")
    return by_name, contacts["connect_arrives_late"]


def _upload_after_second_receive(aws: AwsEnv, late: Any, stop: threading.Event) -> None:
    """Amazon Connect uploads the audio once the worker has tried (and released) twice."""
    while not stop.is_set():
        row = get_row(aws, late.recording_id)
        if int(row.get("processingAttempts", 0)) >= 2 and "leaseOwner" not in row:
            upload_connect_audio(aws, late, CONNECT_WAV)
            return
        time.sleep(0.05)


def _healthy(port: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def matrix(
    world: AwsEnv,
    generated: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MatrixRun]:
    """Every batch scenario through one worker process, until the queue is empty."""
    aws = with_fresh_queues(world)
    set_max_receive_count(aws, MAX_RECEIVE_COUNT)
    folder = tmp_path_factory.mktemp("matrix")
    scratch = folder / "scratch"
    scratch.mkdir()
    scenarios, late = _seed(aws, generated("h264-aac"))
    for scenario in scenarios.values():
        if scenario.body is not None:
            scenario.message_id = send_raw(aws, scenario.body)
        else:
            assert scenario.recording_id is not None
            scenario.message_id = send_job(aws, scenario.recording_id, scenario.call_end)
    env = worker_env(aws, scratch, **FAST)
    worker = WorkerProcess(env, folder / "worker.log")
    stop = threading.Event()
    uploader = threading.Thread(target=_upload_after_second_receive, args=(aws, late, stop))
    uploader.start()
    try:
        worker.wait_for_event("worker.ready")
        wait_until(
            lambda: queue_depth(aws) == (0, 0) or worker.process.poll() is not None,
            timeout=120,
            interval=0.5,
            what="every message to end",
        )
        healthy = _healthy(env["METRICS_PORT"])
        worker.signal(signal.SIGTERM)
        exit_code = worker.wait(timeout=STOP_TIMEOUT_SECONDS)
    finally:
        stop.set()
        uploader.join()
        worker.stop()
    dlq = receive_now(aws, aws.dlq_url)
    yield MatrixRun(
        aws=aws,
        scenarios=scenarios,
        dlq={attributes(m)["originalMessageId"]: attributes(m) for m in dlq},
        dlq_bodies={attributes(m)["originalMessageId"]: m["Body"] for m in dlq},
        worker=worker,
        exit_code=exit_code,
        healthy_before_stop=healthy,
        events=worker.events(),
    )


def _dead_lettered(
    run: MatrixRun, name: str, reason: str, *, receive_count: str = "1"
) -> dict[str, str]:
    scenario = run.scenarios[name]
    assert scenario.message_id in run.dlq, f"{name}: not in the DLQ ({run.worker.tail()})"
    attrs = run.dlq[scenario.message_id]
    assert attrs["errorReason"] == reason, attrs
    assert attrs["receiveCount"] == receive_count, attrs
    assert attrs["errorClass"] and attrs["errorMessage"] and "\n" not in attrs["errorMessage"]
    if scenario.body is not None:
        assert run.dlq_bodies[scenario.message_id] == scenario.body
    return attrs


def _failed_row(run: MatrixRun, name: str) -> dict[str, Any]:
    scenario = run.scenarios[name]
    assert scenario.recording_id is not None
    row = get_row(run.aws, scenario.recording_id)
    assert row["processingStatus"] == "FAILED", row
    assert row["processingError"] and "\n" not in row["processingError"]
    assert not row.get("isProcessed") and "leaseOwner" not in row
    return row


# --- the worker itself ------------------------------------------------------------------------


def test_the_worker_served_every_message_and_stopped_cleanly(matrix: MatrixRun) -> None:
    assert matrix.healthy_before_stop, "the worker stopped serving /healthz"
    assert matrix.exit_code == 0, matrix.worker.tail()
    assert queue_depth(matrix.aws) == (0, 0)
    # Only the dead-lettered scenarios are in the DLQ, each once.
    ended_done = {"connect_arrives_late", "duplicate_of_done", "call_end_beyond_end"}
    expected = {s.message_id for s in matrix.scenarios.values() if s.name not in ended_done}
    assert set(matrix.dlq) == expected


def test_logs_are_one_json_line_each_without_traceback_or_receipt_handle(
    matrix: MatrixRun,
) -> None:
    text = matrix.worker.log_path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    # The run's own folder (scratch paths in ffmpeg's stderr) is no token: under pytest-xdist
    # (tmp/popen-gw0/...) a job's scratch path alone reaches the token's 120 characters.
    folder = str(matrix.worker.log_path.parent)
    for line in lines:
        assert isinstance(json.loads(line), dict), line
        assert "Traceback" not in line, line
        assert not _LONG_TOKEN.search(line.replace(folder, "")), line
    assert "receipt" not in {key.lower() for event in matrix.events for key in event}
    assert not [e for e in matrix.events if e.get("level") == "error"]


# --- permanent failures: dead-lettered at once --------------------------------------------------


@pytest.mark.parametrize("name", ["invalid_json", "missing_recording_id", "bad_recording_id"])
def test_an_invalid_message_is_dead_lettered_at_once(matrix: MatrixRun, name: str) -> None:
    _dead_lettered(matrix, name, "invalid_message")
    if name == "bad_recording_id":
        assert get_row(matrix.aws, "../x") == {}


def test_a_message_without_a_row_is_dead_lettered_and_creates_none(matrix: MatrixRun) -> None:
    _dead_lettered(matrix, "no_row", "row_not_found")
    recording_id = matrix.scenarios["no_row"].recording_id
    assert recording_id is not None and get_row(matrix.aws, recording_id) == {}


@pytest.mark.parametrize("name", ["no_recording_with_connect", "no_recording_no_connect"])
def test_a_missing_recording_object_fails_at_once(matrix: MatrixRun, name: str) -> None:
    attrs = _dead_lettered(matrix, name, "recording_not_found")
    assert "errorDetail" not in attrs
    row = _failed_row(matrix, name)
    assert matrix.scenarios[name].input_key in row["processingError"]
    assert int(row["processingAttempts"]) == 1


def test_undecodable_media_fails_at_once(matrix: MatrixRun) -> None:
    # Garbage named .mp4: no demuxer of the allow-list recognises it.
    _dead_lettered(matrix, "undecodable", "media_invalid")
    _failed_row(matrix, "undecodable")


def test_a_recording_above_the_scratch_cap_fails_at_once(matrix: MatrixRun) -> None:
    attrs = _dead_lettered(matrix, "above_scratch_cap", "scratch_full")
    assert attrs["errorClass"] == "TooLargeForScratch"
    assert "SCRATCH_MAX_BYTES" in _failed_row(matrix, "above_scratch_cap")["processingError"]


# --- transient failures: retried, then dead-lettered by the worker on the last receive --------


def test_connect_audio_that_never_arrives_ends_after_three_receives(matrix: MatrixRun) -> None:
    attrs = _dead_lettered(matrix, "connect_never_arrives", "retries_exhausted", receive_count="3")
    assert (attrs["errorClass"], attrs["errorDetail"]) == (
        "RetriesExhausted",
        "connect_audio_not_ready",
    )
    row = _failed_row(matrix, "connect_never_arrives")
    assert row["processingError"] == "Connect recording not found after 3 attempts"
    assert int(row["processingAttempts"]) == 3


def test_an_empty_connect_file_ends_after_three_receives_with_its_reason(
    matrix: MatrixRun,
) -> None:
    attrs = _dead_lettered(matrix, "connect_zero_bytes", "retries_exhausted", receive_count="3")
    assert attrs["errorDetail"] == "connect_audio_not_ready"
    row = _failed_row(matrix, "connect_zero_bytes")
    assert row["processingError"].startswith("Connect recording not found after 3 attempts")


def test_a_lease_held_on_every_receive_ends_with_its_reason(matrix: MatrixRun) -> None:
    attrs = _dead_lettered(matrix, "lease_held", "retries_exhausted", receive_count="3")
    assert attrs["errorDetail"] == "lease_held"
    recording_id = matrix.scenarios["lease_held"].recording_id
    assert recording_id is not None
    row = get_row(matrix.aws, recording_id)
    assert row["processingStatus"] == "FAILED"
    assert row["processingError"] == "recording kept leased by another worker after 3 attempts"
    assert row["leaseOwner"] == "other-worker/1234"  # the holder's own result has the last word


# --- deleted -----------------------------------------------------------------------------------


def _deleted(run: MatrixRun, name: str) -> tuple[Scenario, dict[str, Any]]:
    """The scenario, not dead-lettered, and its row, which says DONE."""
    scenario = run.scenarios[name]
    assert scenario.message_id not in run.dlq, run.dlq.get(scenario.message_id)
    assert scenario.recording_id is not None
    row = get_row(run.aws, scenario.recording_id)
    assert row["processingStatus"] == "DONE" and row["isProcessed"] is True, row
    return scenario, row


def test_connect_audio_arriving_after_the_second_receive_ends_done(matrix: MatrixRun) -> None:
    _, row = _deleted(matrix, "connect_arrives_late")
    assert int(row["processingAttempts"]) == 3 and "processingError" not in row


def test_a_duplicate_of_a_done_message_is_acknowledged_and_counted(matrix: MatrixRun) -> None:
    scenario, row = _deleted(matrix, "duplicate_of_done")
    assert row["videoKey"] == "earlier/recording.mp4"
    assert "processingAttempts" not in row  # no work, no claim
    duplicates = [
        e
        for e in matrix.events
        if e.get("event") == "job.duplicate" and e.get("recording_id") == scenario.recording_id
    ]
    assert len(duplicates) == 1


def test_a_call_end_beyond_the_recording_is_clamped_and_done(matrix: MatrixRun) -> None:
    scenario, row = _deleted(matrix, "call_end_beyond_end")
    assert float(row["callEndSeconds"]) == 3600.0  # what the message said
    assert float(row["mediaDurationSeconds"]) == pytest.approx(4.0, abs=0.2)
    warned = [
        e
        for e in matrix.events
        if e.get("event") == "call_end_clamped" and e.get("recording_id") == scenario.recording_id
    ]
    assert len(warned) == 1 and warned[0]["level"] == "warning"


# --- endings that need their own worker ---------------------------------------------------------


def _closed_port() -> int:
    port = free_port()
    with socket.socket() as probe:  # nothing listens there: connection refused
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def _received_twice(aws: AwsEnv) -> None:
    """Two receives that end without a worker (as if two attempts had been retried)."""
    sqs = aws.client("sqs")
    for _ in range(2):
        wait_until(lambda: queue_depth(aws)[0] == 1, timeout=10, what="the message visible")
        response = sqs.receive_message(
            QueueUrl=aws.queue_url, MaxNumberOfMessages=1, VisibilityTimeout=0
        )
        assert len(response["Messages"]) == 1


def _run_until(
    env: dict[str, str], log: Path, done: Callable[[], bool], what: str, timeout: float = 60
) -> WorkerProcess:
    """A worker process until ``done()``, then SIGTERM: it must exit 0."""
    worker = WorkerProcess(env, log)
    try:
        wait_until(done, timeout=timeout, what=what)
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=STOP_TIMEOUT_SECONDS) == 0, worker.tail()
    finally:
        worker.stop()
    return worker


@pytest.fixture
def own_aws(world: AwsEnv) -> AwsEnv:
    fresh = with_fresh_queues(world)
    set_max_receive_count(fresh, MAX_RECEIVE_COUNT)
    return fresh


def test_dynamodb_unreachable_on_the_last_receive_is_explained_in_the_dlq(
    own_aws: AwsEnv, tmp_path: Path, generated: Callable[[str], Path]
) -> None:
    aws = own_aws
    contact = seed_contact(aws, recording=generated("h264-aac"), connect_audio=None)
    message_id = send_job(aws, contact.recording_id, 3)
    _received_twice(aws)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = worker_env(
        aws,
        scratch,
        **FAST,
        AWS_ENDPOINT_URL_DYNAMODB=f"http://127.0.0.1:{_closed_port()}",
        AWS_MAX_ATTEMPTS="2",
    )
    ended = lambda: queue_depth(aws) == (0, 0)  # noqa: E731
    worker = _run_until(env, tmp_path / "worker.log", ended, "the message to end")
    (copy,) = receive_now(aws, aws.dlq_url)
    attrs = attributes(copy)
    assert attrs["originalMessageId"] == message_id and attrs["receiveCount"] == "3"
    assert (attrs["errorReason"], attrs["errorDetail"]) == ("retries_exhausted", "aws_unavailable")
    assert attrs["errorMessage"].startswith(
        "AWS unavailable after 3 attempts: DynamoDB: EndpointConnectionError"
    )
    # Nothing could write the row: it says what it said before (never a stale PROCESSING).
    row = get_row(aws, contact.recording_id)
    assert row.get("processingStatus") != "PROCESSING" and "leaseOwner" not in row
    assert worker.count("job.mark_failed_failed") == 1
    assert "Traceback" not in worker.log_path.read_text()


def test_the_dlq_gone_on_the_last_receive_still_fails_the_row(
    own_aws: AwsEnv, tmp_path: Path, generated: Callable[[str], Path]
) -> None:
    aws = own_aws
    contact = seed_contact(aws, recording=generated("h264-aac"), connect_audio=None)
    send_job(aws, contact.recording_id, 3)
    _received_twice(aws)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    worker = WorkerProcess(worker_env(aws, scratch, **FAST), tmp_path / "worker.log")
    try:
        worker.wait_for_event("worker.ready")
        aws.client("sqs").delete_queue(QueueUrl=aws.dlq_url)
        wait_until(
            lambda: get_row(aws, contact.recording_id).get("processingStatus") == "FAILED",
            timeout=60,
            what="the row FAILED",
        )
        worker.wait_for_event("job.dead_letter_failed")
        assert worker.process.poll() is None, "the worker died"
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=STOP_TIMEOUT_SECONDS) == 0, worker.tail()
    finally:
        worker.stop()
    row = get_row(aws, contact.recording_id)
    assert row["processingError"] == "Connect recording not found after 3 attempts"
    assert "leaseOwner" not in row
    assert "Traceback" not in worker.log_path.read_text()


def test_sigterm_mid_job_gives_everything_back_and_restores_the_earlier_status(
    own_aws: AwsEnv, tmp_path: Path, generated: Callable[[str], Path]
) -> None:
    # A re-run of a recording that FAILED earlier: SIGTERM with a grace shorter than the job
    # gives the message back at once and the row its FAILED status and reason back.
    aws = own_aws
    earlier = {"processingStatus": {"S": "FAILED"}, "processingError": {"S": "earlier failure"}}
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def processing(contact: Contact) -> None:
        assert get_row(aws, contact.recording_id)["processingStatus"] == "PROCESSING"

    env = worker_env(aws, scratch, **FAST, SHUTDOWN_GRACE_SECONDS="5")
    stopped = sigterm_mid_merge(
        aws, generated("h264-aac"), env, tmp_path / "worker.log",
        row_extra=earlier, mid_merge=processing,
    )  # fmt: skip
    # The grace ran out (the ~16 s merge was not waited for): released, not finished.
    assert stopped.worker.count("worker.grace_expired") == 1
    assert stopped.worker.count("job.succeeded") == 0
    row = assert_given_back(aws, stopped, scratch)
    assert row["processingStatus"] == "FAILED" and row["processingError"] == "earlier failure"


def test_fix_the_cause_then_redrive_ends_done_without_duplicates(
    own_aws: AwsEnv, tmp_path: Path, generated: Callable[[str], Path]
) -> None:
    # The operator's loop while the fleet runs: recording objects missing -> DLQ + FAILED;
    # they are uploaded; the redrive moves each message back once (a second redrive moves
    # nothing); the worker ends them DONE, the rows' earlier errors gone, the DLQ empty.
    # (The worker runs throughout, as in production.)
    import subprocess

    from tests.harness.worker_harness import ROOT

    aws = own_aws
    short = generated("h264-aac")
    contacts = [seed_contact(aws, recording=None) for _ in range(3)]
    sqs = aws.client("sqs")
    for contact in contacts:
        sqs.send_message(
            QueueUrl=aws.queue_url,
            MessageBody=json.dumps({"recordingID": contact.recording_id, "callEndingTimestamp": 3}),
            MessageAttributes={"producer": {"DataType": "String", "StringValue": "backend"}},
        )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = worker_env(aws, scratch, **FAST)

    def redrive() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / ".venv" / "bin" / "komorebi-worker"), "redrive"],
            env={**env, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def all_done() -> bool:
        rows = [get_row(aws, c.recording_id) for c in contacts]
        return all(row.get("processingStatus") == "DONE" for row in rows)

    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        wait_until(lambda: queue_depth(aws, aws.dlq_url)[0] == 3, timeout=60, what="3 in the DLQ")
        for contact in contacts:
            assert get_row(aws, contact.recording_id)["processingStatus"] == "FAILED"
            aws.client("s3").put_object(
                Bucket=aws.input_bucket, Key=contact.input_key, Body=short.read_bytes()
            )
        moved = redrive()
        assert moved.returncode == 0 and moved.stdout.splitlines()[-1].startswith(
            "moved 3 message(s)"
        ), moved
        wait_until(all_done, timeout=90, what="the redriven jobs DONE")
        wait_until(lambda: queue_depth(aws) == (0, 0), timeout=30, what="their messages deleted")
        again = redrive()
        assert again.returncode == 0 and again.stdout.splitlines()[-1].startswith(
            "moved 0 message(s)"
        ), again
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=STOP_TIMEOUT_SECONDS) == 0, worker.tail()
    finally:
        worker.stop()
    assert worker.count("job.succeeded") == 3 and worker.count("job.dead_lettered") == 3
    for contact in contacts:
        assert "processingError" not in get_row(aws, contact.recording_id)
    assert queue_depth(aws) == (0, 0) and queue_depth(aws, aws.dlq_url) == (0, 0)


def test_the_table_deleted_before_the_last_receive_is_explained_in_the_dlq(
    aws: AwsEnv, tmp_path: Path, generated: Callable[[str], Path]
) -> None:
    # A world of its own (the table is deleted): the last receive cannot read or write the
    # row; the DLQ copy says which resource is missing.
    set_max_receive_count(aws, MAX_RECEIVE_COUNT)
    contact = seed_contact(aws, recording=generated("h264-aac"), connect_audio=None)
    message_id = send_job(aws, contact.recording_id, 3)
    _received_twice(aws)
    aws.client("dynamodb").delete_table(TableName=aws.table_name)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ended = lambda: queue_depth(aws) == (0, 0)  # noqa: E731
    worker = _run_until(worker_env(aws, scratch, **FAST), tmp_path / "w.log", ended, "the end")
    (copy,) = receive_now(aws, aws.dlq_url)
    attrs = attributes(copy)
    assert attrs["originalMessageId"] == message_id and attrs["receiveCount"] == "3"
    assert attrs["errorDetail"] == "aws_resource_missing", attrs
    assert attrs["errorMessage"].startswith(
        "AWS resource missing after 3 attempts: GetItem: ResourceNotFoundException"
    ), attrs
    assert "Traceback" not in worker.log_path.read_text()
