"""Least privilege in infra/template.yaml: no `*` actions, no `*` resources where an ARN is known.

Every Allow statement of every role is checked. The only wildcard resources are listed in
ALLOWED_WILDCARDS with the reason each cannot be narrower; the task role's permissions are
pinned exactly, so adding one is a deliberate edit of this file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.infra_helpers import load_template

# (action, how the resource ends) -> why the wildcard is unavoidable. s3:ListBucket needs no
# entry: its resource is a bucket ARN (on the Connect bucket narrowed by an s3:prefix
# condition, tested below; on the input bucket it makes a missing key a 404, not a 403).
ALLOWED_WILDCARDS: dict[tuple[str, str], str] = {
    ("ecr:GetAuthorizationToken", "*"): (
        "GetAuthorizationToken has no resource-level permissions; '*' is the only valid form"
    ),
    ("ecs:UpdateTaskProtection", "task/${Cluster}/*"): (
        "the task protects itself; task ids exist only at run time, so the cluster's tasks"
    ),
    ("ecs:DescribeTasks", "task/${Cluster}/*"): (
        "the task reads its own group (service name); task ids exist only at run time"
    ),
    ("ecs:DescribeServices", "service/${Cluster}/*"): (
        "the service's ARN in the task role would be a dependency cycle (Service -> "
        "TaskDefinition -> TaskRole); the stack's own cluster holds only the worker's service"
    ),
    ("s3:GetObject", "${InputBucketName}/*"): (
        "object keys start with the date ({yyyy}/{mm}/{dd}/...): the whole input bucket"
    ),
    ("s3:GetObject", "connect/${ConnectInstanceAlias}/CallRecordings/*"): (
        "the Connect recordings of this instance only"
    ),
    ("s3:PutObject", "${OutputBucketName}/*"): "outputs are written under dated keys",
    ("s3:AbortMultipartUpload", "${OutputBucketName}/*"): "clean-up of failed multipart puts",
}

# The task role's permissions, exactly: action -> the resource it must be limited to.
TASK_ROLE: dict[str, set[str]] = {
    "s3:GetObject": {
        "arn:${AWS::Partition}:s3:::${InputBucketName}/*",
        "arn:${AWS::Partition}:s3:::${AcAudioBucketName}/connect/${ConnectInstanceAlias}"
        "/CallRecordings/*",
    },
    "s3:ListBucket": {
        "arn:${AWS::Partition}:s3:::${AcAudioBucketName}",
        "arn:${AWS::Partition}:s3:::${InputBucketName}",
    },
    "s3:PutObject": {"arn:${AWS::Partition}:s3:::${OutputBucketName}/*"},
    "s3:AbortMultipartUpload": {"arn:${AWS::Partition}:s3:::${OutputBucketName}/*"},
    "dynamodb:GetItem": {
        "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/"
        "${RecordingTableName}"
    },
    "dynamodb:UpdateItem": {
        "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/"
        "${RecordingTableName}"
    },
    "sqs:ReceiveMessage": {"JobQueue.Arn"},
    "sqs:DeleteMessage": {"JobQueue.Arn"},
    "sqs:ChangeMessageVisibility": {"JobQueue.Arn"},
    "sqs:GetQueueAttributes": {"JobQueue.Arn", "DeadLetterQueue.Arn"},
    "sqs:GetQueueUrl": {"JobQueue.Arn", "DeadLetterQueue.Arn"},
    "sqs:SendMessage": {"DeadLetterQueue.Arn"},
    "ecs:UpdateTaskProtection": {
        "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task/${Cluster}/*"
    },
    "ecs:DescribeTasks": {
        "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task/${Cluster}/*"
    },
    "ecs:DescribeServices": {
        "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:service/${Cluster}/*"
    },
    "aps:RemoteWrite": {
        "MetricsWorkspace.Arn",
        "arn:${AWS::Partition}:aps:${AWS::Region}:${AWS::AccountId}:workspace/"
        "${PrometheusWorkspaceId}",
    },
    "kms:Decrypt": {"Ref:BucketKmsKeyArn", "Ref:ExtraKmsKeyArns"},
    "kms:GenerateDataKey": {"Ref:BucketKmsKeyArn", "Ref:ExtraKmsKeyArns"},
}


def render(value: Any) -> list[str]:
    """A resource value as readable strings; both branches of Fn::If."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in render(item)]
    if "Fn::Sub" in value:
        body = value["Fn::Sub"]
        return [body if isinstance(body, str) else body[0]]
    if "Fn::GetAtt" in value:
        return [".".join(value["Fn::GetAtt"])]
    if "Ref" in value:
        return [f"Ref:{value['Ref']}"]
    if "Fn::If" in value:
        return [text for branch in value["Fn::If"][1:] for text in render(branch)]
    raise AssertionError(f"unexpected resource form {value}")


def statements(policy: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Statements of a policy document, both branches of a conditional statement."""
    for statement in policy["Statement"]:
        if "Fn::If" in statement:
            for branch in statement["Fn::If"][1:]:
                if branch != {"Ref": "AWS::NoValue"}:
                    yield branch
        else:
            yield statement


def role_statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    props = template["Resources"][role]["Properties"]
    return [s for p in props.get("Policies", []) for s in statements(p["PolicyDocument"])]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def violations(statement: dict[str, Any]) -> list[str]:
    """Over-broad parts of one Allow statement (empty when it is least privilege)."""
    if statement.get("Effect") != "Allow":
        return []
    problems = []
    actions = as_list(statement.get("Action", []))
    if "NotAction" in statement or "NotResource" in statement:
        problems.append("NotAction/NotResource grant everything else")
    for action in actions:
        if "*" in action or "?" in action:
            problems.append(f"wildcard action {action}")
    for resource in render(statement.get("Resource", [])):
        if "*" not in resource:
            continue
        for action in actions:
            if not any(
                allowed_action == action and (resource == pattern or resource.endswith(pattern))
                for allowed_action, pattern in ALLOWED_WILDCARDS
            ):
                problems.append(f"wildcard resource {resource} for {action}")
    return problems


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def all_roles(template: dict[str, Any]) -> list[str]:
    return [n for n, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role"]


def test_only_the_expected_iam_resources(template: dict[str, Any]) -> None:
    kinds = {r["Type"] for r in template["Resources"].values() if r["Type"].startswith("AWS::IAM")}
    # Inline policies only: no managed policies (AWS-managed ones are broader than needed).
    assert kinds == {"AWS::IAM::Role"}
    assert sorted(all_roles(template)) == ["ExecutionRole", "TaskRole"]
    for role in all_roles(template):
        assert "ManagedPolicyArns" not in template["Resources"][role]["Properties"]


@pytest.mark.parametrize("role", ["ExecutionRole", "TaskRole"])
def test_no_wildcards_beyond_the_documented_ones(template: dict[str, Any], role: str) -> None:
    problems = [p for s in role_statements(template, role) for p in violations(s)]
    assert not problems, f"{role}: {problems}"


@pytest.mark.parametrize("role", ["ExecutionRole", "TaskRole"])
def test_roles_trust_only_ecs_tasks_of_this_account(template: dict[str, Any], role: str) -> None:
    trust = template["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]
    [statement] = trust["Statement"]
    assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_task_role_has_exactly_the_needed_permissions(template: dict[str, Any]) -> None:
    granted: dict[str, set[str]] = {}
    for statement in role_statements(template, "TaskRole"):
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            granted.setdefault(action, set()).update(render(statement["Resource"]))
    assert granted == TASK_ROLE


def test_list_bucket_is_limited_by_prefix(template: dict[str, Any]) -> None:
    [listing] = [
        s
        for s in role_statements(template, "TaskRole")
        if "s3:ListBucket" in as_list(s["Action"])
        and render(s["Resource"]) == ["arn:${AWS::Partition}:s3:::${AcAudioBucketName}"]
    ]
    prefix = listing["Condition"]["StringLike"]["s3:prefix"]
    assert render(prefix) == ["connect/${ConnectInstanceAlias}/CallRecordings/*"]


def test_kms_keys_are_usable_only_through_s3(template: dict[str, Any]) -> None:
    """Every KMS grant (BucketKmsKeyArn, ExtraKmsKeyArns) carries kms:ViaService = S3 of the
    stack's region: the role cannot decrypt with those keys directly, only S3 on its behalf."""
    kms = [
        s
        for s in role_statements(template, "TaskRole")
        if any(a.startswith("kms:") for a in as_list(s["Action"]))
    ]
    assert sorted(render(s["Resource"])[0] for s in kms) == [
        "Ref:BucketKmsKeyArn",
        "Ref:ExtraKmsKeyArns",
    ]
    for statement in kms:
        via = statement["Condition"]["StringEquals"]["kms:ViaService"]
        assert render(via) == ["s3.${AWS::Region}.amazonaws.com"], statement
    conditions = template["Conditions"]
    assert "HasBucketKmsKey" in conditions and "HasExtraKmsKeys" in conditions


def test_execution_role_only_pulls_and_logs(template: dict[str, Any]) -> None:
    actions = {a for s in role_statements(template, "ExecutionRole") for a in as_list(s["Action"])}
    assert actions == {
        "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    pulls = [
        s for s in role_statements(template, "ExecutionRole") if s["Sid"] == "EcrPullWorkerImage"
    ]
    assert render(pulls[0]["Resource"]) == [
        "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/"
        "${ImageRepositoryName}"
    ]


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ({"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"}, "wildcard action"),
        ({"Effect": "Allow", "Action": "*", "Resource": "*"}, "wildcard action"),
        ({"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}, "wildcard resource"),
        (
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::*/*"},
            "wildcard resource",
        ),
        (
            {"Effect": "Allow", "Action": ["ecr:GetAuthorizationToken", "s3:GetObject"],
             "Resource": "*"},
            "wildcard resource",
        ),
        (
            {"Effect": "Allow", "Action": "s3:GetObject",
             "Resource": "arn:aws:s3:::${InputBucketName}/*"},
            None,
        ),
        ({"Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:x"}, "NotAction"),
        ({"Effect": "Deny", "Action": "*", "Resource": "*"}, None),
    ],
)  # fmt: skip
def test_the_checker_catches_over_broad_statements(
    statement: dict[str, Any], expected: str | None
) -> None:
    """The checker itself can fail: over-broad statements are reported."""
    found = violations(statement)
    if expected is None:
        assert found == []
    else:
        assert any(expected in problem for problem in found), found
