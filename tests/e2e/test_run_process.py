"""``komorebi-worker run`` as a real process: configuration errors, SIGTERM mid-job, a second
signal, several processes sharing one queue (moto server, real ffmpeg)."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.fixtures_aws import AwsEnv
from tests.harness.mid_merge import assert_given_back, ffmpeg_children_using, sigterm_mid_merge
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.worker_harness import (
    ROOT,
    STOP_TIMEOUT_SECONDS,
    WorkerProcess,
    get_row,
    queue_depth,
    receive_now,
    seed_contact,
    send_job,
    with_fresh_queues,
    worker_env,
)

KOMOREBI = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "komorebi-worker"


@pytest.fixture(scope="module")
def short_recording(generated: Callable[[str], Path]) -> Path:
    """4 s, 160x120 H.264 + AAC: quick to merge."""
    return generated("h264-aac")


@pytest.fixture
def aws(world: AwsEnv) -> AwsEnv:
    """The shared world with this test's own empty queue and DLQ."""
    return with_fresh_queues(world)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes; every one is stopped (by its PID) at teardown."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], *, readrate: float | None = None) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log", readrate=readrate)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def _wait_for_line(process: subprocess.Popen[str], needle: str, *, timeout: float) -> None:
    """Read the process's stderr until it contains ``needle`` (fails on exit or timeout)."""
    import select
    import time

    assert process.stderr is not None
    fd = process.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            seen += chunk
            if needle.encode() in seen:
                return
            if not chunk:
                break
    raise AssertionError(f"no {needle!r} from the worker (exit code {process.poll()})")


def test_run_refuses_to_start_without_ffmpeg(aws: AwsEnv, tmp_path: Path) -> None:
    # Every job would fail: say so at start-up, with the other configuration problems.
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**os.environ, **aws.env, "PATH": str(bare)}
    done = subprocess.run(
        [str(KOMOREBI), "run"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "komorebi-worker: configuration: ffmpeg is not installed (not found on PATH)",
        "komorebi-worker: configuration: ffprobe is not installed (not found on PATH)",
    ]


def test_run_reports_every_configuration_problem_and_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_BUCKET_NAME")}
    for name in ("QUEUE_URL", "CONNECT_INSTANCE_ALIAS", "WORKER_CONCURRENCY"):
        env.pop(name, None)
    env["WORKER_CONCURRENCY"] = "zero"
    done = subprocess.run(
        [str(KOMOREBI), "run"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) >= 5
    assert all(line.startswith("komorebi-worker: configuration: ") for line in lines)
    text = done.stderr
    for name in (
        "AC_AUDIO_BUCKET_NAME",
        "QUEUE_URL",
        "CONNECT_INSTANCE_ALIAS",
        "WORKER_CONCURRENCY",
    ):
        assert name in text
    assert "Traceback" not in text


def test_sigterm_mid_job_releases_the_message_and_exits_0(
    aws: AwsEnv,
    scratch: Path,
    short_recording: Path,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    # Grace 2 s, shorter than the ~16 s merge: polls made while the job runs wait up to 1 s,
    # and the one in progress at SIGTERM is left to finish, so no orphaned poll can swallow
    # the released message.
    env = worker_env(aws, scratch, SHUTDOWN_GRACE_SECONDS="2")
    stopped = sigterm_mid_merge(aws, short_recording, env, tmp_path / "first.log")
    assert stopped.worker.count("worker.grace_expired") == 1
    row = assert_given_back(aws, stopped, scratch)
    assert row.get("processingStatus") is None

    # A second worker completes it.
    second = workers(worker_env(aws, scratch))
    wait_until(
        lambda: get_row(aws, stopped.contact.recording_id).get("processingStatus") == "DONE",
        timeout=60,
        what="the second worker to finish the job",
    )
    wait_until(lambda: queue_depth(aws) == (0, 0), what="message deleted")
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=STOP_TIMEOUT_SECONDS) == 0, second.tail()
    assert second.count("job.succeeded") == 1


def test_zero_grace_gives_the_message_back_at_once(
    aws: AwsEnv, scratch: Path, short_recording: Path, tmp_path: Path
) -> None:
    # SHUTDOWN_GRACE_SECONDS=0: "give everything back at once". Accepted at start-up; SIGTERM
    # mid-job cancels the job at once (released, not finished: the merge would take ~16 s;
    # the exit deadline is only a failure bound), releases lease and message, and exits 0.
    env = worker_env(aws, scratch, SHUTDOWN_GRACE_SECONDS="0")
    stopped = sigterm_mid_merge(aws, short_recording, env, tmp_path / "worker.log")
    assert stopped.worker.count("job.succeeded") == 0
    row = assert_given_back(aws, stopped, scratch)
    assert row.get("processingStatus") is None


def test_second_signal_stops_at_once_and_still_releases(
    aws: AwsEnv,
    scratch: Path,
    short_recording: Path,
    workers: Callable[..., WorkerProcess],
) -> None:
    contact = seed_contact(aws, recording=short_recording)
    message_id = send_job(aws, contact.recording_id, 3)
    # A grace period longer than the test may wait: only the second signal ends it.
    # One slot: no long poll is outstanding while the job runs (a second signal cancels
    # everything, an outstanding poll included, and SQS may hand that orphan the message).
    env = worker_env(aws, scratch, SHUTDOWN_GRACE_SECONDS="100", WORKER_CONCURRENCY="1")
    worker = workers(env, readrate=0.25)
    worker.wait_for_event("merge_plan")
    worker.signal(signal.SIGTERM)
    worker.wait_for_event("worker.draining")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=STOP_TIMEOUT_SECONDS) == 128 + signal.SIGTERM, worker.tail()
    assert worker.count("job.released") == 1
    assert [m["MessageId"] for m in receive_now(aws)] == [message_id]
    assert "leaseOwner" not in get_row(aws, contact.recording_id)
    assert ffmpeg_children_using(scratch) == []


def test_two_processes_process_six_messages_exactly_once(
    aws: AwsEnv,
    scratch: Path,
    short_recording: Path,
    workers: Callable[..., WorkerProcess],
) -> None:
    contacts = [seed_contact(aws, recording=short_recording) for _ in range(6)]
    processes = [workers(worker_env(aws, scratch)) for _ in range(2)]
    for process in processes:
        process.wait_for_event("worker.ready")
    port = int(processes[0].wait_for_event("http.listening")["port"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        assert response.status == 200
    for contact in contacts:
        send_job(aws, contact.recording_id, 3)

    def all_done() -> bool:
        return all(get_row(aws, c.recording_id).get("processingStatus") == "DONE" for c in contacts)

    wait_until(all_done, timeout=90, what="all six rows DONE")
    wait_until(lambda: queue_depth(aws) == (0, 0), what="all messages deleted")
    for process in processes:
        process.signal(signal.SIGTERM)
    for process in processes:
        assert process.wait(timeout=STOP_TIMEOUT_SECONDS) == 0, process.tail()
    assert sum(p.count("job.succeeded") for p in processes) == 6
    assert sum(p.count("job.retry") + p.count("job.dead_lettered") for p in processes) == 0
    for contact in contacts:
        assert int(get_row(aws, contact.recording_id)["processingAttempts"]) == 1
    assert receive_now(aws, aws.dlq_url) == []


def test_sigterm_while_aws_does_not_answer_exits_at_once(aws: AwsEnv, tmp_path: Path) -> None:
    # The start-up check hangs on an endpoint that accepts and never answers (60 s read
    # timeout, several attempts): a stop must not wait for it.
    import socket

    hung_requests: list[socket.socket] = []
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        endpoint = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        env = {
            **os.environ,
            **aws.env,
            "AWS_ENDPOINT_URL": endpoint,
            "METRICS_PORT": str(free_port()),
            "METRICS_HOST": "127.0.0.1",
            "SCRATCH_DIR": str(tmp_path),
        }
        process = subprocess.Popen(
            [str(KOMOREBI), "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Signals are handled once "worker.starting" is logged; the first GetQueueAttributes
            # is then about to hang (a fixed sleep raced a slow start on a loaded machine).
            _wait_for_line(process, "worker.starting", timeout=30)
            black_hole.settimeout(30)
            hung, _ = black_hole.accept()  # the first GetQueueAttributes is under way
            hung_requests.append(hung)
            process.send_signal(signal.SIGTERM)
            # Without the cancellation this takes the SDK's read timeout (60 s) or more.
            assert process.wait(timeout=20) == 0
        finally:
            for hung in hung_requests:
                hung.close()
            process.kill()
            process.wait()
