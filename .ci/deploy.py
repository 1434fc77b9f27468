"""Render and run `aws cloudformation deploy` for infra/template.yaml (Jenkins' Deploy stage).

    python .ci/deploy.py --params infra/params/example.env --image-tag TAG
        [--image-repository REPO] [--dry-run]
    python .ci/deploy.py --params FILE --get NAME [--lenient]

The parameter file holds KEY=VALUE lines (comments with #, ${VAR} expanded from the
environment). It is checked against the template the way CloudFormation would check it:
unknown keys, missing required parameters, Type (Number, AWS::EC2 ids, lists),
AllowedValues, AllowedPattern, MinValue/MaxValue and MinLength/MaxLength, so a typo fails
here, in `make lint`, instead of half-way through a deployment. --dry-run prints the command
instead of running it; `make pipeline-dry-run` (part of `make lint`) exercises this path.

--get prints one parameter's effective value (the file's, else the template's default): the
Makefile takes the image repository (ImageRepositoryName) and the image platform
(CpuArchitecture) from here, so push, task and IAM use one name and the image is built for
the CPU the tasks run on. --lenient: a missing file means the template's defaults.
--image-repository passes the Makefile's IMAGE_REPO as ImageRepositoryName (and refuses a
file that names another repository).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "infra" / "template.yaml"
# CloudFormation takes a template inline up to this many bytes; a larger one must go through
# S3, which `aws cloudformation deploy --s3-bucket` does (DEPLOY_TEMPLATE_BUCKET).
INLINE_TEMPLATE_LIMIT = 51_200
# Where the template is rendered as it is sent (build/ is ignored by git).
PACKAGED_DIR = Path(__file__).resolve().parent.parent / "build" / "cloudformation"


class ParamsError(Exception):
    """The parameter file cannot be used (one line, shown as ``deploy: <file>: <reason>``)."""


def read_params(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments ignored; ${VAR} expanded from the env."""
    if not path.is_file():
        raise ParamsError(
            "no such parameter file (copy infra/params/example.env to it, see docs/deploy.md)"
        )
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"line {number}: expected KEY=VALUE")
        values[key.strip()] = os.path.expandvars(value.strip())
    return values


_UNSET_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
# CloudFormation's AWS-specific parameter types this template uses, as the console checks them.
_AWS_ID_PATTERNS = {
    "AWS::EC2::VPC::Id": re.compile(r"vpc-[0-9a-f]{8}(?:[0-9a-f]{9})?"),
    "AWS::EC2::Subnet::Id": re.compile(r"subnet-[0-9a-f]{8}(?:[0-9a-f]{9})?"),
}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _check_value(name: str, spec: dict[str, Any], value: str) -> list[str]:
    """Problems of one parameter value against its declaration (empty list when fine)."""
    unset = _UNSET_VARIABLE.findall(value)
    if unset:
        return [f"{name}: environment variable {', '.join(unset)} is not set"]
    kind = str(spec.get("Type", "String"))
    problems: list[str] = []
    if kind == "Number":
        number = _number(value)
        if number is None:
            return [f"{name}={value!r}: not a number"]
        if "MinValue" in spec and number < float(spec["MinValue"]):
            problems.append(f"{name}={value!r}: below MinValue {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            problems.append(f"{name}={value!r}: above MaxValue {spec['MaxValue']}")
        allowed = spec.get("AllowedValues")
        if allowed is not None and number not in [float(a) for a in allowed]:
            problems.append(f"{name}={value!r}: not one of {', '.join(map(str, allowed))}")
        return problems
    items = [value]
    if kind.startswith("List<") or kind == "CommaDelimitedList":
        items = [item.strip() for item in value.split(",")]
        kind = kind[5:-1] if kind.startswith("List<") else "String"
    for item in items:
        pattern = _AWS_ID_PATTERNS.get(kind)
        if pattern is not None and not pattern.fullmatch(item):
            problems.append(f"{name}={item!r}: not a valid {kind}")
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(a) for a in allowed]:
        problems.append(f"{name}={value!r}: not one of {', '.join(map(str, allowed))}")
    if "AllowedPattern" in spec and not re.fullmatch(str(spec["AllowedPattern"]), value):
        problems.append(f"{name}={value!r}: does not match AllowedPattern {spec['AllowedPattern']}")
    if "MinLength" in spec and len(value) < int(spec["MinLength"]):
        problems.append(f"{name}={value!r}: shorter than MinLength {spec['MinLength']}")
    if "MaxLength" in spec and len(value) > int(spec["MaxLength"]):
        problems.append(f"{name}={value!r}: longer than MaxLength {spec['MaxLength']}")
    return problems


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that accepts CloudFormation's short tags (!Ref, !Sub...) as one-key
    mappings; callers interpret only the ones they need (``Ref`` of a parameter)."""


def _tagged(loader: _CfnLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _tagged)


def load_template(template: Path) -> dict[str, Any]:
    """The whole template; a short tag becomes a one-key mapping, e.g. ``{"Ref": "MaxTasks"}``
    (bench/capacity reads the scaling resources through this)."""
    loaded: dict[str, Any] = yaml.load(template.read_text(), Loader=_CfnLoader)  # noqa: S506
    return loaded


def template_parameters(template: Path) -> dict[str, Any]:
    """The template's Parameters section."""
    parameters: dict[str, Any] = load_template(template)["Parameters"]
    return parameters


def check_params(template: Path, values: dict[str, str]) -> list[str]:
    """Problems with `values` against the template's Parameters (empty list when fine)."""
    declared = template_parameters(template)
    problems = [f"unknown parameter {key}" for key in values if key not in declared]
    problems += [
        f"missing parameter {name} (no default)"
        for name, spec in declared.items()
        if "Default" not in spec and not values.get(name)
    ]
    for name, value in values.items():
        spec = declared.get(name)
        if spec is not None and (value or "Default" in spec):  # empty + required: missing
            problems += _check_value(name, spec, value)
    return problems


def effective_value(template: Path, values: dict[str, str], name: str) -> str:
    """The value CloudFormation would use for ``name``: the file's, else the default."""
    declared = template_parameters(template)
    if name not in declared:
        raise ParamsError(f"{name} is not a parameter of {template.name}")
    if name in values:
        return values[name]
    if "Default" in declared[name]:
        return str(declared[name]["Default"])
    raise ParamsError(f"missing parameter {name} (no default)")


def package_template(template: Path, destination: Path) -> Path:
    """``template`` as CloudFormation receives it: compact JSON, short tags (``!Sub``) in
    their long form, comments and layout dropped. The YAML stays the readable source; what
    is sent is about 20 % smaller, which keeps it under the inline limit (cfn-lint's decoder
    is the one that lints the template, so what is checked is what is sent)."""
    from cfnlint.decode import decode_str

    decoded, problems = decode_str(template.read_text())
    if decoded is None or problems:
        raise ParamsError(f"{template.name} does not parse: {problems[0] if problems else ''}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(json.dumps(decoded, separators=(",", ":")))
    return destination


def build_command(
    stack: str,
    region: str,
    template: Path,
    values: dict[str, str],
    tags: dict[str, str],
    s3_bucket: str | None = None,
) -> list[str]:
    """The `aws cloudformation deploy` argument list (uploading the template to ``s3_bucket``
    when given)."""
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
    if s3_bucket:
        command += ["--s3-bucket", s3_bucket, "--s3-prefix", f"cloudformation/{stack}"]
    return command


def main(argv: list[str] | None = None) -> int:
    """Validate the parameters, then print or run the deploy command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--image-tag")
    parser.add_argument(
        "--image-repository", help="ImageRepositoryName (the Makefile's IMAGE_REPO)"
    )
    parser.add_argument("--stack-name", default="komorebi-worker")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "eu-west-1"))
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument(
        "--s3-bucket",
        default=os.environ.get("DEPLOY_TEMPLATE_BUCKET") or None,
        help="upload the template there first (needed above 51,200 bytes; "
        "default: $DEPLOY_TEMPLATE_BUCKET)",
    )
    parser.add_argument("--get", metavar="NAME", help="print one parameter's effective value")
    parser.add_argument("--lenient", action="store_true", help="with --get: no file = defaults")
    args = parser.parse_args(argv)

    try:
        if args.get:
            lenient = args.lenient and not args.params.exists()
            values = {} if lenient else read_params(args.params)
            print(effective_value(args.template, values, args.get))
            return 0
        if not args.image_tag:
            parser.error("--image-tag is required")
        values = read_params(args.params)
    except ParamsError as error:
        print(f"deploy: {args.params}: {error}", file=sys.stderr)
        return 2
    values["ImageTag"] = args.image_tag
    problems = []
    if args.image_repository:
        named = values.get("ImageRepositoryName")
        if named and named != args.image_repository:
            problems.append(
                f"ImageRepositoryName={named} but the image was pushed to "
                f"{args.image_repository} (IMAGE_REPO): use one name"
            )
        values["ImageRepositoryName"] = args.image_repository
    problems += check_params(args.template, values)
    try:
        packaged = package_template(
            args.template, PACKAGED_DIR / f"{args.stack_name}.template.json"
        )
    except ParamsError as error:
        print(f"deploy: {error}", file=sys.stderr)
        return 2
    size = packaged.stat().st_size
    if size > INLINE_TEMPLATE_LIMIT and not args.s3_bucket:
        problems.append(
            f"{args.template.name} is {size} bytes as compact JSON, more than the "
            f"{INLINE_TEMPLATE_LIMIT} CloudFormation takes inline: set DEPLOY_TEMPLATE_BUCKET "
            "to an S3 bucket to upload it to"
        )
    if problems:
        for problem in problems:
            print(f"deploy: {args.params}: {problem}", file=sys.stderr)
        return 2
    command = build_command(
        args.stack_name,
        args.region,
        packaged,
        values,
        {"app": "komorebi-worker"},
        args.s3_bucket,
    )
    if args.dry_run:
        print(shlex.join(command))
        return 0
    os.execvp(command[0], command)  # noqa: S606 - replaces this process with the aws cli


if __name__ == "__main__":
    sys.exit(main())
