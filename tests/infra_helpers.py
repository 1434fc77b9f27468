"""Helpers for the deployment tests: read infra/template.yaml and the other deploy files.

A small CloudFormation YAML reader (short tags such as ``!Ref`` and ``!Sub`` become their
``{"Ref": ...}`` / ``{"Fn::Sub": ...}`` JSON forms), so tests need not import cfn-lint, whose
import alone costs seconds; `make lint` runs cfn-lint itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = ROOT / "infra" / "template.yaml"


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
