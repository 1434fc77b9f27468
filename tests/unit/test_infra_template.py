"""infra/template.yaml read as YAML: one source of truth with the code (its deployment on moto
is tests/aws/test_infra_deploy.py).

The queue, DLQ and table parameters live in worker/provisioning.py; the worker's settings in
worker/config.py. These tests fail when the template drifts from either, and deploy the
template on moto's CloudFormation (a real moto server over HTTP) to check what it creates.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.harness.infra_helpers import ROOT, TOPIC, container, environment, load_template, resource
from worker import config, provisioning


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """The template with CloudFormation short tags (!Ref, !Sub...) decoded."""
    return load_template()


def cfn_value(value: Any) -> str:
    """A template literal as SQS reports it ('true' for booleans)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


# --- one source of truth: worker/provisioning.py ---------------------------------------------


def test_queue_properties_equal_provisioning(template: dict[str, Any]) -> None:
    queue = resource(template, "JobQueue")
    # SQS attribute names and CloudFormation property names coincide for these attributes.
    assert {k: cfn_value(queue[k]) for k in provisioning.QUEUE_ATTRIBUTES} == dict(
        provisioning.QUEUE_ATTRIBUTES
    )
    assert queue["RedrivePolicy"]["maxReceiveCount"] == provisioning.QUEUE_MAX_RECEIVE_COUNT
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["DeadLetterQueue", "Arn"]
    }
    # Nothing set in the template that provisioning does not also set.
    extra = set(queue) - set(provisioning.QUEUE_ATTRIBUTES) - {"RedrivePolicy"}
    assert not extra, f"JobQueue sets {extra}; add them to worker/provisioning.py too"


def test_dlq_properties_equal_provisioning(template: dict[str, Any]) -> None:
    dlq = resource(template, "DeadLetterQueue")
    assert {k: cfn_value(v) for k, v in dlq.items()} == dict(provisioning.DLQ_ATTRIBUTES)
    assert provisioning.DLQ_MESSAGE_RETENTION_SECONDS == 14 * 24 * 3600  # SQS maximum


def test_table_key_and_billing_equal_provisioning(template: dict[str, Any]) -> None:
    table = resource(template, "RecordingTable")
    assert table["BillingMode"] == provisioning.TABLE_BILLING_MODE
    assert table["KeySchema"] == [
        {"AttributeName": provisioning.TABLE_PARTITION_KEY, "KeyType": "HASH"}
    ]
    assert table["AttributeDefinitions"] == [
        {"AttributeName": provisioning.TABLE_PARTITION_KEY, "AttributeType": "S"}
    ]


# --- the task definition matches the worker's settings ---------------------------------------


def known_env_vars() -> set[str]:
    names = set(config._REQUIRED) | set(config._OPTIONAL) | set(config._AUDIO) | set(config._KEYS)
    # SDK and OS variables the worker relies on without parsing them itself.
    return names | {"AWS_REGION", "TMPDIR"}


def test_worker_environment_is_known_and_complete(template: dict[str, Any]) -> None:
    env = environment(container(template, "worker"))
    unknown = set(env) - known_env_vars()
    assert not unknown, f"the task sets variables the worker never reads: {unknown}"
    missing = set(config._REQUIRED) | {"QUEUE_URL"}
    assert missing <= set(env)
    assert env["VISIBILITY_TIMEOUT"] == str(provisioning.QUEUE_VISIBILITY_TIMEOUT_SECONDS)
    assert env["METRICS_PORT"] == str(config.DEFAULT_METRICS_PORT)


def test_shutdown_fits_fargate_stop_timeout(template: dict[str, Any]) -> None:
    worker = container(template, "worker")
    grace = float(environment(worker)["SHUTDOWN_GRACE_SECONDS"])
    assert worker["StopTimeout"] == 120  # Fargate's maximum
    # In-flight jobs get the grace period, then their messages are released before SIGKILL.
    assert grace == config.Settings.__dataclass_fields__["shutdown_grace_seconds"].default
    assert grace + 10 <= worker["StopTimeout"]


def test_worker_container_hardening(template: dict[str, Any]) -> None:
    worker = container(template, "worker")
    assert worker["Essential"] is True
    assert worker["ReadonlyRootFilesystem"] is True
    assert worker["LinuxParameters"]["InitProcessEnabled"] is True
    uid, gid = (int(part) for part in worker["User"].split(":"))
    assert uid != 0 and gid != 0
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"USER {worker['User']}" in dockerfile
    scratch = environment(worker)["SCRATCH_DIR"]
    assert worker["MountPoints"] == [
        {"SourceVolume": "scratch", "ContainerPath": scratch, "ReadOnly": False}
    ]
    assert resource(template, "TaskDefinition")["Volumes"] == [{"Name": "scratch"}]
    assert f'VOLUME ["{scratch}"]' in dockerfile


def test_health_check_probes_the_metrics_port(template: dict[str, Any]) -> None:
    command = container(template, "worker")["HealthCheck"]["Command"]
    assert command[0] == "CMD"  # exec form: the image has no shell tools to rely on
    assert f"http://127.0.0.1:{config.DEFAULT_METRICS_PORT}/healthz" in command[-1]


def test_ephemeral_storage_parameter(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["EphemeralStorageGiB"]
    assert parameter["MinValue"] == 21 and parameter["MaxValue"] == 200  # Fargate's range
    storage = resource(template, "TaskDefinition")["EphemeralStorage"]
    assert storage == {"SizeInGiB": {"Ref": "EphemeralStorageGiB"}}


def test_metrics_sidecar_scrapes_the_worker(template: dict[str, Any]) -> None:
    sidecar = container(template, "metrics-collector")
    assert sidecar["Essential"] is False  # losing metrics never stops jobs
    assert re.fullmatch(
        r"public\.ecr\.aws/.+:v\d+\.\d+\.\d+",
        template["Parameters"]["AdotCollectorImage"]["Default"],
    )
    body, _ = environment(sidecar)["AOT_CONFIG_CONTENT"]["Fn::Sub"]
    # ${...} are CloudFormation substitutions; replace them to parse the collector config.
    collector = yaml.safe_load(re.sub(r"\$\{[^}]+\}", "x", body))
    scrape = collector["receivers"]["prometheus"]["config"]["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == [f"127.0.0.1:{config.DEFAULT_METRICS_PORT}"]
    pipeline = collector["service"]["pipelines"]["metrics"]
    assert pipeline["exporters"] == ["prometheusremotewrite"]
    exporter = collector["exporters"]["prometheusremotewrite"]
    assert exporter["endpoint"].endswith("api/v1/remote_write")
    assert exporter["auth"]["authenticator"] == "sigv4auth"
    # Each task's series must stay apart: ECS resource attributes become labels.
    assert "ecs" in collector["processors"]["resourcedetection"]["detectors"]
    assert exporter["resource_to_telemetry_conversion"]["enabled"] is True


def test_service_shape(template: dict[str, Any]) -> None:
    service = resource(template, "Service")
    assert "DesiredCount" not in service  # autoscaling owns it; deploys must not reset it
    assert "LoadBalancers" not in service
    breaker = service["DeploymentConfiguration"]["DeploymentCircuitBreaker"]
    assert breaker == {"Enable": True, "Rollback": True}
    providers = {s["CapacityProvider"] for s in service["CapacityProviderStrategy"]}
    assert providers == {"FARGATE", "FARGATE_SPOT"}
    cluster = resource(template, "Cluster")
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["ClusterSettings"]
    assert set(cluster["CapacityProviders"]) == {"FARGATE", "FARGATE_SPOT"}


def test_backlog_per_task_target_tracking(template: dict[str, Any]) -> None:
    policy = resource(template, "BacklogPerTaskScaling")
    config_ = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config_["TargetValue"] == {"Ref": "BacklogPerTaskTarget"}
    metrics = {m["Id"]: m for m in config_["CustomizedMetricSpecification"]["Metrics"]}
    assert metrics["visible"]["MetricStat"]["Metric"]["MetricName"] == (
        "ApproximateNumberOfMessagesVisible"
    )
    # Busy slots count: in flight = not visible (issue 17, docs/capacity.md).
    assert metrics["inflight"]["MetricStat"]["Metric"]["MetricName"] == (
        "ApproximateNumberOfMessagesNotVisible"
    )
    assert metrics["tasks"]["MetricStat"]["Metric"]["MetricName"] == "RunningTaskCount"
    returned = [m for m in metrics.values() if m.get("ReturnData", True)]
    assert [m["Expression"] for m in returned] == ["(visible + inflight) / tasks"]
    target = resource(template, "ScalableTarget")
    assert target["MinCapacity"] == {"Ref": "MinTasks"}
    assert target["MaxCapacity"] == {"Ref": "MaxTasks"}


def test_scale_out_from_zero(template: dict[str, Any]) -> None:
    alarm = resource(template, "MessagesWaitingWithNoTasksScaleAlarm")
    assert alarm["AlarmActions"] == [{"Ref": "ScaleOutFromZero"}]
    expression = next(m["Expression"] for m in alarm["Metrics"] if m.get("ReturnData"))
    assert "FILL(tasks, 0) == 0" in expression
    steps = resource(template, "ScaleOutFromZero")["StepScalingPolicyConfiguration"]
    assert steps["AdjustmentType"] == "ChangeInCapacity"  # never scales in
    assert all(step["ScalingAdjustment"] > 0 for step in steps["StepAdjustments"])


def test_operator_alarms(template: dict[str, Any]) -> None:
    dlq = resource(template, "DeadLetterQueueNotEmptyAlarm")
    assert dlq["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}
    assert dlq["Threshold"] == 0 and dlq["ComparisonOperator"] == "GreaterThanThreshold"
    age = resource(template, "OldestMessageAgeAlarm")
    assert age["MetricName"] == "ApproximateAgeOfOldestMessage"
    stuck = resource(template, "NoTasksWhileMessagesWaitAlarm")
    assert any("tasks" in m.get("Expression", "") for m in stuck["Metrics"])


# --- alarms reach someone (issue 17) ---------------------------------------------------------

# Alarms whose action is a scaling policy, not a notification.
SCALING_ALARMS = {"MessagesWaitingWithNoTasksScaleAlarm"}


def alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: spec["Properties"]
        for name, spec in template["Resources"].items()
        if spec["Type"] == "AWS::CloudWatch::Alarm"
    }


def test_every_alarm_has_actions_and_operator_alarms_notify_the_topic(
    template: dict[str, Any],
) -> None:
    found = alarms(template)
    assert len(found) >= 10
    silent = [name for name, alarm in found.items() if not alarm.get("AlarmActions")]
    assert not silent, f"alarms without AlarmActions: {silent}"
    for name, alarm in found.items():
        if name in SCALING_ALARMS:
            continue
        # The topic on every branch: no condition leaves an operator alarm without it.
        assert alarm["AlarmActions"] == [TOPIC], name
        assert alarm["OKActions"] == [TOPIC], name


def test_the_checker_catches_an_alarm_without_actions(template: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(template))
    del broken["Resources"]["NoInputAlarm"]["Properties"]["AlarmActions"]
    with pytest.raises(AssertionError, match="NoInputAlarm"):
        test_every_alarm_has_actions_and_operator_alarms_notify_the_topic(broken)


def test_alarm_topic_is_created_encrypted_when_none_is_given(template: dict[str, Any]) -> None:
    conditions = template["Conditions"]
    assert conditions["CreateAlarmTopic"] == {"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}
    resources = template["Resources"]
    for name in ("AlarmTopic", "AlarmTopicKey", "AlarmTopicPolicy"):
        assert resources[name]["Condition"] == "CreateAlarmTopic", name
    assert resource(template, "AlarmTopic")["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}
    key = resource(template, "AlarmTopicKey")
    assert key["EnableKeyRotation"] is True
    services = {
        service
        for statement in key["KeyPolicy"]["Statement"]
        for service in statement["Principal"].get("Service", [])
    }
    # CloudWatch alarms and AMP's Alertmanager must encrypt to the topic, or nothing arrives.
    assert services == {"cloudwatch.amazonaws.com", "aps.amazonaws.com"}
    publishers = {
        statement["Principal"]["Service"]
        for statement in resource(template, "AlarmTopicPolicy")["PolicyDocument"]["Statement"]
        if "sns:Publish" in statement["Action"]
    }
    assert publishers == {"cloudwatch.amazonaws.com", "aps.amazonaws.com"}
    email = resources["AlarmEmailSubscription"]
    assert email["Condition"] == "HasAlarmEmail"
    assert email["Properties"]["TopicArn"] == TOPIC
    assert email["Properties"]["Protocol"] == "email"
    assert template["Outputs"]["AlarmTopicArn"]["Value"] == TOPIC


def test_dlq_retention_alarm_leaves_days_to_redrive(template: dict[str, Any]) -> None:
    alarm = resource(template, "DeadLetterQueueNearRetentionAlarm")
    assert alarm["MetricName"] == "ApproximateAgeOfOldestMessage"
    assert alarm["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}
    retention = provisioning.DLQ_MESSAGE_RETENTION_SECONDS
    assert resource(template, "DeadLetterQueue")["MessageRetentionPeriod"] == retention
    assert alarm["Threshold"] == retention * 10 // 14  # 10 of 14 days: 4 days left
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def returned_expression(alarm: dict[str, Any]) -> Any:
    (expression,) = [m["Expression"] for m in alarm["Metrics"] if m.get("ReturnData")]
    return expression


def test_capacity_memory_storage_and_input_alarms(template: dict[str, Any]) -> None:
    at_max = resource(template, "TasksAtMaxAlarm")
    assert returned_expression(at_max) == {
        "Fn::Sub": "IF(FILL(tasks, 0) >= ${MaxTasks} AND visible > 0, 1, 0)"
    }
    assert at_max["EvaluationPeriods"] == at_max["DatapointsToAlarm"] == 6  # 30 min
    memory = resource(template, "TaskMemoryHighAlarm")
    assert (memory["Namespace"], memory["MetricName"], memory["Statistic"]) == (
        "AWS/ECS",
        "MemoryUtilization",
        "Maximum",  # the fullest task's
    )
    storage = resource(template, "EphemeralStorageHighAlarm")
    names = {m["MetricStat"]["Metric"]["MetricName"] for m in storage["Metrics"][:2]}
    assert names == {"EphemeralStorageUtilized", "EphemeralStorageReserved"}
    assert returned_expression(storage) == "100 * utilized / reserved"
    quiet = resource(template, "NoInputAlarm")
    assert (quiet["MetricName"], quiet["Statistic"], quiet["Period"]) == (
        "NumberOfMessagesSent",
        "Sum",
        3600,
    )
    assert quiet["ComparisonOperator"] == "LessThanOrEqualToThreshold" and quiet["Threshold"] == 0
    assert quiet["TreatMissingData"] == "breaching"  # an idle queue stops reporting


def test_job_failure_alarm_rolls_back_deployments(template: dict[str, Any]) -> None:
    service = resource(template, "Service")
    assert service["DeploymentConfiguration"]["Alarms"] == {
        "AlarmNames": [{"Ref": "JobFailureAlarm"}],
        "Enable": True,
        "Rollback": True,
    }
    alarm = resource(template, "JobFailureAlarm")
    metrics = {m["MetricStat"]["Metric"]["MetricName"] for m in alarm["Metrics"][:2]}
    filters = {
        resource(template, name)["MetricTransformations"][0]["MetricName"]: resource(
            template, name
        )["FilterPattern"]
        for name in ("JobFailuresMetricFilter", "JobSuccessesMetricFilter")
    }
    assert metrics == set(filters)
    # The patterns name the worker's real log events and reason codes.
    settlement = (ROOT / "worker" / "settlement.py").read_text()
    errors = (ROOT / "worker" / "errors.py").read_text()
    for pattern in filters.values():
        for event in re.findall(r'\$\.event = "([^"]+)"', pattern):
            assert f'"{event}"' in settlement, event
        for reason in re.findall(r'\$\.reason != "([^"]+)"', pattern):
            assert f'reason = "{reason}"' in errors, reason
    assert "job.dead_lettered" in filters["JobFailures"]
    assert filters["JobSuccesses"] == '{ $.event = "job.succeeded" }'


def test_gateway_endpoints_only_with_route_tables(template: dict[str, Any]) -> None:
    """S3 and DynamoDB gateway endpoints on the given route tables, created only when some are
    given (an empty RouteTableIds creates nothing)."""
    assert template["Conditions"]["HasRouteTables"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "RouteTableIds"}]}, ""]}]
    }
    assert template["Parameters"]["RouteTableIds"]["Default"] == ""
    for name, service in (("S3GatewayEndpoint", "s3"), ("DynamoDbGatewayEndpoint", "dynamodb")):
        assert template["Resources"][name]["Condition"] == "HasRouteTables"
        endpoint = resource(template, name)
        assert endpoint["VpcEndpointType"] == "Gateway"
        assert endpoint["ServiceName"] == {"Fn::Sub": f"com.amazonaws.${{AWS::Region}}.{service}"}
        assert endpoint["RouteTableIds"] == {"Ref": "RouteTableIds"}
        assert endpoint["VpcId"] == {"Ref": "VpcId"}


def test_queue_senders_restricted_only_when_listed(template: dict[str, Any]) -> None:
    """With AllowedSenderArns, the job queue's one policy allows SendMessage to them and denies
    it to every other principal; without, only the TLS rule is left."""
    statements = resource(template, "JobQueueTlsOnly")["PolicyDocument"]["Statement"]
    assert statements[0]["Sid"] == "DenyInsecureTransport"
    conditional = [s["Fn::If"] for s in statements[1:]]
    assert all(c[0] == "HasAllowedSenders" and c[2] == {"Ref": "AWS::NoValue"} for c in conditional)
    allow, deny = (c[1] for c in conditional)
    senders = {"Ref": "AllowedSenderArns"}
    assert (allow["Effect"], allow["Action"], allow["Principal"]) == (
        "Allow",
        "sqs:SendMessage",
        {"AWS": senders},
    )
    assert (deny["Effect"], deny["Action"], deny["Principal"]) == ("Deny", "sqs:SendMessage", "*")
    assert deny["Condition"] == {"ArnNotLike": {"aws:PrincipalArn": senders}}
    assert allow["Resource"] == deny["Resource"] == {"Fn::GetAtt": ["JobQueue", "Arn"]}


def test_outputs(template: dict[str, Any]) -> None:
    assert {"QueueUrl", "DeadLetterQueueUrl", "ServiceName"} <= set(template["Outputs"])
