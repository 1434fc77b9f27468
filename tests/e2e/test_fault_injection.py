"""Fault injection: a TCP proxy between the worker and the moto server, and a full scratch disk.

- The proxy itself: each mode does to a client what it claims (reset, black hole, delay, cut),
  deterministically for a seed, and counts what it injected.
- SDK level (the worker's own adapters, in-process): a black-holed request times out and is
  retried; retries stop after ``AWS_MAX_ATTEMPTS`` with a transient, one-line error.
- Worker level: a ``komorebi-worker run`` process behind the proxy (resets, delays, cut
  responses and short black holes on S3, DynamoDB and SQS) finishes every job: all rows DONE,
  outputs valid, DLQ empty, no lease left.
- A full scratch disk (a tiny tmpfs when ``mount`` works, and ``SCRATCH_MAX_BYTES``) fails the
  job cleanly with reason ``scratch_full``; the worker keeps serving; the scratch dir is empty.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from tests.harness import hostile_support as hs
from tests.harness.faultproxy import FaultPlan, FaultProxy, RequestInfo, classify
from tests.harness.fixtures_aws import AwsEnv
from tests.harness.polling import wait_until
from tests.harness.worker_harness import WorkerProcess, mounted_tmpfs, queue_depth
from worker import aws as worker_aws
from worker.errors import AwsUnavailable
from worker.recordings import RecordingTable
from worker.storage import ObjectStore


@pytest.fixture
def proxy(moto_server: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's moto server (no faults until a plan is set)."""
    with FaultProxy(moto_server, FaultPlan(), seed=7) as started:
        yield started


def _boto(service: str, endpoint: str, read_timeout: float = 2.0) -> object:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # the emulator's dummy credentials
        config=Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            read_timeout=read_timeout,
            connect_timeout=2,
        ),
    )


# --- the proxy itself ------------------------------------------------------------------------


def test_classify_requests() -> None:
    """Service and operation come from the request's first bytes."""
    sqs = b"POST / HTTP/1.1\r\nX-Amz-Target: AmazonSQS.ReceiveMessage\r\n\r\n{}"
    ddb = b"POST / HTTP/1.1\r\nX-Amz-Target: DynamoDB_20120810.GetItem\r\n\r\n{}"
    query = b"POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n"
    assert classify(sqs) == RequestInfo("sqs", "ReceiveMessage", "POST")
    assert classify(ddb) == RequestInfo("dynamodb", "GetItem", "POST")
    assert classify(query + b"Action=SendMessage&x=1").service == "sqs"
    assert classify(b"GET /bucket/key HTTP/1.1\r\nHost: x\r\n\r\n") == RequestInfo(
        "s3", "GET", "GET"
    )


def test_same_seed_same_decisions(moto_server: str) -> None:
    """Two proxies with one seed make the same decisions for the same requests."""
    plan = FaultPlan(reset=0.2, delay=0.2, drop=0.1, cut=0.1)
    requests = [RequestInfo(s, "Op", "POST") for s in ["s3", "sqs", "dynamodb"] * 40]
    runs = []
    for _ in range(2):
        proxy = FaultProxy(moto_server, plan, seed=42)
        runs.append([proxy._decide(info) for info in requests])
        proxy.stop()
    assert runs[0] == runs[1]
    assert {"reset", "delay", "drop", "cut", None} <= set(runs[0])


@pytest.mark.parametrize("mode", ["reset", "drop", "delay", "cut"])
def test_proxy_mode(mode: str, moto_server: str, proxy: FaultProxy) -> None:
    """Each mode has its effect on a client that does not retry, and is counted once."""
    s3 = _boto("s3", proxy.endpoint)
    bucket = f"proxy-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 50_000)  # type: ignore[attr-defined]
    proxy.set_plan(FaultPlan(**{mode: 1.0}, delay_seconds=0.2, max_faults=1))
    if mode == "delay":
        body = s3.get_object(Bucket=bucket, Key="k")["Body"].read()  # type: ignore[attr-defined]
        assert body == b"x" * 50_000
    elif mode == "cut":
        with pytest.raises((ResponseStreamingError, ConnectionClosedError)):
            s3.get_object(Bucket=bucket, Key="k")["Body"].read()  # type: ignore[attr-defined]
    else:
        expected = ReadTimeoutError if mode == "drop" else (
            ConnectionClosedError, EndpointConnectionError
        )  # fmt: skip
        with pytest.raises(expected):
            s3.get_object(Bucket=bucket, Key="k")  # type: ignore[attr-defined]
    assert proxy.counts == {mode: 1}
    # The budget is spent: the next request passes.
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x" * 50_000  # type: ignore[attr-defined]


# --- the worker's adapters through the proxy (in-process) ------------------------------------


def _in_process_settings(aws: AwsEnv, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch,
                         attempts: int) -> object:  # fmt: skip
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    return aws.settings(AWS_MAX_ATTEMPTS=str(attempts), AWS_ENDPOINT_URL=proxy.endpoint)


def test_retries_are_bounded(
    aws: AwsEnv, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every DynamoDB request reset: exactly AWS_MAX_ATTEMPTS tries, then AwsUnavailable."""
    settings = _in_process_settings(aws, proxy, monkeypatch, attempts=3)
    hs.World(aws).put_row("bounded-1")

    async def main() -> None:
        async with worker_aws.open_clients(settings) as clients:
            table = RecordingTable(clients.dynamodb, aws.table_name)
            proxy.set_plan(FaultPlan(reset=1.0, services=frozenset({"dynamodb"})))
            with pytest.raises(AwsUnavailable) as caught:
                await table.get("bounded-1")
            assert "\n" not in str(caught.value) and "://" not in str(caught.value)

    before = proxy.requests["dynamodb"]
    anyio.run(main)
    assert proxy.requests["dynamodb"] - before == 3
    assert proxy.counts["reset"] == 3


def test_black_hole_times_out_and_is_retried(
    aws: AwsEnv, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A request that is never answered hits the read timeout; the retry succeeds."""
    monkeypatch.setattr(worker_aws, "READ_TIMEOUT_SECONDS", 1)
    settings = _in_process_settings(aws, proxy, monkeypatch, attempts=3)
    world = hs.World(aws)
    world.put_row("blackhole-1")
    world.put_recording("blackhole-1", b"r" * 100_000)

    async def main() -> None:
        async with worker_aws.open_clients(settings) as clients:
            table = RecordingTable(clients.dynamodb, aws.table_name)
            store = ObjectStore(clients.s3)
            proxy.set_plan(FaultPlan(drop=1.0, max_faults=1, services=frozenset({"dynamodb"})))
            row = await table.get("blackhole-1")
            assert row.agent_id == hs.AGENT
            proxy.set_plan(FaultPlan(drop=1.0, max_faults=2, services=frozenset({"s3"})))
            size = await store.download(
                aws.input_bucket, world.input_key("blackhole-1"), tmp_path / "r.bin"
            )
            assert size == 100_000
            assert (tmp_path / "r.bin").read_bytes() == b"r" * 100_000

    anyio.run(main)
    assert proxy.counts["drop"] == 2


def test_download_survives_cut_responses(
    aws: AwsEnv, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Responses cut mid-body: the download retries and the file is complete and exact."""
    settings = _in_process_settings(aws, proxy, monkeypatch, attempts=5)
    world = hs.World(aws)
    payload = bytes(range(256)) * 2000
    world.put_recording("cut-1", payload)

    async def main() -> None:
        async with worker_aws.open_clients(settings) as clients:
            store = ObjectStore(clients.s3)
            proxy.set_plan(FaultPlan(cut=1.0, max_faults=2, services=frozenset({"s3"})))
            await store.download(aws.input_bucket, world.input_key("cut-1"), tmp_path / "c.bin")

    anyio.run(main)
    assert (tmp_path / "c.bin").read_bytes() == payload
    assert proxy.counts["cut"] == 2


# --- a worker process behind the proxy --------------------------------------------------------

WORKER_FAULTS = FaultPlan(
    reset=0.08, delay=0.06, cut=0.04, drop=0.03, delay_seconds=0.2, drop_hold_seconds=1.0
)


def _seed_valid(world: hs.World, media: dict[str, bytes], recording_id: str) -> str:
    world.put_row(recording_id)
    world.put_recording(recording_id, media["recording"])
    world.put_connect(recording_id, media["connect"])
    return json.dumps({"recordingID": recording_id, "callEndingTimestamp": "00:00:01"})


@pytest.fixture(scope="module")
def small_media_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2 s recording (1 kHz) and a 1.5 s Connect WAV (440 Hz left, 660 Hz right)."""
    return hs.make_small_contact(tmp_path_factory.mktemp("fault-media"))


def _assert_output_holds_the_contact(
    world: hs.World, recording_id: str, small_media_files: dict[str, Path], folder: Path
) -> None:
    """The DONE row's output, by content: every frame of the small recording, the call's
    tones, then the recording's own tone (not the container header's duration)."""
    row = world.rows()[recording_id]
    assert row["isProcessed"] is True and not row.get("leaseOwner")
    local = world.download_output(str(row["videoKey"]), folder / f"{recording_id}.mp4")
    problems = hs.small_contact_problems(local, small_media_files["recording"])
    assert problems == [], (recording_id, problems)


@pytest.fixture(scope="module")
def small_media(small_media_files: dict[str, Path]) -> dict[str, bytes]:
    """The small contact's files as bytes."""
    return {name: path.read_bytes() for name, path in small_media_files.items()}


def test_jobs_finish_under_transient_faults(
    aws: AwsEnv,
    proxy: FaultProxy,
    small_media: dict[str, bytes],
    small_media_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Resets, delays, cut responses and black holes on every service: all jobs DONE."""
    world = hs.World(aws)
    ids = [f"faulty-{i:02d}" for i in range(6)]
    bodies = [_seed_valid(world, small_media, rid) for rid in ids]
    # A ReceiveMessage whose response is lost leaves its messages hidden for the queue's own
    # visibility timeout (300 s as provisioned): match it to the worker's for this test.
    world.set_queue_visibility(10)
    proxy.set_plan(WORKER_FAULTS)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = hs.hostile_env(
        aws,
        scratch,
        AWS_ENDPOINT_URL=proxy.endpoint,
        AWS_MAX_ATTEMPTS="6",
        VISIBILITY_TIMEOUT="10",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        world.send_batch(bodies)

        def finished() -> bool:
            rows = world.rows()
            done = all(rows.get(rid, {}).get("processingStatus") == "DONE" for rid in ids)
            return done and queue_depth(world.aws) == (0, 0)

        try:
            wait_until(finished, timeout=90, what="every job DONE through the faulty proxy")
        finally:
            faults = proxy.summary()
            print("faults injected:", json.dumps(faults))
    finally:
        assert worker.stop() == 0
    for rid in ids:
        _assert_output_holds_the_contact(world, rid, small_media_files, tmp_path)
    assert queue_depth(world.aws, aws.dlq_url) == (0, 0)
    by_service = faults["faults_by_service"]
    assert isinstance(by_service, dict)
    for service in ("s3", "dynamodb"):
        assert sum(n for k, n in by_service.items() if k.startswith(service + ":")) > 0
    assert hs.leaks((tmp_path / "worker.log").read_text(), urls=False) == []


# --- a full scratch disk ----------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 700 kB tmpfs (skipped where mounting is not permitted)."""
    with mounted_tmpfs(tmp_path / "tmpfs", "700k") as mount_point:
        yield mount_point


@pytest.mark.parametrize("how", ["tmpfs", "scratch_max_bytes"])
def test_full_scratch_fails_cleanly(
    how: str,
    aws: AwsEnv,
    small_media: dict[str, bytes],
    small_media_files: dict[str, Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A job that does not fit fails with scratch_full; the next job succeeds; nothing left."""
    world = hs.World(aws)
    big = (hs.FIXTURES / "chrome-avc1-opus-8s.mp4").read_bytes()  # 390 kB
    world.put_row("too-big")
    world.put_recording("too-big", big)
    world.put_connect("too-big", (hs.FIXTURES / "connect-8k-stereo-5s.wav").read_bytes())
    small_body = _seed_valid(world, small_media, "fits-after")
    if how == "tmpfs":
        # Inputs (550 kB) fit; the merged output does not: ffmpeg meets ENOSPC.
        scratch = request.getfixturevalue("tiny_tmpfs")
        env = hs.hostile_env(aws, scratch)
    else:
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        env = hs.hostile_env(aws, scratch, SCRATCH_MAX_BYTES="200000")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        world.send(json.dumps({"recordingID": "too-big", "callEndingTimestamp": "00:00:03"}))
        wait_until(
            lambda: queue_depth(world.aws, aws.dlq_url)[0] == 1,
            timeout=60,
            what="the oversized job in the DLQ",
        )
        world.send(small_body)
        wait_until(
            lambda: world.rows().get("fits-after", {}).get("processingStatus") == "DONE",
            timeout=60,
            what="the next job to succeed",
        )
        wait_until(lambda: queue_depth(world.aws) == (0, 0), timeout=30, what="an empty queue")
    finally:
        assert worker.stop() == 0
    (message,) = world.drain_dlq()
    attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
    assert attributes["errorReason"] == "scratch_full", attributes
    assert "\n" not in attributes["errorMessage"]
    row = world.rows()["too-big"]
    assert row["processingStatus"] == "FAILED" and "\n" not in str(row["processingError"])
    assert not row.get("leaseOwner")
    assert list(Path(scratch).iterdir()) == [], "the failed job left files in SCRATCH_DIR"
    assert [key for key in world.output_keys() if "/too-big/" in key] == []
    _assert_output_holds_the_contact(world, "fits-after", small_media_files, tmp_path)


def test_worker_survives_a_total_outage(
    aws: AwsEnv,
    proxy: FaultProxy,
    small_media: dict[str, bytes],
    small_media_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Every request to every service reset for a while: the worker keeps polling (one line
    per failed poll, no crash), and once the emulator is reachable again the job finishes."""
    world = hs.World(aws)
    body = _seed_valid(world, small_media, "after-outage")
    # The job's backoff (ChangeMessageVisibility) fails too during the outage: the message then
    # stays hidden for the visibility it was received with — the queue's own, matched here.
    world.set_queue_visibility(6)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = hs.hostile_env(
        aws, scratch, AWS_ENDPOINT_URL=proxy.endpoint, AWS_MAX_ATTEMPTS="2", VISIBILITY_TIMEOUT="6"
    )
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(env, log_path)
    try:

        def count(event: str) -> int:
            return worker.count(event)

        wait_until(lambda: count("worker.ready") > 0, timeout=30, what="the worker ready")
        proxy.set_plan(FaultPlan(reset=1.0))
        world.send(body)

        def failed_polls() -> int:
            return count("poll.failed")

        # Long enough for the job to fail (transient) and for polls to fail repeatedly.
        wait_until(lambda: failed_polls() >= 2, timeout=60, what="two failed polls")
        assert worker.alive(), "the worker died during the outage"
        proxy.set_plan(FaultPlan())
        wait_until(
            lambda: world.rows().get("after-outage", {}).get("processingStatus") == "DONE",
            timeout=90,
            what="the job after the outage",
        )
    finally:
        assert worker.stop() == 0
    events = worker.events()
    failed_polls = [e for e in events if e.get("event") == "poll.failed"]
    assert failed_polls, "a failed poll must be logged"
    assert all("\n" not in str(e.get("error", "")) for e in failed_polls)
    assert "Traceback" not in log_path.read_text()
    _assert_output_holds_the_contact(world, "after-outage", small_media_files, tmp_path)
