"""Property: every message ends deleted or dead-lettered with a reason (issue 16, item 6).

Hypothesis generates message bodies (arbitrary JSON with lone surrogates, huge numbers and
nested junk; raw text; valid-looking jobs whose ``connectAudioKey`` is the contact's own,
another contact's or junk) and rows (absent, complete, partial, DONE, leased by another
worker), and optionally a fault that escapes the handler before or after its outcome is
carried out. Each example runs through the real path, in process, on moto: SendMessage,
ReceiveMessage, :meth:`worker.delivery.Delivery.handle` (parse, row read, custody check,
lease, HEAD, decide, settle), then checks SQS, the DLQ and the row:

- the job queue is empty again (nothing left in flight for SQS's redrive to move silently);
- the DLQ holds exactly one copy with ``errorReason``/``errorClass``/``originalMessageId``,
  or none, and then the recording is DONE (a duplicate acknowledged without work);
- a valid id whose row exists ends with a final status (FAILED, or DONE which is never
  overwritten; a row another live worker leases keeps its status unless the lease wait ran
  out); no row is ever created;
- every log line is JSON, and an escape is one ``job.handler_failed`` line with the ids.

The queue's ``maxReceiveCount`` is 1, so every receive is the last: a transient failure is
dead-lettered (``retries_exhausted``) at once instead of coming back later. The parser-level
properties (thousands of bodies, no AWS) run first and take milliseconds per example.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.harness.fixtures_aws import AIO_SESSION, CONNECT_ALIAS, AwsEnv
from tests.harness.worker_harness import (
    get_row,
    json_events,
    queue_depth,
    set_max_receive_count,
    settings_for,
    with_fresh_queues,
)
from worker import delivery as delivery_module
from worker.aws import open_clients
from worker.custody import connect_key_problem
from worker.delivery import Delivery
from worker.errors import InvalidMessage
from worker.job import JobDeps
from worker.messages import parse_message, recording_id_of
from worker.observability import configure_logging
from worker.protection import TaskProtector
from worker.queue import JobQueue, sqs_safe
from worker.recordings import RecordingTable
from worker.storage import ObjectStore

# Deterministic in CI (the same examples every run); a local run explores new ones.
PROFILE = settings(
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PARSER_EXAMPLES = 300
# Each handled example is ~15 calls to moto (about 0.1 s on an idle machine): 60 by default
# keeps the suite's share small; KOMOREBI_PROPERTY_EXAMPLES=1000 explores more.
HANDLED_EXAMPLES = int(os.environ.get("KOMOREBI_PROPERTY_EXAMPLES", "60"))

ID = "@ID@"  # replaced by the example's unique recording id (rows must not leak across them)
OTHER_ID = "0a9d3e11-77c4-4b2a-8f6e-5d1c0b7a9e33"
DAY = "2026/11/27"
CREATED = "2026-11-27 23:50:00"

# --- strategies --------------------------------------------------------------------------------

surrogates = st.integers(0xD800, 0xDFFF).map(chr)
hostile_text = st.lists(st.one_of(st.characters(), surrogates), max_size=12).map("".join)
huge_numbers = st.sampled_from([10**400, -(10**4000), 1e308, 2**64, 0.1 + 0.2])
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_numbers,
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)
    ),
    max_leaves=12,
)
call_ends = st.one_of(
    st.sampled_from([1, 1.0, "00:00:01", "00:00:01.000", "1"]), json_scalars, json_values
)


def _connect_key(recording_id: str, day: str = DAY, alias: str = CONNECT_ALIAS) -> str:
    return f"connect/{alias}/CallRecordings/{day}/{recording_id}_20261127T23:50_UTC.wav"


connect_keys = st.one_of(
    st.just(_connect_key(ID)),  # the contact's own (valid; the object is absent)
    st.sampled_from(
        [
            _connect_key(OTHER_ID),  # another contact, same day
            _connect_key(ID, day="2026/11/20"),  # another day
            _connect_key(ID, alias="other-instance"),  # another instance
            _connect_key(ID + "0"),  # an id that merely starts with ours
            f"connect/{CONNECT_ALIAS}/CallRecordings/{DAY}/{ID}/../{OTHER_ID}.wav",
            "../../../../etc/passwd",
            "\ud800",
            "k" * 1025,
        ]
    ),
    hostile_text,
    json_values,
)
valid_looking = st.fixed_dictionaries(
    {
        "recordingID": st.one_of(st.just(ID), st.just(ID), json_scalars),
        "callEndingTimestamp": call_ends,
    },
    optional={"connectAudioKey": connect_keys, "extra": json_values},
).map(json.dumps)
bodies = st.one_of(
    valid_looking,
    json_values.map(json.dumps),
    # Raw text as SQS can carry it (XML characters), such as truncated JSON or digit runs.
    st.one_of(
        st.text(min_size=1), st.sampled_from(["{", "[" * 5000, "1" * 5000, '{"recordingID"'])
    ).filter(lambda text: sqs_safe(text) == text and text.strip() != ""),
)


@dataclass(frozen=True)
class RowSpec:
    """A Recording row to seed (None: no row)."""

    attributes: dict[str, Any] | None

    @property
    def done(self) -> bool:
        """The row says DONE: nothing may overwrite it."""
        return bool(self.attributes) and self.attributes.get("processingStatus") == {"S": "DONE"}

    @property
    def leased_by_another(self) -> bool:
        """Another live worker holds its lease: a failure must not interrupt it."""
        return bool(self.attributes) and "leaseOwner" in self.attributes


row_attributes = st.fixed_dictionaries(
    {},
    optional={
        "agentID": st.sampled_from([{"S": "agent-7"}, {"S": "../../etc"}, {"S": ""}, {"N": "7"}]),
        "creationDate": st.sampled_from(
            [{"S": CREATED}, {"S": "2026-11-27T23:50:00+01:00"}, {"S": "27/11/2026"}, {"S": " "}]
        ),
        "processingStatus": st.sampled_from([{"S": "FAILED"}, {"S": "PROCESSING"}, {"S": "?"}]),
        "isProcessed": st.sampled_from([{"BOOL": False}, {"N": "1"}, {"S": "yes"}]),
        "callEndSeconds": st.sampled_from([{"N": "1"}, {"N": "2.5"}, {"S": "x"}]),
    },
)
COMPLETE = RowSpec({"agentID": {"S": "agent-7"}, "creationDate": {"S": CREATED}})
DONE = RowSpec(
    {
        "agentID": {"S": "agent-7"},
        "creationDate": {"S": CREATED},
        "processingStatus": {"S": "DONE"},
        "isProcessed": {"BOOL": True},
        "callEndSeconds": {"N": "1"},
        "videoKey": {"S": "2026/11/27/agent-7/x/recording.mp4"},
    }
)
complete_row = st.just(COMPLETE.attributes)
done_row = st.just(DONE.attributes)
leased_row = complete_row.map(
    lambda row: {
        **row,
        "leaseOwner": {"S": "another-worker/1"},
        "leaseExpiresAt": {"N": str(int(time.time()) + 3600)},
    }
)
rows = st.one_of(st.none(), complete_row, complete_row, done_row, leased_row, row_attributes).map(
    RowSpec
)
faults = st.one_of(
    st.none(),
    st.tuples(
        st.sampled_from(["before_settling", "after_settling"]),
        st.sampled_from(
            [
                UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
                KeyError("recordingID"),
                RuntimeError("GET https://b/k?X-Amz-Signature=abc \udc80"),
                ZeroDivisionError("division by zero"),
            ]
        ),
    ),
)


# --- parser level (no AWS) ---------------------------------------------------------------------


@settings(PROFILE, max_examples=PARSER_EXAMPLES)
@given(body=st.one_of(bodies, hostile_text, st.text()))
def test_reading_a_message_never_escapes(body: str) -> None:
    """parse_message returns a job or raises InvalidMessage with one encodable line;
    recording_id_of never raises."""
    body = body.replace(ID, "rec-1")
    try:
        job = parse_message(body)
    except InvalidMessage as error:
        text = str(error)
        assert text and "\n" not in text and len(text) <= 300
        text.encode()
    else:
        assert job.recording_id == recording_id_of(body)
        if job.connect_audio_key is not None:
            job.connect_audio_key.encode()
            problem = connect_key_problem(job.connect_audio_key, job.recording_id, ("connect/",))
            assert problem is None or "\n" not in problem


# --- through the handler, on moto --------------------------------------------------------------


class FaultyProtector(TaskProtector):
    """The real no-op protector whose ``job_finished`` raises a chosen error: an escape
    *after* the message's outcome was carried out."""

    fault: BaseException | None = None

    async def job_finished(self) -> None:
        await super().job_finished()
        if self.fault is not None:
            raise self.fault


@contextmanager
def escaping_before_settling(error: BaseException | None) -> Iterator[None]:
    """``job_in_flight`` (entered before the job and its settling) raises ``error``."""
    if error is None:
        yield
        return

    @contextmanager
    def exploding() -> Iterator[None]:
        raise error
        yield  # pragma: no cover

    original = delivery_module.job_in_flight
    delivery_module.job_in_flight = exploding  # type: ignore[assignment]
    try:
        yield
    finally:
        delivery_module.job_in_flight = original


@dataclass
class Rig:
    """One queue pair, the worker's clients and a Delivery, kept open across examples."""

    aws: AwsEnv
    portal: BlockingPortal
    delivery: Delivery
    protector: FaultyProtector
    log: io.StringIO
    ids: Iterator[int]


@pytest.fixture(scope="module")
def rig(world: AwsEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """A fresh queue (maxReceiveCount 1) and DLQ, clients opened once, logs captured."""
    aws = with_fresh_queues(world)
    set_max_receive_count(aws, 1)
    scratch = tmp_path_factory.mktemp("property-scratch")
    config = settings_for(aws, scratch)
    log = io.StringIO()
    configure_logging("INFO", "json", log)
    protector = FaultyProtector(None, 60)
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(open_clients(config, session=AIO_SESSION)) as clients,
    ):
        queue = JobQueue(clients.sqs, aws.queue_url, aws.dlq_url)
        portal.call(queue.check)
        assert queue.max_receive_count == 1
        table = RecordingTable(clients.dynamodb, aws.table_name)
        store = ObjectStore(clients.s3, scratch_max_bytes=config.scratch_max_bytes)
        deps = JobDeps(settings=config, table=table, store=store, worker_id="property")
        delivery = Delivery(config, deps, queue, protector)
        yield Rig(aws, portal, delivery, protector, log, itertools.count())


JOB = json.dumps({"recordingID": ID, "callEndingTimestamp": 1})


@settings(PROFILE, max_examples=HANDLED_EXAMPLES)
@given(body=bodies, row=rows, fault=faults)
# The crash, a foreign key, a duplicate, and one escape on each side of settling,
# every run whatever Hypothesis draws.
@example(body=JOB[:-1] + ', "connectAudioKey": "\\ud800"}', row=COMPLETE, fault=None)
@example(
    body=JOB[:-1] + f', "connectAudioKey": "{_connect_key(OTHER_ID)}"}}', row=COMPLETE, fault=None
)
@example(body=JOB, row=DONE, fault=None)
@example(
    body=JOB,
    row=COMPLETE,
    fault=("before_settling", UnicodeEncodeError("utf-8", "\ud800", 0, 1, "x")),
)
@example(body=JOB, row=DONE, fault=("after_settling", KeyError("x")))
def test_every_message_ends_deleted_or_dead_lettered_with_a_reason(
    rig: Rig, body: str, row: RowSpec, fault: tuple[str, BaseException] | None
) -> None:
    aws = rig.aws
    rid = f"prop-{os.getpid()}-{next(rig.ids)}"
    body = body.replace(ID, rid)
    if row.attributes is not None:
        item = {"videoID": {"S": rid}, **row.attributes}
        aws.client("dynamodb").put_item(TableName=aws.table_name, Item=item)
    before = get_row(aws, rid) if row.attributes is not None else {}
    message_id = aws.client("sqs").send_message(QueueUrl=aws.queue_url, MessageBody=body)[
        "MessageId"
    ]
    received = rig.portal.call(rig.delivery.queue.receive, 1, 0)
    assert [m.message_id for m in received] == [message_id]
    where, error = fault if fault else (None, None)
    rig.protector.fault = error if where == "after_settling" else None
    rig.log.seek(0)
    rig.log.truncate()
    with escaping_before_settling(error if where == "before_settling" else None):
        rig.portal.call(rig.delivery.handle, received[0], time.monotonic())

    # The queue is empty: deleted (after a DLQ copy, or as a duplicate), nothing in flight.
    assert queue_depth(aws) == (0, 0), "the message was left in the queue"
    dead = (
        aws.client("sqs")
        .receive_message(
            QueueUrl=aws.dlq_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            MessageAttributeNames=["All"],
        )
        .get("Messages", [])
    )
    for copy in dead:
        aws.client("sqs").delete_message(QueueUrl=aws.dlq_url, ReceiptHandle=copy["ReceiptHandle"])
    row_after = get_row(aws, rid)
    valid_id = recording_id_of(body) == rid
    if dead:
        assert len(dead) == 1 and dead[0]["Body"] == body
        attributes = {k: v["StringValue"] for k, v in dead[0]["MessageAttributes"].items()}
        assert attributes["originalMessageId"] == message_id
        assert attributes["errorReason"] and attributes["errorClass"], attributes
        assert "\n" not in attributes.get("errorMessage", "")
        if where == "before_settling":
            assert attributes["errorReason"] == "unexpected"
            assert attributes["errorClass"] == type(error).__name__
    else:
        # Deleted without a DLQ copy: only a duplicate of a DONE recording may end so.
        assert valid_id and row.done and row_after.get("processingStatus") == "DONE"

    # The row: never created; DONE never overwritten; otherwise a final status.
    if row.attributes is None or not valid_id:
        assert row_after == before
    elif row.done:
        assert row_after.get("processingStatus") == "DONE"
        assert row_after.get("videoKey") == before.get("videoKey")
    elif row.leased_by_another:
        assert row_after.get("processingStatus") in (before.get("processingStatus"), "FAILED")
    else:
        assert row_after.get("processingStatus") == "FAILED", (body, row, row_after)
        assert "\n" not in str(row_after.get("processingError", ""))

    # Logs: JSON lines only; an escape is one line with the ids.
    text = rig.log.getvalue()
    events = json_events(text)
    assert len(events) == len(text.splitlines()), "a log line is not JSON"
    if error is not None:
        failed = [e for e in events if e.get("event") == "job.handler_failed"]
        assert len(failed) == 1 and failed[0]["message_id"] == message_id
        assert failed[0]["error_type"] == type(error).__name__
        assert failed[0]["settled"] is (where == "after_settling")
        if valid_id:
            assert failed[0]["recording_id"] == rid
