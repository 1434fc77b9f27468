"""``provision``, ``enqueue`` and ``redrive`` as an operator runs them: the real console script
in a subprocess, against the moto server over HTTP."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3

from tests.harness.cli import assert_one_line_error, run_cli
from tests.harness.fixtures_aws import AwsEnv, aws_base_env
from tests.harness.fixtures_dlq import drain
from tests.harness.ports import free_port
from tests.harness.worker_harness import queue_depth
from worker.redrive import DEAD_LETTER_ATTRIBUTES

# --- provision -------------------------------------------------------------------------------


def test_provision_creates_everything_and_is_idempotent(moto_server: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    env = {
        **aws_base_env(moto_server),
        "QUEUE_URL": f"{moto_server}/123456789012/cli-jobs-{suffix}",
        "AC_AUDIO_BUCKET_NAME": f"cli-connect-{suffix}",
        "INPUT_BUCKET_NAME": f"cli-input-{suffix}",
        "OUTPUT_BUCKET_NAME": f"cli-output-{suffix}",
        "RECORDING_TABLE_NAME": f"cli-Recording-{suffix}",
        "CONNECT_INSTANCE_ALIAS": "demo",
    }
    first = run_cli("provision", env=env)
    assert first.returncode == 0, first.stderr
    lines = dict(line.split(": ", 1) for line in first.stdout.splitlines() if ": " in line)
    assert lines["queue"].endswith(f"/cli-jobs-{suffix}")
    assert lines["dlq"].endswith(f"/cli-jobs-{suffix}-dlq")
    assert lines["table"] == f"cli-Recording-{suffix}"
    buckets = [
        line.split(": ", 1)[1] for line in first.stdout.splitlines() if line.startswith("bucket: ")
    ]
    assert sorted(buckets) == sorted(
        [f"cli-connect-{suffix}", f"cli-input-{suffix}", f"cli-output-{suffix}"]
    )

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    sqs = session.client("sqs", endpoint_url=moto_server)
    policy = json.loads(
        sqs.get_queue_attributes(QueueUrl=lines["queue"], AttributeNames=["RedrivePolicy"])[
            "Attributes"
        ]["RedrivePolicy"]
    )
    assert policy["deadLetterTargetArn"].endswith(f":cli-jobs-{suffix}-dlq")
    s3_names = {
        b["Name"] for b in session.client("s3", endpoint_url=moto_server).list_buckets()["Buckets"]
    }
    assert set(buckets) <= s3_names
    session.client("dynamodb", endpoint_url=moto_server).describe_table(TableName=lines["table"])

    second = run_cli("provision", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_provision_without_configuration_exits_2_with_one_line_per_problem(
    moto_server: str,
) -> None:
    result = run_cli("provision", env=aws_base_env(moto_server))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4
    assert all(line.startswith("komorebi-worker: configuration: ") for line in lines)
    assert any("AC_AUDIO_BUCKET_NAME" in line for line in lines)
    assert "Traceback" not in result.stderr


# --- enqueue ---------------------------------------------------------------------------------


def test_enqueue_sends_the_lambda_message(aws: AwsEnv) -> None:
    result = run_cli(
        "enqueue",
        "7165d412-7fe0-4fb6-81ae-68b135a26f7c",
        "00:01:05.5",
        "--connect-audio-key",
        "connect/x/CallRecordings/2026/11/28/abc_20261128T01:02_UTC.wav",
        env=aws.env,
    )
    assert result.returncode == 0, result.stderr
    message_id = result.stdout.strip()
    [message] = drain(aws.client("sqs"), aws.queue_url)
    assert message["MessageId"] == message_id
    assert json.loads(message["Body"]) == {
        "recordingID": "7165d412-7fe0-4fb6-81ae-68b135a26f7c",
        "callEndingTimestamp": "00:01:05.500",
        "connectAudioKey": "connect/x/CallRecordings/2026/11/28/abc_20261128T01:02_UTC.wav",
    }


def test_enqueue_accepts_plain_seconds(aws: AwsEnv) -> None:
    result = run_cli("enqueue", "rec_1", "14", env=aws.env)
    assert result.returncode == 0, result.stderr
    [message] = drain(aws.client("sqs"), aws.queue_url)
    assert json.loads(message["Body"]) == {
        "recordingID": "rec_1",
        "callEndingTimestamp": "00:00:14",
    }


def test_enqueue_rejects_bad_input_with_exit_2_and_sends_nothing(aws: AwsEnv) -> None:
    line = assert_one_line_error(run_cli("enqueue", "../etc/passwd", "00:00:05", env=aws.env), 2)
    assert "RECORDING_ID" in line
    line = assert_one_line_error(run_cli("enqueue", "abc", "soon", env=aws.env), 2)
    assert "CALL_END" in line
    line = assert_one_line_error(run_cli("enqueue", "abc", "-3", env=aws.env), 2)
    assert "CALL_END" in line
    line = assert_one_line_error(
        run_cli("enqueue", "abc", "5", "--connect-audio-key", "k" * 2000, env=aws.env), 2
    )
    assert "connectAudioKey" in line
    assert sum(queue_depth(aws, aws.queue_url)) == 0


def test_enqueue_without_queue_url_exits_2(aws: AwsEnv) -> None:
    env = {k: v for k, v in aws.env.items() if k != "QUEUE_URL"}
    line = assert_one_line_error(run_cli("enqueue", "abc", "5", env=env), 2)
    assert "QUEUE_URL" in line


def test_enqueue_with_unreachable_endpoint_exits_1(aws: AwsEnv) -> None:
    env = {**aws.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    line = assert_one_line_error(run_cli("enqueue", "abc", "5", env=env), 1)
    assert "SendMessage" in line


def test_usage_error_exits_2(aws: AwsEnv) -> None:
    result = run_cli("enqueue", "abc", env=aws.env)
    assert result.returncode == 2


# --- redrive ---------------------------------------------------------------------------------


def _dead_letter(sqs: Any, dlq_url: str, count: int) -> list[str]:
    bodies = []
    for index in range(count):
        body = json.dumps({"recordingID": f"rec-{index}", "callEndingTimestamp": index})
        bodies.append(body)
        sqs.send_message(
            QueueUrl=dlq_url,
            MessageBody=body,
            MessageAttributes={
                "errorClass": {"DataType": "String", "StringValue": "ConnectAudioNotReady"},
                "errorReason": {"DataType": "String", "StringValue": "connect_audio_not_ready"},
                "errorMessage": {"DataType": "String", "StringValue": "no audio yet"},
                "receiveCount": {"DataType": "Number", "StringValue": "8"},
                "originalMessageId": {"DataType": "String", "StringValue": str(uuid.uuid4())},
                "failedAt": {"DataType": "String", "StringValue": "2026-11-28T01:00:00Z"},
                "producer": {"DataType": "String", "StringValue": "backend"},
            },
        )
    return bodies


def test_redrive_moves_everything_back_with_original_bodies(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    bodies = _dead_letter(sqs, aws.dlq_url, 13)  # more than one batch of 10
    # No DLQ_URL: the target comes from the queue's RedrivePolicy.
    env = {k: v for k, v in aws.env.items() if k != "DLQ_URL"}
    result = run_cli("redrive", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("moved 13 message(s)")
    assert sum(queue_depth(aws, aws.dlq_url)) == 0
    moved = drain(sqs, aws.queue_url)
    assert sorted(message["Body"] for message in moved) == sorted(bodies)
    for message in moved:
        attributes = message.get("MessageAttributes", {})
        assert not DEAD_LETTER_ATTRIBUTES & set(attributes)
        assert attributes["producer"]["StringValue"] == "backend"


def test_redrive_max_messages(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    _dead_letter(sqs, aws.dlq_url, 5)
    result = run_cli("redrive", "--max-messages", "3", env=aws.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("moved 3 message(s)")
    assert len(drain(sqs, aws.queue_url)) == 3


def test_redrive_empty_dlq_moves_nothing(aws: AwsEnv) -> None:
    result = run_cli("redrive", env=aws.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("moved 0 message(s)")


def test_redrive_bad_arguments_exit_2(aws: AwsEnv) -> None:
    assert_one_line_error(run_cli("redrive", "--max-messages", "0", env=aws.env), 2)
    env = {k: v for k, v in aws.env.items() if k != "QUEUE_URL"}
    assert_one_line_error(run_cli("redrive", env=env), 2)
    line = assert_one_line_error(run_cli("redrive", env={**aws.env, "DLQ_URL": aws.queue_url}), 2)
    assert "same queue" in line


class _FaultySqs:
    """The real boto3 SQS client on the emulator, with chosen answers replaced (the faults
    moto cannot produce: per-entry DeleteMessageBatch failures, a malformed RedrivePolicy)."""

    def __init__(
        self,
        real: Any,
        *,
        undeletable: set[str] | None = None,
        failures_per_message: int | None = None,
        redrive_policy: str | None = None,
    ) -> None:
        self._real = real
        self._undeletable = undeletable or set()  # bodies whose DLQ copy cannot be deleted
        self._failures_left: dict[str, int] = {}
        self._failures_per_message = failures_per_message  # None: fails every time
        self._redrive_policy = redrive_policy
        self._bodies: dict[str, str] = {}  # receipt handle -> body
        self.sent_bodies: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_queue_attributes(self, **kwargs: Any) -> Any:
        if self._redrive_policy is not None and "RedrivePolicy" in kwargs["AttributeNames"]:
            return {"Attributes": {"RedrivePolicy": self._redrive_policy}}
        return self._real.get_queue_attributes(**kwargs)

    def receive_message(self, **kwargs: Any) -> Any:
        response = self._real.receive_message(**kwargs)
        for message in response.get("Messages", []):
            self._bodies[message["ReceiptHandle"]] = message["Body"]
        return response

    def send_message_batch(self, **kwargs: Any) -> Any:
        self.sent_bodies += [entry["MessageBody"] for entry in kwargs["Entries"]]
        return self._real.send_message_batch(**kwargs)

    def delete_message_batch(self, **kwargs: Any) -> Any:
        entries = []
        for entry in kwargs["Entries"]:
            body = self._bodies.get(entry["ReceiptHandle"], "")
            if body in self._undeletable and self._should_fail(body):
                entry = {**entry, "ReceiptHandle": "garbage"}  # SQS answers with a Failed entry
            entries.append(entry)
        return self._real.delete_message_batch(**{**kwargs, "Entries": entries})

    def _should_fail(self, body: str) -> bool:
        if self._failures_per_message is None:
            return True
        left = self._failures_left.setdefault(body, self._failures_per_message)
        self._failures_left[body] = left - 1
        return left > 0


def test_redrive_retries_a_failed_delete_and_sends_nothing_twice(
    aws: AwsEnv, monkeypatch: Any
) -> None:
    from worker.redrive import redrive

    sqs = aws.client("sqs")
    bodies = _dead_letter(sqs, aws.dlq_url, 4)
    faulty = _FaultySqs(sqs, undeletable={bodies[1]}, failures_per_message=1)
    result = redrive(aws.queue_url, aws.dlq_url, sqs=faulty, delete_retry_seconds=0.01)
    assert (result.moved, result.failed, result.not_deleted) == (4, 0, [])
    assert sum(queue_depth(aws, aws.dlq_url)) == 0  # the failed delete was retried
    assert sorted(faulty.sent_bodies) == sorted(bodies)
    assert sum(queue_depth(aws, aws.queue_url)) == 4


def test_redrive_does_not_count_or_resend_a_message_it_could_not_delete(
    aws: AwsEnv, monkeypatch: Any
) -> None:
    from worker.redrive import redrive

    # The scan holds what it read for 1 s only, so the DLQ copy could come back within the
    # run: it must not be sent a second time, neither by this run nor by the next one.
    sqs = aws.client("sqs")
    bodies = _dead_letter(sqs, aws.dlq_url, 3)
    faulty = _FaultySqs(sqs, undeletable={bodies[0]})
    result = redrive(
        aws.queue_url, aws.dlq_url, sqs=faulty, hold_seconds=1, delete_retry_seconds=0.01
    )
    assert (result.moved, result.failed, len(result.not_deleted)) == (2, 0, 1)
    assert sorted(faulty.sent_bodies) == sorted(bodies)  # each sent once
    assert sum(queue_depth(aws, aws.queue_url)) == 3
    again = redrive(aws.queue_url, aws.dlq_url, sqs=_FaultySqs(sqs))
    assert (again.moved, again.failed) == (0, 0)  # hidden: not sent again
    assert sum(queue_depth(aws, aws.queue_url)) == 3


def test_redrive_with_a_malformed_redrive_policy_exits_2_with_one_line(
    aws: AwsEnv, monkeypatch: Any, capsys: Any
) -> None:
    from worker import admin, cli

    monkeypatch.setenv("QUEUE_URL", aws.queue_url)
    monkeypatch.delenv("DLQ_URL", raising=False)
    for policy in ("{not json", '{"maxReceiveCount": 3}', '{"deadLetterTargetArn": "nope"}'):
        faulty = _FaultySqs(aws.client("sqs"), redrive_policy=policy)
        monkeypatch.setattr(admin, "sqs_client", lambda faulty=faulty: faulty)
        assert cli.main(["redrive"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("komorebi-worker: "), lines
        assert "RedrivePolicy" in lines[0] or "dead-letter target" in lines[0]
