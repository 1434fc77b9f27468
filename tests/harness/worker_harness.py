"""Test harness for the queue worker: seeded contacts, in-process consumers, worker processes.

- :func:`seed_contact` writes what the backend and Amazon Connect leave behind for a contact:
  the Recording row (``agentID`` + ``creationDate``), the Komorebi recording in the input
  bucket and the Connect WAV under the Connect prefix.
- :func:`running_consumer` runs a :class:`worker.consumer.Consumer` in the test's event loop.
- :class:`WorkerProcess` runs ``komorebi-worker run`` as a subprocess (this module's ``main``
  wraps the real CLI; ``--readrate R`` makes ffmpeg read the recording at R x real time, so a
  job lasts long enough to be interrupted, without any test code inside ``worker/``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness.polling import wait_until
from tests.harness.ports import free_port

if TYPE_CHECKING:
    from tests.harness.fixtures_aws import AwsEnv
    from worker.config import Settings
    from worker.consumer import Consumer

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
# How long a SIGTERMed worker may take to exit in tests: an idle one first lets its long poll
# finish (SPEC §6: at most the 20 s wait, bounded at 35 s), on a loaded machine.
STOP_TIMEOUT_SECONDS = 60.0
RECORDING = DATA_DIR / "chrome-vp8-opus-8s.webm"  # 1000 Hz tone, ~8 s, VP8 + Opus
CONNECT_WAV = DATA_DIR / "connect-8k-stereo-5s.wav"  # 440 Hz left, 660 Hz right, 5 s
CREATED = datetime(2026, 3, 14, 23, 26, 53, tzinfo=UTC)
AGENT_ID = "agent-7"
CONNECT_ALIAS = "komorebi-test"


@dataclass(frozen=True)
class Contact:
    """Where a seeded contact's objects are."""

    recording_id: str
    agent_id: str
    input_key: str
    connect_key: str
    output_dir: str

    @property
    def thumbnail_key(self) -> str:
        """The Lambda's thumbnail key."""
        return f"{self.output_dir}/thumbnail.png"


@contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. ``700k``) on ``mount_point``: a real full disk. Unmounted
    afterwards.

    Where mounting is not permitted the test is skipped on a developer's machine but FAILS
    under CI (``CI`` set, as ``.ci/run`` and Jenkins do): these are the only tests of a full
    scratch disk, and a silent skip would drop them from every CI run on a non-root runner.
    """
    import pytest

    def unavailable(why: str) -> None:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must run the full-disk tests (run as root)")
        pytest.skip(why)

    mount_point.mkdir(exist_ok=True)
    if shutil.which("mount") is None:
        unavailable("no mount command")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def new_recording_id() -> str:
    """A valid, unique recording id (UUID, like the backend's)."""
    return str(uuid.uuid4())


def seed_contact(
    aws: AwsEnv,
    recording_id: str | None = None,
    *,
    recording: Path | bytes | None = RECORDING,
    connect_audio: Path | None = CONNECT_WAV,
    row: bool = True,
    extra: dict[str, Any] | None = None,
    agent_id: str = AGENT_ID,
) -> Contact:
    """Seed one contact; ``None`` for a part leaves it out (to test its absence)."""
    rid = recording_id or new_recording_id()
    day = CREATED.strftime("%Y/%m/%d")
    contact = Contact(
        recording_id=rid,
        agent_id=agent_id,
        input_key=f"{day}/{agent_id}/{rid}.mp4",
        connect_key=(
            f"connect/{CONNECT_ALIAS}/CallRecordings/{day}/{rid}_{CREATED:%Y%m%dT%H:%M}_UTC.wav"
        ),
        output_dir=f"{day}/{agent_id}/{rid}",
    )
    if row:
        item = {
            "videoID": {"S": rid},
            "agentID": {"S": agent_id},
            "creationDate": {"S": CREATED.strftime("%Y-%m-%d %H:%M:%S")},
            **(extra or {}),
        }
        aws.client("dynamodb").put_item(TableName=aws.table_name, Item=item)
    s3 = aws.client("s3")
    if recording is not None:
        body = recording if isinstance(recording, bytes) else recording.read_bytes()
        s3.put_object(Bucket=aws.input_bucket, Key=contact.input_key, Body=body)
    if connect_audio is not None:
        upload_connect_audio(aws, contact, connect_audio)
    return contact


def upload_connect_audio(aws: AwsEnv, contact: Contact, path: Path = CONNECT_WAV) -> None:
    """Put the contact's Connect recording where Amazon Connect writes it."""
    aws.client("s3").put_object(
        Bucket=aws.ac_audio_bucket, Key=contact.connect_key, Body=path.read_bytes()
    )


def send_job(aws: AwsEnv, recording_id: str, call_end: str | float = "00:00:05") -> str:
    """Enqueue a job in the Lambda's message format; returns the message id."""
    body = json.dumps({"recordingID": recording_id, "callEndingTimestamp": call_end})
    return send_raw(aws, body)


def send_raw(aws: AwsEnv, body: str) -> str:
    """Enqueue any body."""
    response = aws.client("sqs").send_message(QueueUrl=aws.queue_url, MessageBody=body)
    return str(response["MessageId"])


def get_row(aws: AwsEnv, recording_id: str) -> dict[str, Any]:
    """The row as plain Python values ({} when absent)."""
    from boto3.dynamodb.types import TypeDeserializer

    item = aws.client("dynamodb").get_item(
        TableName=aws.table_name, Key={"videoID": {"S": recording_id}}, ConsistentRead=True
    )
    deserializer = TypeDeserializer()
    return {k: deserializer.deserialize(v) for k, v in item.get("Item", {}).items()}


def age_queued_messages(aws: AwsEnv, seconds: float) -> int:
    """Move the ``SentTimestamp`` of every message in the job queue ``seconds`` back, as if
    it had waited that long (moto only: its server runs in this process). Returns how many."""
    from moto.backends import get_backend

    assert aws.backend == "moto", "SentTimestamp can only be aged on moto"
    account, name = aws.queue_url.rstrip("/").split("/")[-2:]
    region = aws.env["AWS_REGION"]
    queue = get_backend("sqs")[account][region].queues[name]  # type: ignore[index]
    for message in queue._messages:
        message.sent_timestamp -= int(seconds * 1000)
    return len(queue._messages)


def queue_depth(aws: AwsEnv, queue_url: str | None = None) -> tuple[int, int]:
    """(visible, in flight) messages of the queue (moto counts exactly)."""
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=queue_url or aws.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def receive_now(aws: AwsEnv, queue_url: str | None = None, *, hide: int = 300) -> list[Any]:
    """Every message visible right now (short polls), hidden for ``hide`` seconds."""
    sqs = aws.client("sqs")
    found: list[Any] = []
    while True:
        response = sqs.receive_message(
            QueueUrl=queue_url or aws.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=hide,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        batch = response.get("Messages", [])
        if not batch:
            return found
        found += batch


def dlq_messages(aws: AwsEnv) -> list[Any]:
    """Every message in the DLQ right now (hidden afterwards, so call it once per check)."""
    return receive_now(aws, aws.dlq_url)


def attributes(message: Any) -> dict[str, str]:
    """A received message's attributes as plain strings."""
    return {k: v.get("StringValue", "") for k, v in message.get("MessageAttributes", {}).items()}


def worker_env(
    aws: AwsEnv,
    scratch: Path | None = None,
    *,
    backoff: tuple[float, float] = (1.0, 1.0),
    **overrides: str,
) -> dict[str, str]:
    """The one test worker environment: the provisioned world, its own metrics port and scratch
    directory, JSON logs, two job slots and a retry backoff of ``backoff`` = (base, max)
    seconds; ``overrides`` win."""
    env = {
        **aws.env,
        "METRICS_PORT": str(free_port()),
        "METRICS_HOST": "127.0.0.1",
        "WORKER_CONCURRENCY": "2",
        "RETRY_BACKOFF_BASE_SECONDS": f"{backoff[0]:g}",
        "RETRY_BACKOFF_MAX_SECONDS": f"{backoff[1]:g}",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
    }
    if scratch is not None:
        env["SCRATCH_DIR"] = str(scratch)
    env.update(overrides)
    return env


def settings_for(aws: AwsEnv, scratch: Path, **overrides: str) -> Settings:
    """In-process worker settings (see :func:`worker_env`)."""
    from worker.config import Settings

    return Settings.from_env(worker_env(aws, scratch, **overrides))


def metric(name: str, **labels: str) -> float:
    """A sample of the worker's registry (0 when absent)."""
    from worker.observability import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def jobs(outcome: str) -> float:
    """``komorebi_jobs_total{outcome}``."""
    return metric("komorebi_jobs_total", outcome=outcome)


# --- in-process consumers --------------------------------------------------------------------


@asynccontextmanager
async def running_consumer(
    settings: Settings,
    *,
    poll_wait_seconds: int = 1,
    max_job_seconds: float | None = None,
    worker_id: str | None = None,
) -> AsyncIterator[Consumer]:
    """A consumer polling in the background; stopped (gracefully) when the block exits."""
    import anyio

    from worker.aws import open_clients
    from worker.consumer import Consumer
    from worker.observability import HealthState
    from worker.protection import TaskProtector

    async with open_clients(settings) as clients, anyio.create_task_group() as group:
        consumer = Consumer(
            settings,
            clients,
            HealthState(),
            TaskProtector(None, 60),
            poll_wait_seconds=poll_wait_seconds,
            max_job_seconds=max_job_seconds,
            worker_id=worker_id,
        )
        group.start_soon(consumer.run)
        try:
            yield consumer
        finally:
            consumer.request_stop()


def slow_merge(readrate: float) -> Callable[..., list[str]]:
    """A ``worker.media.build_merge_args`` that makes ffmpeg read the recording at
    ``readrate`` x real time (a real, long-running, killable ffmpeg); patched in as
    ``worker.media.run.build_merge_args``, the name the merge calls it by."""
    from worker import media

    original = media.build_merge_args

    def build(**kwargs: Any) -> list[str]:
        args = original(**kwargs)
        first_input = args.index("-format_whitelist")
        return [*args[:first_input], "-readrate", str(readrate), *args[first_input:]]

    return build


# --- worker processes ------------------------------------------------------------------------


def json_events(text: str, *, other_lines: bool = False) -> list[dict[str, Any]]:
    """The JSON log events (one object per line) in a worker's output. Any other non-blank
    line is skipped, or with ``other_lines`` kept as ``{"raw": line}`` (for a test that
    wants none: the worker must write JSON only)."""
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict):
            events.append(event)
        elif other_lines and line.strip():
            events.append({"raw": line})
    return events


def inherited_environment() -> dict[str, str]:
    """This process's environment without AWS, pytest and coverage variables: what a worker
    subprocess starts from (its AWS settings come from :func:`worker_env` alone)."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "PYTEST", "COV_"))
    }


def http_get(url: str) -> str:
    """GET a local URL's text ('' on any error)."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return str(response.read().decode())
    except OSError:
        return ""


class WorkerProcess:
    """``komorebi-worker run`` in a subprocess (its own session, started at once); stdout and
    stderr, JSON log lines, are appended to ``log_path``.

    ``readrate`` makes its ffmpeg read the recording at that multiple of real time (a long,
    killable merge, see :func:`slow_merge`).
    """

    def __init__(
        self, env: Mapping[str, str], log_path: Path, *, readrate: float | None = None
    ) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.metrics_port = int(self.env["METRICS_PORT"])
        command = [sys.executable, "-m", "tests.harness.worker_harness"]
        if readrate is not None:
            command += ["--readrate", str(readrate)]
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**inherited_environment(), **self.env, "PYTHONPATH": str(ROOT)},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log event written so far."""
        return json_events(self.log_path.read_text(errors="replace"))

    def count(self, event: str) -> int:
        """How many log events named ``event``."""
        return sum(1 for e in self.events() if e.get("event") == event)

    def wait_for_event(self, event: str, *, timeout: float = 30.0) -> dict[str, Any]:
        """The first log event named ``event`` (fails if the process exits first)."""

        def found() -> dict[str, Any] | None:
            for logged in self.events():
                if logged.get("event") == event:
                    return logged
            if not self.alive():
                raise AssertionError(f"worker exited ({self.process.returncode}): {self.tail()}")
            return None

        try:
            return wait_until(found, timeout=timeout, interval=0.1, what=f"log event {event!r}")
        except AssertionError as error:
            raise AssertionError(f"{error}: {self.tail()}") from None

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to the worker (by PID), if it still runs."""
        if self.alive():
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        """Wait for the exit; returns the exit code."""
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """Teardown: SIGTERM, wait (SIGKILL after ``timeout``); the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
        return self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL and reap (and any ffmpeg it left in its session)."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)

    def metrics(self) -> str:
        """The text of its /metrics (empty when unreachable)."""
        return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def healthy(self) -> bool:
        """True when /healthz answers 200."""
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def tail(self, lines: int = 15) -> str:
        """The last log lines (for failure messages)."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.harness.worker_harness [--readrate R]``: ``komorebi-worker run``."""
    # Like `komorebi-worker run` (worker.cli): stop signals are caught before the heavy imports.
    from worker import signals

    signals.install()

    import argparse

    from worker import cli
    from worker.media import run as media_run

    parser = argparse.ArgumentParser()
    parser.add_argument("--readrate", type=float, default=None)
    args = parser.parse_args(argv)
    if args.readrate is not None:
        media_run.build_merge_args = slow_merge(args.readrate)  # type: ignore[assignment]
    return cli.main(["run"])


if __name__ == "__main__":
    sys.exit(main())


def set_max_receive_count(aws: AwsEnv, count: int) -> None:
    """Give the job queue a redrive policy to its DLQ after ``count`` receives."""
    from worker.queue import RedrivePolicy

    sqs = aws.client("sqs")
    arn = sqs.get_queue_attributes(QueueUrl=aws.dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sqs.set_queue_attributes(
        QueueUrl=aws.queue_url,
        Attributes={"RedrivePolicy": RedrivePolicy(arn, count).to_json()},
    )


def with_fresh_queues(world: AwsEnv) -> AwsEnv:
    """``world`` with a new, empty job queue and DLQ (same parameters as ``provision``).

    Buckets and table are shared (tests use unique recording ids); creating two queues is much
    cheaper than provisioning a whole world (the table waiter dominates).
    """
    import dataclasses

    from worker.provisioning import DLQ_ATTRIBUTES, QUEUE_ATTRIBUTES, QUEUE_MAX_RECEIVE_COUNT
    from worker.queue import RedrivePolicy

    sqs = world.client("sqs")
    name = f"jobs-{uuid.uuid4().hex[:10]}"
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq", Attributes=dict(DLQ_ATTRIBUTES))["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = RedrivePolicy(dlq_arn, QUEUE_MAX_RECEIVE_COUNT).to_json()
    queue_url = sqs.create_queue(
        QueueName=name, Attributes={**QUEUE_ATTRIBUTES, "RedrivePolicy": redrive}
    )["QueueUrl"]
    env = {**world.env, "QUEUE_URL": queue_url, "DLQ_URL": dlq_url}
    return dataclasses.replace(world, env=env, queue_url=queue_url, dlq_url=dlq_url)
