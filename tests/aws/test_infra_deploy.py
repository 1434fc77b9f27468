"""infra/template.yaml deployed on moto's CloudFormation (the YAML checks are
tests/unit/test_infra_template.py).

The queue, DLQ and table parameters live in worker/provisioning.py; the worker's settings in
worker/config.py. These tests fail when the template drifts from either, and deploy the
template on moto's CloudFormation (a real moto server over HTTP) to check what it creates.
"""

from __future__ import annotations

import ast
import json
from typing import Any

import boto3
import pytest
import yaml

from tests.harness.infra_helpers import (
    ROOT,
    TEMPLATE_PATH,
    TOPIC,
    load_template,
    resource,
)
from worker import provisioning

REGION = "eu-central-1"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """The template with CloudFormation short tags (!Ref, !Sub...) decoded."""
    return load_template()


# --- alarms reach someone (issue 17) ---------------------------------------------------------


def test_alert_rules_are_deployed_to_amp_from_alerts_yml(template: dict[str, Any]) -> None:
    import subprocess
    import sys

    rules = resource(template, "AlertRules")
    shipped = yaml.safe_load((ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    assert yaml.safe_load(rules["Data"]) == shipped
    check = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "embed-alert-rules"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    # In the workspace the metrics go to: the stack's own or PrometheusWorkspaceId.
    assert rules["Workspace"]["Fn::If"][0] == "CreateMetricsWorkspace"
    alertmanager = resource(template, "MetricsWorkspace")["AlertManagerDefinition"]["Fn::Sub"]
    assert "sns_configs" in alertmanager[0] and alertmanager[1] == {"Topic": TOPIC}


# --- a real deployment on moto's CloudFormation --------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint(moto_server: str) -> str:
    """The session's moto server (harness/fixtures_aws.py); this module uses its own region."""
    return moto_server


def client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


# moto's CloudFormation has no model for these types; it skips them with a warning and
# creates the rest. The static tests above cover their properties.
MOTO_UNSUPPORTED = (
    "AWS::SQS::QueueInlinePolicy",
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
    "AWS::CloudWatch::Alarm",
    "AWS::APS::RuleGroupsNamespace",
    "AWS::Logs::MetricFilter",
    "AWS::SNS::Subscription",
    "AWS::SNS::TopicPolicy",
)
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse .* not supported by moto")


EXTRA_KMS_KEYS = (
    "arn:aws:kms:eu-central-1:123456789012:key/11111111-2222-3333-4444-555555555555",
    "arn:aws:kms:eu-central-1:210987654321:key/66666666-7777-8888-9999-000000000000",
)


@pytest.fixture(scope="module")
def stack(moto_endpoint: str) -> dict[str, Any]:
    """The template deployed on moto; returns the stack description."""
    ec2 = client(moto_endpoint, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    tables = [ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"] for _ in range(2)]
    parameters = {
        # The optional parts on: gateway endpoints, a second KMS key list, listed senders.
        "RouteTableIds": ",".join(tables),
        "ExtraKmsKeyArns": ",".join(EXTRA_KMS_KEYS),
        "AllowedSenderArns": "arn:aws:iam::123456789012:role/backend-producer",
        "ImageTag": "test-1",
        "VpcId": vpc,
        "SubnetIds": subnet,
        "AcAudioBucketName": "connect-audio-test",
        "InputBucketName": "komorebi-input-test",
        "OutputBucketName": "komorebi-output-test",
        "ConnectInstanceAlias": "test-instance",
        "CreateRecordingTable": "true",
        # moto has no AWS::APS::Workspace: use the "existing workspace" branch.
        "PrometheusWorkspaceId": "ws-00000000-0000-0000-0000-000000000000",
    }
    cfn = client(moto_endpoint, "cloudformation")
    cfn.create_stack(
        StackName="komorebi-test",
        TemplateBody=TEMPLATE_PATH.read_text(),
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    described: dict[str, Any] = cfn.describe_stacks(StackName="komorebi-test")["Stacks"][0]
    return described


def outputs(stack: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def test_stack_deploys(stack: dict[str, Any], moto_endpoint: str) -> None:
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    created = {
        r["LogicalResourceId"]: r["ResourceStatus"]
        for r in client(moto_endpoint, "cloudformation").list_stack_resources(
            StackName="komorebi-test"
        )["StackResourceSummaries"]
        # moto lists each skipped (unsupported) resource as an empty summary.
        if r["LogicalResourceId"]
    }
    declared = load_template()["Resources"]
    expected = {
        name
        for name, spec in declared.items()
        # MetricsWorkspace: conditional, not created when a workspace id is given.
        if spec["Type"] not in MOTO_UNSUPPORTED and name != "MetricsWorkspace"
    }
    assert set(created) == expected
    assert {"Service", "TaskDefinition", "TaskRole", "JobQueue"} <= expected
    assert all(status == "CREATE_COMPLETE" for status in created.values())
    assert {"QueueUrl", "DeadLetterQueueUrl", "ServiceName"} <= set(outputs(stack))


def test_deployed_queue_has_provisioning_attributes(
    stack: dict[str, Any], moto_endpoint: str
) -> None:
    sqs = client(moto_endpoint, "sqs")
    queue = sqs.get_queue_attributes(QueueUrl=outputs(stack)["QueueUrl"], AttributeNames=["All"])[
        "Attributes"
    ]
    dlq = sqs.get_queue_attributes(
        QueueUrl=outputs(stack)["DeadLetterQueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    for name, value in provisioning.QUEUE_ATTRIBUTES.items():
        assert queue[name].lower() == value.lower(), name
    for name, value in provisioning.DLQ_ATTRIBUTES.items():
        assert dlq[name].lower() == value.lower(), name
    redrive = json.loads(queue["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == provisioning.QUEUE_MAX_RECEIVE_COUNT
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]


def test_deployed_table(stack: dict[str, Any], moto_endpoint: str) -> None:
    table = client(moto_endpoint, "dynamodb").describe_table(TableName="Recording")["Table"]
    assert table["KeySchema"] == [
        {"AttributeName": provisioning.TABLE_PARTITION_KEY, "KeyType": "HASH"}
    ]
    assert table["BillingModeSummary"]["BillingMode"] == provisioning.TABLE_BILLING_MODE


def test_deployed_task_definition(stack: dict[str, Any], moto_endpoint: str) -> None:
    ecs = client(moto_endpoint, "ecs")
    family = ecs.list_task_definitions()["taskDefinitionArns"][0]
    task = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
    worker = next(c for c in task["containerDefinitions"] if c["name"] == "worker")
    env = {e["name"]: e["value"] for e in worker["environment"]}
    assert env["QUEUE_URL"] == outputs(stack)["QueueUrl"]
    assert env["DLQ_URL"] == outputs(stack)["DeadLetterQueueUrl"]
    assert env["CONNECT_INSTANCE_ALIAS"] == "test-instance"
    assert worker["image"].endswith("/komorebi-worker:test-1")
    assert worker["stopTimeout"] == 120
    assert worker["readonlyRootFilesystem"] is True
    # moto's ECS keeps only some task-level fields (no cpu, ephemeral storage).
    assert task["memory"] == "4096"
    assert task["volumes"][0]["name"] == "scratch"


def test_deployed_task_role_resolves_to_concrete_arns(
    stack: dict[str, Any], moto_endpoint: str
) -> None:
    iam = client(moto_endpoint, "iam")
    role = next(r for r in iam.list_roles()["Roles"] if "TaskRole" in r["RoleName"])
    [name] = iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]
    document = iam.get_role_policy(RoleName=role["RoleName"], PolicyName=name)["PolicyDocument"]
    if isinstance(document, str):
        # moto keeps CloudFormation-created inline policies as a Python repr, not JSON.
        document = ast.literal_eval(document)
    # moto leaves AWS::NoValue in a list as None where CloudFormation drops the element.
    document["Statement"] = [s for s in document["Statement"] if s is not None]
    resources = {
        resource
        for statement in document["Statement"]
        for resource in (
            statement["Resource"]
            if isinstance(statement["Resource"], list)
            else [statement["Resource"]]
        )
    }
    assert "*" not in resources
    assert "arn:aws:s3:::komorebi-output-test/*" in resources
    assert "arn:aws:s3:::connect-audio-test/connect/test-instance/CallRecordings/*" in resources
    queue_arn = client(moto_endpoint, "sqs").get_queue_attributes(
        QueueUrl=outputs(stack)["QueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    assert queue_arn in resources
    # ExtraKmsKeyArns given, BucketKmsKeyArn not: one KMS statement, on exactly those keys,
    # through S3 of the stack's region only.
    kms = [s for s in document["Statement"] if "kms:" in str(s["Action"])]
    assert [s["Sid"] for s in kms] == ["ExtraBucketKmsKeys"]
    assert sorted(kms[0]["Resource"]) == sorted(EXTRA_KMS_KEYS)
    assert kms[0]["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}}


def test_deployed_alarm_topic_is_kms_encrypted(stack: dict[str, Any], moto_endpoint: str) -> None:
    # No AlarmTopicArn given: the stack's own topic, encrypted with the stack's key.
    topic = outputs(stack)["AlarmTopicArn"]
    attributes = client(moto_endpoint, "sns").get_topic_attributes(TopicArn=topic)["Attributes"]
    # (moto keeps a CloudFormation key's policy as a dict and fails DescribeKey on it.)
    keys = {k["KeyId"] for k in client(moto_endpoint, "kms").list_keys()["Keys"]}
    assert attributes["KmsMasterKeyId"] in keys


def test_deployed_gateway_endpoints(stack: dict[str, Any], moto_endpoint: str) -> None:
    """One S3 and one DynamoDB gateway endpoint, each on both given route tables."""
    ec2 = client(moto_endpoint, "ec2")
    resources = client(moto_endpoint, "cloudformation").list_stack_resources(
        StackName="komorebi-test"
    )["StackResourceSummaries"]
    ids = {
        r["PhysicalResourceId"]
        for r in resources
        if r["LogicalResourceId"] in ("S3GatewayEndpoint", "DynamoDbGatewayEndpoint")
    }
    endpoints = ec2.describe_vpc_endpoints(VpcEndpointIds=sorted(ids))["VpcEndpoints"]
    assert sorted(e["ServiceName"] for e in endpoints) == [
        f"com.amazonaws.{REGION}.dynamodb",
        f"com.amazonaws.{REGION}.s3",
    ]
    for endpoint in endpoints:
        assert endpoint["VpcEndpointType"] == "Gateway"
        assert len(endpoint["RouteTableIds"]) == 2
