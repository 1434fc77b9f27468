"""Render and run `aws cloudformation deploy` for infra/template.yaml (Jenkins' Deploy stage).

    python .ci/deploy.py --params infra/params/example.env --image-tag TAG [--dry-run]

The parameter file holds KEY=VALUE lines (comments with #). Every key must be a template
parameter and every parameter without a default must be given, so a typo fails here, in
`make lint`, instead of half-way through a CloudFormation deployment. --dry-run prints the
command instead of running it; `make deploy-dry-run` (part of `make lint`) exercises this path.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "infra" / "template.yaml"


def read_params(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments ignored; ${VAR} expanded from the env."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"deploy: {path}:{number}: expected KEY=VALUE")
        values[key.strip()] = os.path.expandvars(value.strip())
    return values


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that accepts CloudFormation's short tags (!Ref, !Sub...); only Parameters
    are read here, so the tagged values need no interpretation."""


def _tagged(loader: _CfnLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _tagged)


def template_parameters(template: Path) -> dict[str, Any]:
    """The template's Parameters section."""
    loaded = yaml.load(template.read_text(), Loader=_CfnLoader)  # noqa: S506
    parameters: dict[str, Any] = loaded["Parameters"]
    return parameters


def check_params(template: Path, values: dict[str, str]) -> list[str]:
    """Problems with `values` against the template's Parameters (empty list when fine)."""
    declared = template_parameters(template)
    problems = [f"unknown parameter {key}" for key in values if key not in declared]
    problems += [
        f"missing parameter {name} (no default)"
        for name, spec in declared.items()
        if "Default" not in spec and name not in values
    ]
    for name, value in values.items():
        allowed = declared.get(name, {}).get("AllowedValues")
        if allowed is not None and value not in [str(a) for a in allowed]:
            problems.append(f"{name}={value!r}: not one of {', '.join(map(str, allowed))}")
    return problems


def build_command(
    stack: str, region: str, template: Path, values: dict[str, str], tags: dict[str, str]
) -> list[str]:
    """The `aws cloudformation deploy` argument list."""
    command = [
        "aws", "cloudformation", "deploy",
        "--region", region,
        "--stack-name", stack,
        "--template-file", str(template),
        "--capabilities", "CAPABILITY_IAM",
        "--no-fail-on-empty-changeset",
        "--parameter-overrides", *[f"{k}={v}" for k, v in sorted(values.items())],
    ]  # fmt: skip
    if tags:
        command += ["--tags", *[f"{k}={v}" for k, v in sorted(tags.items())]]
    return command


def main(argv: list[str] | None = None) -> int:
    """Validate the parameters, then print or run the deploy command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--image-tag", required=True)
    parser.add_argument("--stack-name", default="komorebi-worker")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "eu-west-1"))
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)

    values = read_params(args.params)
    values["ImageTag"] = args.image_tag
    problems = check_params(args.template, values)
    if problems:
        for problem in problems:
            print(f"deploy: {args.params}: {problem}", file=sys.stderr)
        return 2
    command = build_command(
        args.stack_name, args.region, args.template, values, {"app": "komorebi-worker"}
    )
    if args.dry_run:
        print(shlex.join(command))
        return 0
    os.execvp(command[0], command)  # noqa: S606 - replaces this process with the aws cli


if __name__ == "__main__":
    sys.exit(main())
