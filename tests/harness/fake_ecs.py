"""A faithful fake of what a Fargate task sees of ECS: the task metadata endpoint, the ECS
agent's task-protection endpoint, and the ECS API's DescribeTasks/DescribeServices.

Why a fake and not moto: moto's ``update_service`` (5.x) changes the service's
``taskDefinition`` but keeps its one deployment, so ``DescribeServices`` still reports the
old task definition as PRIMARY; real ECS creates a new PRIMARY deployment with the new task
definition and turns the previous one ACTIVE until its tasks are gone (what
worker.deployment reads). :meth:`FakeEcs.deploy` does what ECS does.

Everything answers on one 127.0.0.1 port in a thread; every request is recorded in order
(``calls``), with its wall-clock time, so tests can assert on the order of events.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.harness.http_server import run_server

REGION = "us-east-1"
ACCOUNT = "123456789012"
CLUSTER = "komorebi"
SERVICE = "komorebi-worker-Service-AbC123"
FAMILY = "komorebi-worker"
TASK_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
METADATA_PREFIX = f"/v4/{TASK_ID}-1234567890"
AGENT_PREFIX = f"/api/{TASK_ID}-1234567890"
_TARGET = "AmazonEC2ContainerServiceV20141113."


def arn(kind: str, name: str) -> str:
    """An ECS ARN in the fake's account and region."""
    return f"arn:aws:ecs:{REGION}:{ACCOUNT}:{kind}/{name}"


@dataclass
class Call:
    """One request the fake answered."""

    at: float
    kind: str  # "metadata", "protection", or the ECS action (DescribeServices, ...)
    body: dict[str, Any]


@dataclass(frozen=True)
class AwsError:
    """An ECS API error answer (HTTP 400, the JSON protocol's ``__type``)."""

    code: str


@dataclass
class FakeEcs:
    """State of the fake: the running task's revision and the service's deployments."""

    task_revision: int = 1
    group: str = f"service:{SERVICE}"
    deployments: list[dict[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    # AWS error codes the next ECS API calls answer with (HTTP 400), one per call, in order.
    ecs_errors: list[str] = field(default_factory=list)
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.deployments = [self._deployment(self.task_revision, "PRIMARY")]

    @staticmethod
    def _deployment(revision: int, status: str) -> dict[str, Any]:
        return {
            "id": f"ecs-svc/{revision:019d}",
            "status": status,
            "taskDefinition": arn("task-definition", f"{FAMILY}:{revision}"),
            "desiredCount": 1,
            "runningCount": 1 if status == "PRIMARY" else 0,
            "rolloutState": "IN_PROGRESS" if status == "PRIMARY" else "COMPLETED",
        }

    def deploy(self, revision: int) -> float:
        """What ``UpdateService --task-definition family:revision`` does in ECS: a new
        PRIMARY deployment, the previous one ACTIVE. Returns when it happened."""
        with self.lock:
            for deployment in self.deployments:
                deployment["status"] = "ACTIVE"
            self.deployments.insert(0, self._deployment(revision, "PRIMARY"))
            return time.time()

    @property
    def metadata_uri(self) -> str:
        """``ECS_CONTAINER_METADATA_URI_V4``."""
        return self.base_url + METADATA_PREFIX

    @property
    def agent_uri(self) -> str:
        """``ECS_AGENT_URI``."""
        return self.base_url + AGENT_PREFIX

    def env(self) -> dict[str, str]:
        """What a Fargate task's container gets, plus the ECS endpoint for the SDK."""
        return {
            "ECS_CONTAINER_METADATA_URI_V4": self.metadata_uri,
            "ECS_AGENT_URI": self.agent_uri,
            "AWS_ENDPOINT_URL_ECS": self.base_url,
        }

    def of(self, kind: str) -> list[Call]:
        """The calls of one kind, in order."""
        with self.lock:
            return [call for call in self.calls if call.kind == kind]

    # --- answers ------------------------------------------------------------------------------

    def answer(self, method: str, path: str, target: str, body: dict[str, Any]) -> Any:
        """The JSON answer (None: 404)."""
        with self.lock:
            if method == "GET" and path == METADATA_PREFIX + "/task":
                self.calls.append(Call(time.time(), "metadata", {}))
                return self._task_metadata()
            if method == "PUT" and path == AGENT_PREFIX + "/task-protection/v1/state":
                self.calls.append(Call(time.time(), "protection", body))
                return {"protection": {"ProtectionEnabled": body.get("ProtectionEnabled")}}
            if method == "POST" and target.startswith(_TARGET):
                action = target[len(_TARGET) :]
                self.calls.append(Call(time.time(), action, body))
                if self.ecs_errors:
                    return AwsError(self.ecs_errors.pop(0))
                if action == "DescribeTasks":
                    return self._describe_tasks(body)
                if action == "DescribeServices":
                    return self._describe_services(body)
            return None

    def _task_metadata(self) -> dict[str, Any]:
        return {
            "Cluster": arn("cluster", CLUSTER),
            "TaskARN": arn("task", f"{CLUSTER}/{TASK_ID}"),
            "Family": FAMILY,
            "Revision": str(self.task_revision),
            "DesiredStatus": "RUNNING",
            "KnownStatus": "RUNNING",
            "LaunchType": "FARGATE",
        }

    def _describe_tasks(self, body: dict[str, Any]) -> dict[str, Any]:
        wanted = arn("task", f"{CLUSTER}/{TASK_ID}")
        if body.get("tasks") != [wanted]:
            return {"tasks": [], "failures": [{"arn": str(body.get("tasks")), "reason": "MISSING"}]}
        return {
            "tasks": [
                {
                    "taskArn": wanted,
                    "clusterArn": arn("cluster", CLUSTER),
                    "group": self.group,
                    "taskDefinitionArn": arn("task-definition", f"{FAMILY}:{self.task_revision}"),
                    "lastStatus": "RUNNING",
                }
            ],
            "failures": [],
        }

    def _describe_services(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("services") != [SERVICE]:
            return {"services": [], "failures": [{"arn": "?", "reason": "MISSING"}]}
        primary = self.deployments[0]
        return {
            "services": [
                {
                    "serviceArn": arn("service", f"{CLUSTER}/{SERVICE}"),
                    "serviceName": SERVICE,
                    "clusterArn": arn("cluster", CLUSTER),
                    "status": "ACTIVE",
                    "taskDefinition": primary["taskDefinition"],
                    "deployments": json.loads(json.dumps(self.deployments)),
                }
            ],
            "failures": [],
        }


@contextmanager
def serve_fake_ecs(fake: FakeEcs | None = None) -> Iterator[FakeEcs]:
    """Run a :class:`FakeEcs` on 127.0.0.1 (a free port) in a thread; stopped on exit."""
    state = fake or FakeEcs()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            target = self.headers.get("X-Amz-Target", "")
            result = state.answer(self.command, self.path, target, body)
            status = 200
            if isinstance(result, AwsError):
                status, result = 400, {"__type": result.code, "message": f"fake {result.code}"}
            elif result is None:
                status, result = 404, {"message": "not found"}
            data = json.dumps(result).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _answer

    with run_server(Handler, name="fake-ecs") as server:
        state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        yield state
