"""``komorebi-worker dev``: the whole pipeline on an embedded AWS emulator (SPEC §7).

Starts moto's server on 127.0.0.1, points this process's SDKs at it (dummy credentials, so
nothing can reach real AWS), provisions queue + DLQ + buckets + table exactly like
``provision``, seeds a demo contact from the bundled sample media the way production data
arrives (Komorebi upload, Connect call recording, backend row), enqueues the Lambda's message,
runs the real consumer until the queue is empty, and downloads the unified recording and its
thumbnail into a local folder.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, TextIO

import anyio
import anyio.abc
import boto3
from boto3.dynamodb.types import TypeDeserializer
from moto.server import ThreadedMotoServer

from worker.config import Settings
from worker.errors import ConfigError, WorkerError
from worker.keys import keys_for
from worker.messages import JobMessage, format_timestamp
from worker.provisioning import provision

SAMPLES_DIR: Final = Path(__file__).with_name("samples")
# A Chromium MediaRecorder WebM (VP8 + Opus, 8 s, no header duration) and a Connect-shaped
# WAV (8 kHz stereo, 5 s: customer 440 Hz left, agent 660 Hz right).
SAMPLE_RECORDING: Final = "chrome-vp8-opus-8s.webm"
SAMPLE_CONNECT_AUDIO: Final = "connect-8k-stereo-5s.wav"
DEMO_CALL_END_SECONDS: Final = 6.0
ONCE_POLL_WAIT_SECONDS: Final = 2
DEMO_AGENT_ID: Final = "demo-agent"
DEMO_REGION: Final = "us-east-1"
DEMO_ACCOUNT_URL_PART: Final = "123456789012"
# The emulator's names; nothing here is a real resource.
DEMO_NAMES: Final[dict[str, str]] = {
    "AC_AUDIO_BUCKET_NAME": "komorebi-dev-connect-audio",
    "INPUT_BUCKET_NAME": "komorebi-dev-input",
    "OUTPUT_BUCKET_NAME": "komorebi-dev-output",
    "RECORDING_TABLE_NAME": "Recording",
    "CONNECT_INSTANCE_ALIAS": "komorebi-dev",
}
# SDK variables that could point this process at a real account; removed for the emulator.
_REAL_AWS_VARIABLES: Final = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)


@dataclass(frozen=True)
class DemoContact:
    """The seeded contact: where its inputs are and what message was sent."""

    recording_id: str
    agent_id: str
    creation_date: str
    input_key: str
    connect_audio_key: str
    message_id: str
    message_body: str


@dataclass(frozen=True)
class DemoOutputs:
    """What the worker produced for the demo contact, downloaded locally."""

    recording: Path | None
    thumbnail: Path | None
    row: dict[str, Any]


def sample_path(name: str) -> Path:
    """A bundled sample file (package data, ``worker/samples``)."""
    path = SAMPLES_DIR / name
    if not path.is_file():
        raise WorkerError(f"bundled sample {name} is missing from {SAMPLES_DIR}")
    return path


def _check_port_free(port: int) -> None:
    # moto's server thread dies on a busy port and its start() then waits forever: check first.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            raise ConfigError(
                f"--port {port}: 127.0.0.1:{port} is not free ({error.strerror})"
            ) from None


@contextmanager
def emulator(port: int = 0) -> Iterator[str]:
    """Run moto's server on 127.0.0.1 (a free port when 0); yields its endpoint URL."""
    if port:
        _check_port_free(port)
    # One access-log line per SDK request would drown the demo's output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        host, bound = server.get_host_and_port()
        yield f"http://{host}:{bound}"
    finally:
        server.stop()


def use_emulator(endpoint: str, environ: dict[str, str] | None = None) -> None:
    """Point this process's AWS SDKs at the emulator with dummy credentials.

    Only this process's environment changes (the shell is untouched). Profile, token and
    service-endpoint variables are removed and the profile files ignored, so nothing can fall
    through to a real account.
    """
    env: Any = os.environ if environ is None else environ
    for name in list(env):
        # Service-specific endpoints (AWS_ENDPOINT_URL_S3, ...) would win over ours.
        if name in _REAL_AWS_VARIABLES or name.startswith("AWS_ENDPOINT_URL_"):
            env.pop(name, None)
    env.update(
        {
            # No profile files either: they can carry endpoints, regions and credentials.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": DEMO_REGION,
            "AWS_DEFAULT_REGION": DEMO_REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",  # the emulator's dummy credentials
        }
    )


def dev_settings(endpoint: str, environ: Mapping[str, str] | None = None) -> Settings:
    """Worker settings for the emulator: demo resource names over the caller's other knobs."""
    base = dict(os.environ if environ is None else environ)
    base.update(DEMO_NAMES)
    base["QUEUE_URL"] = f"{endpoint}/{DEMO_ACCOUNT_URL_PART}/komorebi-dev-jobs"
    base.pop("DLQ_URL", None)
    base.setdefault("LOG_FORMAT", "console")
    base.setdefault("WORKER_CONCURRENCY", "2")
    return Settings.from_env(base)


def _session() -> boto3.session.Session:
    return boto3.session.Session(region_name=DEMO_REGION)


def seed_demo_contact(
    settings: Settings, session: boto3.session.Session, *, now: datetime | None = None
) -> DemoContact:
    """Upload the sample media and the backend's row as production would, then enqueue.

    The Komorebi recording goes to the input key (a WebM stored under ``.mp4``, as the
    browser uploads it), the Connect audio under the Connect prefix with Amazon Connect's
    ``<contactId>_<yyyymmddThh:mm>_UTC.wav`` name, and the row carries backend-owned
    attributes the worker must leave alone.
    """
    assert settings.queue_url is not None
    created = (now or datetime.now(UTC)).replace(microsecond=0) - timedelta(minutes=1)
    recording_id = str(uuid.uuid4())
    keys = keys_for(
        recording_id, DEMO_AGENT_ID, created, settings.keys, settings.connect_instance_alias
    )
    call_ended = created + timedelta(seconds=DEMO_CALL_END_SECONDS)
    connect_key = f"{keys.connect_audio_prefixes[0]}_{call_ended:%Y%m%dT%H:%M}_UTC.wav"
    s3 = session.client("s3")
    s3.upload_file(
        str(sample_path(SAMPLE_RECORDING)),
        settings.input_bucket,
        keys.input_key,
        ExtraArgs={"ContentType": "video/webm"},
    )
    s3.upload_file(
        str(sample_path(SAMPLE_CONNECT_AUDIO)),
        settings.ac_audio_bucket,
        connect_key,
        ExtraArgs={"ContentType": "audio/wav"},
    )
    creation_date = f"{created:%Y-%m-%d %H:%M:%S}"
    # The backend creates the row (PutItem is the backend's right, never the worker's).
    session.client("dynamodb").put_item(
        TableName=settings.table_name,
        Item={
            "videoID": {"S": recording_id},
            "agentID": {"S": DEMO_AGENT_ID},
            "creationDate": {"S": creation_date},
            "contactId": {"S": recording_id},
            "title": {"S": "Demo contact (komorebi-worker dev)"},
            "isProcessed": {"BOOL": False},
        },
    )
    body = JobMessage(recording_id, DEMO_CALL_END_SECONDS).to_body()
    sent = session.client("sqs").send_message(QueueUrl=settings.queue_url, MessageBody=body)
    return DemoContact(
        recording_id=recording_id,
        agent_id=DEMO_AGENT_ID,
        creation_date=creation_date,
        input_key=keys.input_key,
        connect_audio_key=connect_key,
        message_id=str(sent["MessageId"]),
        message_body=body,
    )


async def run_consumer(
    settings: Settings, *, once: bool, on_serving: Callable[[], None] | None = None
) -> None:
    """The real consumer on the emulator; ``once``: until the queue is empty.

    Without ``once`` it serves until SIGINT/SIGTERM, then stops like the service does (a
    second signal interrupts at once). ``on_serving`` is called once signals are handled.
    """
    from worker.aws import open_clients
    from worker.consumer import Consumer
    from worker.observability import HealthState
    from worker.protection import TaskProtector
    from worker.queue import SQS_MAX_WAIT_SECONDS

    async with open_clients(settings) as clients:
        # Never on ECS here: a no-op protector.
        consumer = Consumer(
            settings,
            clients,
            HealthState(),
            TaskProtector(None, 1),
            # --once: the queue is ours and already filled, so a short final poll suffices
            # to see it empty (a 20 s long poll would only make the demo slower).
            poll_wait_seconds=ONCE_POLL_WAIT_SECONDS if once else SQS_MAX_WAIT_SECONDS,
        )
        if once:
            await consumer.run(once=True)
            return
        async with anyio.create_task_group() as tg:

            async def stop_on_signal(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    task_status.started()
                    async for _ in signals:
                        consumer.request_stop()
                        return

            await tg.start(stop_on_signal)
            if on_serving is not None:
                on_serving()
            await consumer.run()
            tg.cancel_scope.cancel()


def fetch_outputs(
    settings: Settings, session: boto3.session.Session, recording_id: str, output_dir: Path
) -> DemoOutputs:
    """The row's final attributes, and its outputs downloaded into ``output_dir``."""
    item = (
        session.client("dynamodb")
        .get_item(
            TableName=settings.table_name,
            Key={"videoID": {"S": recording_id}},
            ConsistentRead=True,
        )
        .get("Item", {})
    )
    deserializer = TypeDeserializer()
    row = {name: _plain(deserializer.deserialize(value)) for name, value in sorted(item.items())}
    recording = thumbnail = None
    if row.get("videoKey"):
        output_dir.mkdir(parents=True, exist_ok=True)
        s3 = session.client("s3")
        video_key = str(row["videoKey"])
        recording = output_dir / f"recording{Path(video_key).suffix}"
        s3.download_file(settings.output_bucket, video_key, str(recording))
        if row.get("thumbnailKey"):
            thumbnail = output_dir / "thumbnail.png"
            s3.download_file(settings.output_bucket, str(row["thumbnailKey"]), str(thumbnail))
    return DemoOutputs(recording=recording, thumbnail=thumbnail, row=row)


def _plain(value: Any) -> Any:
    """DynamoDB numbers as int/float, so the report prints 6.0 and not Decimal('6.0')."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | set | tuple):
        return [_plain(item) for item in value]
    return value


def run_dev(*, once: bool, output_dir: Path, port: int = 0, out: TextIO | None = None) -> int:
    """The ``dev`` command; returns the exit code (1 when the demo job did not finish)."""
    stream = out or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    with emulator(port) as endpoint:
        use_emulator(endpoint)
        settings = dev_settings(endpoint)
        _configure_logging(settings)
        session = _session()
        created = provision(settings, session=session)
        say(f"AWS emulator (moto) on {endpoint}")
        say(f"  queue   {created.queue_url}")
        say(f"  dlq     {created.dlq_url}")
        say(f"  buckets {', '.join(created.buckets)}")
        say(f"  table   {created.table_name}")
        contact = seed_demo_contact(settings, session)
        say(f"Seeded demo contact {contact.recording_id} (agent {contact.agent_id})")
        say(f"  s3://{settings.input_bucket}/{contact.input_key}  (Komorebi recording)")
        say(f"  s3://{settings.ac_audio_bucket}/{contact.connect_audio_key}  (Connect audio)")
        say(f"Enqueued {contact.message_body} (callEnd {format_timestamp(DEMO_CALL_END_SECONDS)})")
        say("Processing ...")
        anyio.run(functools.partial(run_consumer, settings, once=True))
        outputs = fetch_outputs(settings, session, contact.recording_id, output_dir)
        _report(say, settings, contact, outputs)
        ok = outputs.recording is not None and outputs.row.get("isProcessed") is True
        if once or not ok:
            return 0 if ok else 1
        say()
        say("Still serving; from another shell, for example:")
        say(
            f"  export AWS_ENDPOINT_URL={endpoint} AWS_REGION={DEMO_REGION}"
            " AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing"
            f" QUEUE_URL={created.queue_url}"
        )
        say(f"  komorebi-worker enqueue {contact.recording_id} 00:00:07")
        anyio.run(
            functools.partial(
                run_consumer, settings, once=False, on_serving=lambda: say("Ctrl-C to stop.")
            )
        )
        say("Stopped.")
        return 0


def _report(say: Any, settings: Settings, contact: DemoContact, outputs: DemoOutputs) -> None:
    if outputs.recording is None:
        say(
            f"The demo job did not finish: processingStatus={outputs.row.get('processingStatus')}"
            f" processingError={outputs.row.get('processingError')}"
        )
    else:
        say("Done. The unified recording is here:")
        say(f"  recording: {outputs.recording.resolve()}")
        if outputs.thumbnail is not None:
            say(f"  thumbnail: {outputs.thumbnail.resolve()}")
        say(f"  (in the emulator: s3://{settings.output_bucket}/{outputs.row.get('videoKey')})")
    say(f"Row {contact.recording_id} in {settings.table_name}:")
    for name, value in outputs.row.items():
        say(f"  {name} = {json.dumps(value, default=str)}")


def _configure_logging(settings: Settings) -> None:
    """Worker logs go to stderr (this command's report is on stdout)."""
    from worker.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format)
