"""The image recipe and the pipeline around it, checked without a Docker engine.

- Dockerfile: pinned base, multi-stage, runtime lock only, non-root, exec-form entry point;
  its HEALTHCHECK (and the task definition's) run here against a real HTTP server.
- Locks: requirements-runtime.lock pins exactly what requirements.lock pins, and holds every
  third-party module the worker imports (no dev tool reaches the image, none is missing).
- Jenkinsfile: every stage runs one Makefile target, which exists (`make -n`), and
  .ci/deploy.py rejects a bad parameter file before CloudFormation sees it.
"""

from __future__ import annotations

import ast
import http.server
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra_helpers import ROOT, load_template
from worker import config

DOCKERFILE = ROOT / "Dockerfile"


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
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def args_of(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [args for instruction, args in stage if instruction == name]


def test_base_image_pinned_and_multi_stage() -> None:
    bases = [args.split()[0] for args in args_of(instructions(), "FROM")]
    assert len(bases) >= 2
    assert len(set(bases)) == 1, "the runtime stage must use the build stage's interpreter"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", bases[0])


def test_runtime_stage_is_small_and_hardened() -> None:
    stage = final_stage()
    runs = " ".join(args_of(stage, "RUN"))
    assert "apt-get install -y --no-install-recommends ffmpeg" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs
    for compiler in ("gcc", "g++", "build-essential", "make ", "python3-dev"):
        assert compiler not in runs
    # Only the virtualenv comes from the build stage; no source tree, no pip cache.
    assert args_of(stage, "COPY") == ["--from=build /opt/venv /opt/venv"]
    [user] = args_of(stage, "USER")
    uid, gid = (int(part) for part in user.split(":"))
    assert uid >= 1000 and gid >= 1000
    assert json.loads(args_of(stage, "ENTRYPOINT")[0]) == ["komorebi-worker"]
    assert json.loads(args_of(stage, "CMD")[0]) == ["run"]


def test_scratch_volume_is_owned_by_the_worker() -> None:
    stage = final_stage()
    env = " ".join(args_of(stage, "ENV"))
    assert "SCRATCH_DIR=/scratch" in env
    assert f"METRICS_PORT={config.DEFAULT_METRICS_PORT}" in env
    [volume] = args_of(stage, "VOLUME")
    assert json.loads(volume) == ["/scratch"]
    user = args_of(stage, "USER")[0]
    names = [name for name, _ in stage]
    chown = next(
        i for i, (n, a) in enumerate(stage) if n == "RUN" and f"chown {user} /scratch" in a
    )
    # Docker/Fargate copy the directory's ownership into the volume only if set before VOLUME.
    assert chown < names.index("VOLUME")


def test_build_installs_only_the_runtime_lock() -> None:
    build = stages()[0]
    copies = " ".join(args_of(build, "COPY"))
    assert "requirements-runtime.lock" in copies
    assert "requirements.lock" not in copies.replace("requirements-runtime.lock", "")
    runs = " ".join(args_of(build, "RUN"))
    assert "--no-deps -r requirements-runtime.lock" in runs
    assert "--no-deps ." in runs


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # deny by default: no .venv, .git, tests or media in the context
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for args in args_of(stages()[0], "COPY"):
        copied.update(part.rstrip("/") for part in args.split()[:-1] if not part.startswith("--"))
    assert copied == admitted
    for path in copied:
        assert (ROOT / path).exists(), path


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


def test_runtime_lock_agrees_with_the_full_lock() -> None:
    runtime = pins(ROOT / "requirements-runtime.lock")
    full = pins(ROOT / "requirements.lock")
    assert runtime, "empty runtime lock"
    disagree = {n: (v, full.get(n)) for n, v in runtime.items() if full.get(n) != v}
    assert not disagree, f"runtime vs full lock: {disagree} (run `make lock`)"
    # numpy is a runtime dependency (worker/sync.py); scipy and matplotlib stay out.
    for dev_tool in ("pytest", "moto", "ruff", "mypy", "checkov", "cfn-lint", "matplotlib"):
        assert dev_tool not in runtime
    assert "scipy" not in runtime and "numpy" in runtime


def test_runtime_lock_has_every_project_dependency() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = pins(ROOT / "requirements-runtime.lock")
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in runtime, requirement


# Modules that the image does not need to import: `komorebi-worker dev` runs the embedded
# AWS emulator (moto), a development tool kept out of the production image.
DEV_ONLY_MODULES = {"devenv.py"}


def module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_worker_imports_are_runtime_dependencies() -> None:
    """A third-party import outside the runtime lock would crash the image at start."""
    runtime = set(pins(ROOT / "requirements-runtime.lock"))
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for path in sorted((ROOT / "worker").glob("*.py")):
        if path.name in DEV_ONLY_MODULES:
            continue
        for module in module_level_imports(path):
            if module in sys.stdlib_module_names or module in {"worker", "__future__"}:
                continue
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [])}
            if not dists & runtime:
                missing[f"{path.name}: {module}"] = sorted(dists)
    assert not missing, f"not in requirements-runtime.lock (add to pyproject): {missing}"


def test_cli_does_not_import_dev_only_modules_at_start() -> None:
    for path in (ROOT / "worker").glob("*.py"):
        if path.name in DEV_ONLY_MODULES:
            continue
        imported = ast.parse(path.read_text()).body
        for node in imported:
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[-1] + ".py" not in DEV_ONLY_MODULES, path.name
                for alias in node.names:
                    assert alias.name + ".py" not in DEV_ONLY_MODULES, path.name


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
    assert targets == ["lint", "test", "image", "push", "deploy"]
    for target in targets:
        result = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "IMAGE_TAG": "test-tag"},
        )  # fmt: skip
        assert result.returncode == 0, f"make -n {target}: {result.stderr}"
    deploy = subprocess.run(
        ["make", "-n", "deploy"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "IMAGE_TAG": "test-tag", "DEPLOY_ENV": "prod"},
    ).stdout  # fmt: skip
    assert "--image-tag test-tag" in deploy and "infra/params/prod.env" in deploy


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
        example.replace("InputBucketName=", "InputBucketNmae=").replace(
            "TaskCpu=2048", "TaskCpu=3000"
        )
    )
    result = run_deploy(bad)
    assert result.returncode == 2
    assert "unknown parameter InputBucketNmae" in result.stderr
    assert "missing parameter InputBucketName" in result.stderr
    assert "TaskCpu='3000'" in result.stderr
    assert result.stdout == ""
