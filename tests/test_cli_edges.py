"""``provision``, ``enqueue`` and ``redrive`` as an operator runs them: the real console script
in a subprocess, against the moto server over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3

from tests.fixtures_aws import AwsEnv, aws_base_env, free_port
from worker.admin import DEAD_LETTER_ATTRIBUTES

SCRIPT = Path(sys.executable).with_name("komorebi-worker")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": "/usr/bin:/bin", "AWS_MAX_ATTEMPTS": "1", **env}
    return subprocess.run(
        [str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=60
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("komorebi-worker: ")
    return lines[0]


def drain(sqs: Any, queue_url: str, expected: int) -> list[dict[str, Any]]:
    """Receive (and delete) messages until ``expected`` arrived or the queue looks empty."""
    messages: list[dict[str, Any]] = []
    while len(messages) < expected:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            break
        for message in batch:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        messages.extend(batch)
    return messages


def queue_depth(sqs: Any, queue_url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


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
    [message] = drain(aws.client("sqs"), aws.queue_url, 1)
    assert message["MessageId"] == message_id
    assert json.loads(message["Body"]) == {
        "recordingID": "7165d412-7fe0-4fb6-81ae-68b135a26f7c",
        "callEndingTimestamp": "00:01:05.500",
        "connectAudioKey": "connect/x/CallRecordings/2026/11/28/abc_20261128T01:02_UTC.wav",
    }


def test_enqueue_accepts_plain_seconds(aws: AwsEnv) -> None:
    result = run_cli("enqueue", "rec_1", "14", env=aws.env)
    assert result.returncode == 0, result.stderr
    [message] = drain(aws.client("sqs"), aws.queue_url, 1)
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
    assert queue_depth(aws.client("sqs"), aws.queue_url) == 0


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
    assert result.stdout.startswith("moved 13 message(s)")
    assert queue_depth(sqs, aws.dlq_url) == 0
    moved = drain(sqs, aws.queue_url, 13)
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
    assert result.stdout.startswith("moved 3 message(s)")
    assert len(drain(sqs, aws.queue_url, 5)) == 3


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
