"""The pipeline's commands run for real: make dry runs, .ci/deploy.py and the HEALTHCHECK (the
file checks are tests/unit/test_dockerfile.py).

- Dockerfile: pinned base, multi-stage, runtime lock only, non-root, exec-form entry point;
  its HEALTHCHECK (and the task definition's) run here against a real HTTP server.
- Locks: requirements-runtime.lock pins exactly what requirements.lock pins, and holds every
  third-party module the worker imports (no dev tool reaches the image, none is missing).
- Jenkinsfile: every stage runs one Makefile target, run here in dry-run mode; push and
  deploy run on main in any job type; one image repository name and the template's CPU
  architecture flow from the parameter file through build, push, task and IAM; .ci/deploy.py
  rejects a bad or missing parameter file before CloudFormation sees it, and every template
  parameter is documented.

The image itself is built and run by `make test-image` (tests/image/test_image.py).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.infra_helpers import (
    ROOT,
    args_of,
    final_stage,
    load_template,
)
from worker import config

# --- health checks, run for real -------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def dockerfile_healthcheck() -> list[str]:
    [args] = args_of(final_stage(), "HEALTHCHECK")
    command: list[str] = json.loads(args.split(" CMD ", 1)[1])
    return command


def template_healthcheck() -> list[str]:
    worker = next(
        c
        for c in load_template()["Resources"]["TaskDefinition"]["Properties"][
            "ContainerDefinitions"
        ]
        if c["Name"] == "worker"
    )
    command: list[str] = worker["HealthCheck"]["Command"]
    assert command[0] == "CMD"
    return command[1:]


def run_probe(command: list[str], port: int) -> int:
    # The image's `python` is this interpreter's version; the probe uses only the stdlib.
    argv = [sys.executable if command[0] == "python" else command[0], *command[1:]]
    argv = [arg.replace(str(config.DEFAULT_METRICS_PORT), str(port)) for arg in argv]
    env = {**os.environ, "METRICS_PORT": str(port)}
    return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode


@pytest.mark.parametrize("source", [dockerfile_healthcheck, template_healthcheck])
def test_healthcheck_follows_healthz(
    source: object, health_server: tuple[int, type[_Health]]
) -> None:
    command = source()  # type: ignore[operator]
    port, handler = health_server
    handler.status = 200
    assert run_probe(command, port) == 0
    handler.status = 503
    assert run_probe(command, port) != 0


def test_healthcheck_fails_without_a_server() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        assert run_probe(dockerfile_healthcheck(), port) != 0


# --- locks -----------------------------------------------------------------------------------


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match[1].split("[")[0]).lower()] = match[2]
    return found


# --- pipeline --------------------------------------------------------------------------------


def jenkins_stages() -> list[tuple[str, list[str]]]:
    """(stage name, shell commands) in order, from the declarative Jenkinsfile."""
    text = (ROOT / "Jenkinsfile").read_text()
    found = []
    for match in re.finditer(r"stage\('([^']+)'\)\s*\{(.*?)\n        \}", text, re.S):
        found.append((match[1], re.findall(r"\bsh\s+'([^']+)'", match[2])))
    return found


def test_every_jenkins_stage_runs_one_make_target() -> None:
    stages_ = jenkins_stages()
    assert [name for name, _ in stages_] == [
        "Lint", "Test", "Build image", "Push to ECR", "Deploy",
    ]  # fmt: skip
    targets = []
    for name, commands in stages_:
        assert len(commands) == 1 and re.fullmatch(r"make [a-z-]+", commands[0]), name
        targets.append(commands[0].split()[1])
    assert targets == ["lint", "test-suite", "image", "push", "deploy"]
    for target in targets:
        result = make("-n", target, IMAGE_TAG="test-tag")
        assert result.returncode == 0, f"make -n {target}: {result.stderr}"
    deploy = make("-n", "deploy", IMAGE_TAG="test-tag", DEPLOY_ENV="prod").stdout
    assert "--image-tag test-tag" in deploy and "infra/params/prod.env" in deploy


def test_the_pipeline_lints_once_and_tests_what_make_test_tests() -> None:
    """The Lint and Test stages together run each check once: the same commands as `make
    test` (what CI runs), no lint repeated in the Test stage."""

    def commands(target: str) -> list[str]:
        result = make("-n", target, IMAGE_TEST="skip")
        assert result.returncode == 0, result.stderr
        return [line for line in result.stdout.splitlines() if "/bin/" in line]

    stages_ = dict(jenkins_stages())
    lint, tests = (commands(stages_[name][0].split()[1]) for name in ("Lint", "Test"))
    assert [c for c in lint if "ruff check" in c] and [c for c in tests if "pytest" in c]
    assert not [c for c in tests if "ruff" in c or "mypy" in c or "checkov" in c]
    assert sorted(lint + tests) == sorted(commands("test"))


def make(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """``make ARGS VAR=value...`` in the checkout (variables on the command line win)."""
    return subprocess.run(
        ["make", "--no-print-directory", *args, *(f"{k}={v}" for k, v in variables.items())],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def params_file(tmp_path: Path, **changes: str | None) -> Path:
    """example.env with ``changes`` (None removes the parameter)."""
    lines = []
    for line in (ROOT / "infra" / "params" / "example.env").read_text().splitlines():
        key = line.partition("=")[0]
        if key in changes:
            if changes[key] is not None:
                lines.append(f"{key}={changes[key]}")
            continue
        lines.append(line)
    lines += [
        f"{k}={v}" for k, v in changes.items() if v is not None and f"{k}=" not in "\n".join(lines)
    ]
    path = tmp_path / "env.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_deploy_stages_run_in_dry_run_mode_with_one_name_and_one_cpu(tmp_path: Path) -> None:
    # What Jenkins runs, for real but printing instead of calling docker and aws: the
    # environment's ImageRepositoryName and CpuArchitecture decide the build, the push, the
    # stack parameter (and through it the task's image and the execution role's ECR grant).
    params = params_file(tmp_path, ImageRepositoryName="team/komorebi", CpuArchitecture="ARM64")
    for _name, commands in jenkins_stages()[2:]:
        target = commands[0].split()[1]
        result = make(target, DRY_RUN="1", DEPLOY_PARAMS=str(params), IMAGE_TAG="t-1")
        assert result.returncode == 0, f"make {target}: {result.stderr}"
        out = result.stdout
        if target == "image":
            assert "+ docker build --pull --platform linux/arm64 -t team/komorebi:t-1 ." in out
        elif target == "push":
            assert "--repository-name team/komorebi " in out
            assert re.search(
                r"\+ docker push \S+\.dkr\.ecr\.eu-west-1\.amazonaws\.com/team/komorebi:t-1", out
            )
        else:
            command = out.splitlines()[-1].split()  # after make's echo of the recipe
            assert command[:3] == ["aws", "cloudformation", "deploy"]
            assert "ImageRepositoryName=team/komorebi" in command and "ImageTag=t-1" in command
            assert "CpuArchitecture=ARM64" in command
    worker = next(
        c
        for c in load_template()["Resources"]["TaskDefinition"]["Properties"][
            "ContainerDefinitions"
        ]
        if c["Name"] == "worker"
    )
    assert worker["Image"]["Fn::Sub"].endswith("/${ImageRepositoryName}:${ImageTag}")
    template = load_template()["Resources"]["TaskDefinition"]["Properties"]
    assert template["RuntimePlatform"]["CpuArchitecture"] == {"Ref": "CpuArchitecture"}


def test_image_repo_overrides_everything_but_never_disagrees(tmp_path: Path) -> None:
    unnamed = params_file(tmp_path, ImageRepositoryName=None, CpuArchitecture=None)
    outputs = {
        target: make(target, DRY_RUN="1", DEPLOY_PARAMS=str(unnamed), IMAGE_REPO="other",
                     IMAGE_TAG="t-2").stdout
        for target in ("image", "push", "deploy")
    }  # fmt: skip
    assert "--platform linux/amd64 -t other:t-2" in outputs["image"]  # the template's X86_64
    assert "/other:t-2" in outputs["push"]
    assert "ImageRepositoryName=other" in outputs["deploy"].split()
    named = params_file(tmp_path, ImageRepositoryName="team/komorebi")
    refused = make("deploy", DRY_RUN="1", DEPLOY_PARAMS=str(named), IMAGE_REPO="other")
    assert refused.returncode != 0
    assert "ImageRepositoryName=team/komorebi but the image was pushed to other" in refused.stderr


def run_deploy(params: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "deploy.py"), "--params", str(params),
         "--image-tag", "abc123", "--dry-run", *extra],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_deploy_renders_the_example_parameters() -> None:
    result = run_deploy(ROOT / "infra" / "params" / "example.env")
    assert result.returncode == 0, result.stderr
    command = result.stdout.split()
    assert command[:3] == ["aws", "cloudformation", "deploy"]
    assert "ImageTag=abc123" in command
    assert "CAPABILITY_IAM" in command


def test_deploy_rejects_bad_parameter_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.env"
    example = (ROOT / "infra" / "params" / "example.env").read_text()
    bad.write_text(
        example.replace("InputBucketName=", "InputBucketNmae=")
        .replace("TaskCpu=2048", "TaskCpu=3000")
        .replace("TaskMemory=4096", "TaskMemory=1024")
        .replace("EphemeralStorageGiB=50", "EphemeralStorageGiB=500")
        .replace("\nMaxTasks=", "\nMaxTasks=ten\n# was: ")
        .replace("ConnectInstanceAlias=example-instance", "ConnectInstanceAlias=-bad_alias")
        .replace("SubnetIds=subnet-0123456789abcdef0,", "SubnetIds=subnet-0123456789abcdef0,sn-1,")
        .replace("VpcId=vpc-0123456789abcdef0", "VpcId=${KOMOREBI_TEST_UNSET_VPC}")
    )
    result = run_deploy(bad)
    assert result.returncode == 2
    errors = result.stderr.splitlines()
    assert all(line.startswith(f"deploy: {bad}: ") for line in errors)
    text = result.stderr
    assert "unknown parameter InputBucketNmae" in text
    assert "missing parameter InputBucketName" in text
    assert "TaskCpu='3000': not one of" in text  # AllowedValues (Type Number)
    assert "TaskMemory='1024': below MinValue 2048" in text
    assert "EphemeralStorageGiB='500': above MaxValue 200" in text
    assert "MaxTasks='ten': not a number" in text
    assert "ConnectInstanceAlias='-bad_alias': does not match AllowedPattern" in text
    assert "SubnetIds='sn-1': not a valid AWS::EC2::Subnet::Id" in text
    assert "VpcId: environment variable KOMOREBI_TEST_UNSET_VPC is not set" in text
    assert len(errors) == 9
    assert result.stdout == ""


def test_deploy_checks_lengths_and_number_types(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text(
        "Parameters:\n"
        "  Name: {Type: String, MinLength: 3, MaxLength: 5}\n"
        "  Count: {Type: Number, Default: 1, MinValue: 1}\n"
        "  ImageTag: {Type: String}\n"
    )
    for value, problem in (
        ("ab", "shorter than MinLength 3"),
        ("abcdef", "longer than MaxLength 5"),
    ):
        params = tmp_path / "p.env"
        params.write_text(f"Name={value}\nCount=1.5e0\n")
        result = run_deploy(params, "--template", str(template))
        assert result.returncode == 2 and problem in result.stderr, result.stderr
    params.write_text("Name=abcd\nCount=2\n")
    assert run_deploy(params, "--template", str(template)).returncode == 0


def test_a_template_above_the_inline_limit_needs_a_deploy_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEPLOY_TEMPLATE_BUCKET", raising=False)
    # CloudFormation takes 51,200 bytes inline; above that `aws cloudformation deploy` must
    # upload the template to S3 (--s3-bucket), or it fails half-way through the pipeline.
    template = tmp_path / "template.yaml"
    # (What counts is what is sent: the compact JSON, so comments would not make it larger.)
    template.write_text(
        (ROOT / "infra" / "template.yaml").read_text()
        + "  Padding:\n    Value: " + "x" * 60_000 + "\n"  # one more (long) output
    )  # fmt: skip
    example = ROOT / "infra" / "params" / "example.env"
    inline = run_deploy(example, "--template", str(template))
    assert inline.returncode == 2
    assert "set DEPLOY_TEMPLATE_BUCKET" in inline.stderr and "bytes" in inline.stderr
    staged = run_deploy(example, "--template", str(template), "--s3-bucket", "cfn-artifacts")
    assert staged.returncode == 0, staged.stderr
    assert "--s3-bucket cfn-artifacts --s3-prefix cloudformation/komorebi-worker" in staged.stdout
    # The shipped template goes inline as compact JSON (about 20 % smaller than the YAML),
    # or the pipeline provides the bucket.
    deployed = run_deploy(example, "--stack-name", "size-check")
    assert deployed.returncode == 0, deployed.stderr
    sent = ROOT / "build" / "cloudformation" / "size-check.template.json"
    assert f"--template-file {sent}" in deployed.stdout
    if sent.stat().st_size > 51_200:
        assert "DEPLOY_TEMPLATE_BUCKET" in (ROOT / "Jenkinsfile").read_text()
    # The JSON sent is the YAML's content: the same resources, tags in their long form.
    sent_template = json.loads(sent.read_text())
    assert sent_template["Resources"].keys() == load_template()["Resources"].keys()
    assert sent_template == load_template()


def test_a_missing_parameter_file_is_one_clear_line() -> None:
    for command in (("deploy",), ("push",)):
        result = make(*command, DRY_RUN="1", DEPLOY_ENV="no-such-env", IMAGE_TAG="t")
        assert result.returncode != 0
        first = result.stderr.splitlines()[0]
        assert first == (
            "deploy: infra/params/no-such-env.env: no such parameter file "
            "(copy infra/params/example.env to it, see docs/deploy.md)"
        ), result.stderr
        assert "Traceback" not in result.stderr


def test_the_default_environment_has_its_parameter_file() -> None:
    default = re.search(r"^DEPLOY_ENV \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    jenkins = re.search(
        r"name: 'DEPLOY_ENV', defaultValue: '([^']+)'", (ROOT / "Jenkinsfile").read_text()
    )
    assert default is not None and jenkins is not None and default[1] == jenkins[1]
    params = ROOT / "infra" / "params" / f"{default[1]}.env"
    unset = run_deploy(params)
    assert unset.returncode == 2
    names = re.findall(r"environment variable (\w+) is not set", unset.stderr)
    assert names and len(names) == len(unset.stderr.splitlines())
    env = {**os.environ, **dict.fromkeys(names, "x")}
    env.update({n: "vpc-0123456789abcdef0" for n in names if "VPC" in n})
    env.update({n: "subnet-0123456789abcdef0" for n in names if "SUBNET" in n})
    env.update({n: f"staging-{n.lower().replace('_', '-')}" for n in names if "BUCKET" in n})
    done = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "deploy.py"), "--params", str(params),
         "--image-tag", "abc123", "--dry-run"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_every_template_parameter_is_documented() -> None:
    declared = set(load_template()["Parameters"])
    example = (ROOT / "infra" / "params" / "example.env").read_text()
    listed = set(re.findall(r"^#?\s*([A-Za-z0-9]+)=", example, re.M))
    assert declared - listed == set(), "not in infra/params/example.env"
    assert listed - declared == set(), "example.env names parameters the template lacks"
    docs = (ROOT / "docs" / "deploy.md").read_text()
    table = set(re.findall(r"^\| `([A-Za-z0-9]+)` \|", docs, re.M))
    assert declared - table == set(), "not in docs/deploy.md's parameter table"
    assert run_deploy(ROOT / "infra" / "params" / "example.env").returncode == 0
