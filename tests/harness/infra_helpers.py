"""Helpers for the deployment tests: read infra/template.yaml and the other deploy files.

A small CloudFormation YAML reader (short tags such as ``!Ref`` and ``!Sub`` become their
``{"Ref": ...}`` / ``{"Fn::Sub": ...}`` JSON forms), so tests need not import cfn-lint, whose
import alone costs seconds; `make lint` runs cfn-lint itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "infra" / "template.yaml"
DOCKERFILE = ROOT / "Dockerfile"


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that understands CloudFormation's short-form intrinsic functions."""


def _intrinsic(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)  # !GetAtt Res.Attr == Fn::GetAtt [Res, Attr]
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The CloudFormation template as plain dicts and lists."""
    loaded: dict[str, Any] = yaml.load(path.read_text(), Loader=_CfnLoader)
    return loaded


# The alarm topic every operator alarm notifies (created, or an existing one by ARN).
TOPIC = {"Fn::If": ["CreateAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]}


def resource(template: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``Properties`` of resource ``name``."""
    props: dict[str, Any] = template["Resources"][name]["Properties"]
    return props


def container(template: dict[str, Any], name: str) -> dict[str, Any]:
    """The task definition's container named ``name``."""
    for definition in resource(template, "TaskDefinition")["ContainerDefinitions"]:
        if definition["Name"] == name:
            found: dict[str, Any] = definition
            return found
    raise AssertionError(f"no container {name}")


def environment(definition: dict[str, Any]) -> dict[str, Any]:
    """A container definition's environment as a dict."""
    return {item["Name"]: item["Value"] for item in definition["Environment"]}


# --- the Dockerfile ------------------------------------------------------------------------


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, one list per build stage."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def final_stage() -> list[tuple[str, str]]:
    """The runtime stage's instructions."""
    return stages()[-1]


def args_of(stage: list[tuple[str, str]], name: str) -> list[str]:
    """The arguments of every ``name`` instruction of ``stage``."""
    return [args for instruction, args in stage if instruction == name]
