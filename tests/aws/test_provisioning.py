"""``provision`` creates what the worker needs, with the parameters defined once."""

from __future__ import annotations

import json

from tests.harness.fixtures_aws import AwsEnv, provision_world
from worker import provisioning


def test_queue_has_redrive_policy_and_shared_parameters(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=aws.queue_url, AttributeNames=["All"])[
        "Attributes"
    ]
    redrive = json.loads(attributes["RedrivePolicy"])
    dlq_arn = sqs.get_queue_attributes(QueueUrl=aws.dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    assert redrive["deadLetterTargetArn"] == dlq_arn
    assert int(redrive["maxReceiveCount"]) == provisioning.QUEUE_MAX_RECEIVE_COUNT
    for name, value in provisioning.QUEUE_ATTRIBUTES.items():
        assert attributes[name] == value, name
    dlq = sqs.get_queue_attributes(QueueUrl=aws.dlq_url, AttributeNames=["All"])["Attributes"]
    assert dlq["MessageRetentionPeriod"] == str(provisioning.DLQ_MESSAGE_RETENTION_SECONDS)


def test_buckets_and_table_exist(aws: AwsEnv) -> None:
    names = {b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]}
    assert {aws.ac_audio_bucket, aws.input_bucket, aws.output_bucket} <= names
    table = aws.client("dynamodb").describe_table(TableName=aws.table_name)["Table"]
    assert table["KeySchema"] == [
        {"AttributeName": provisioning.TABLE_PARTITION_KEY, "KeyType": "HASH"}
    ]


def test_provision_is_idempotent(moto_server: str) -> None:
    first = provision_world(moto_server, suffix="idempotent")
    second = provision_world(moto_server, suffix="idempotent")
    assert first.queue_url == second.queue_url
    assert first.dlq_url == second.dlq_url
