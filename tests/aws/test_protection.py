"""ECS task scale-in protection against a fake ECS agent endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.harness.fixtures_aws import AwsEnv
from tests.harness.ports import free_port
from worker.aws import open_clients
from worker.consumer import Consumer
from worker.devenv import seed_demo_contact
from worker.observability import TASK_PROTECTION, HealthState
from worker.protection import PROTECTION_PATH, TaskProtector

pytestmark = pytest.mark.anyio

AGENT_PREFIX = "/api/0123456789abcdef-1234567890"


@dataclass
class FakeAgent:
    """Records every call; answers like the ECS agent (or fails on demand)."""

    uri: str
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    status: int = 200
    body: dict[str, Any] | None = None
    # Called on every request; its results are kept in ``observations`` (same order).
    observe: Callable[[dict[str, Any]], Any] | None = None
    observations: list[Any] = field(default_factory=list)

    def bodies(self) -> list[dict[str, Any]]:
        return [body for _, _, body in self.requests]

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
        with anyio.fail_after(10):
            while not predicate(self.bodies()):
                await anyio.sleep(0.01)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def agent() -> AsyncIterator[FakeAgent]:
    port = free_port()
    fake = FakeAgent(uri=f"http://127.0.0.1:{port}{AGENT_PREFIX}")

    async def handle(request: web.Request) -> web.Response:
        payload = json.loads(await request.text() or "{}")
        fake.requests.append((request.method, request.path, payload))
        if fake.observe is not None:
            fake.observations.append(await asyncio.to_thread(fake.observe, payload))
        if fake.status != 200:
            return web.Response(status=fake.status, text="internal error")
        answer = fake.body or {
            "protection": {
                "ExpirationDate": "2026-11-28T03:00:00Z",
                "ProtectionEnabled": payload.get("ProtectionEnabled"),
                "TaskArn": "arn:aws:ecs:us-east-1:123456789012:task/demo/abc",
            }
        }
        return web.json_response(answer)

    app = web.Application()
    app.router.add_route("*", AGENT_PREFIX + PROTECTION_PATH, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield fake
    finally:
        await runner.cleanup()


ENABLE = {"ProtectionEnabled": True, "ExpiresInMinutes": 5}
DISABLE = {"ProtectionEnabled": False}


async def test_enable_while_busy_renew_then_disable_when_idle(agent: FakeAgent) -> None:
    protector = TaskProtector(agent.uri, 5, renew_after_seconds=0.05)
    async with anyio.create_task_group() as tg:
        tg.start_soon(protector.run)
        await protector.job_started()
        assert protector.protected
        assert TASK_PROTECTION._value.get() == 1
        # Renewals arrive while the job runs.
        await agent.wait_for(lambda bodies: len(bodies) >= 3)
        await protector.job_finished()
        assert not protector.protected
        assert TASK_PROTECTION._value.get() == 0
        tg.cancel_scope.cancel()
    bodies = agent.bodies()
    assert bodies[-1] == DISABLE
    assert all(body == ENABLE for body in bodies[:-1])
    assert len(bodies) >= 4
    assert {(method, path) for method, path, _ in agent.requests} == {
        ("PUT", AGENT_PREFIX + PROTECTION_PATH)
    }


async def test_reference_counted_across_concurrent_jobs(agent: FakeAgent) -> None:
    protector = TaskProtector(agent.uri, 30)
    await protector.job_started()
    await protector.job_started()
    await protector.job_finished()
    assert protector.protected  # one job still running
    assert agent.bodies() == [{"ProtectionEnabled": True, "ExpiresInMinutes": 30}]
    await protector.job_finished()
    assert agent.bodies()[-1] == DISABLE
    assert len(agent.bodies()) == 2


async def test_agent_error_is_logged_not_raised_and_retried(agent: FakeAgent) -> None:
    agent.status = 500
    protector = TaskProtector(agent.uri, 5, renew_after_seconds=10, retry_seconds=0.05)
    async with anyio.create_task_group() as tg:
        tg.start_soon(protector.run)
        with capture_logs() as logs:
            await protector.job_started()
        assert not protector.protected
        assert any(entry["event"] == "task protection call failed" for entry in logs)
        assert any(entry.get("status") == 500 for entry in logs)
        # The agent recovers: run() retries and protection comes on.
        agent.status = 200
        await agent.wait_for(lambda _: protector.protected)
        tg.cancel_scope.cancel()
    # Cancelling run() turns protection off on the way out.
    assert agent.bodies()[-1] == DISABLE
    assert not protector.protected


async def test_broken_agent_is_not_called_on_every_job_start(agent: FakeAgent) -> None:
    agent.status = 500
    protector = TaskProtector(agent.uri, 5, retry_seconds=60)
    for _ in range(3):
        await protector.job_started()
        await protector.job_finished()
    # One failed call; later job starts wait for run()'s retry instead of calling again.
    assert agent.bodies() == [ENABLE]


async def test_job_started_during_backoff_is_still_protected_by_the_retry(
    agent: FakeAgent,
) -> None:
    agent.status = 500
    protector = TaskProtector(agent.uri, 5, renew_after_seconds=10, retry_seconds=0.2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(protector.run)
        await protector.job_started()  # fails
        await protector.job_finished()  # idle: nothing to retry
        agent.status = 200
        await protector.job_started()  # within the back-off: no call now ...
        await agent.wait_for(lambda _: protector.protected)  # ... but run() retries
        await protector.job_finished()
        tg.cancel_scope.cancel()
    assert agent.bodies() == [ENABLE, ENABLE, DISABLE]


async def test_failure_body_counts_as_failure(agent: FakeAgent) -> None:
    agent.body = {"failure": {"Arn": "arn:task", "Reason": "TASK_NOT_VALID"}}
    protector = TaskProtector(agent.uri, 5)
    with capture_logs() as logs:
        await protector.job_started()
    assert not protector.protected
    assert any("TASK_NOT_VALID" in str(entry.get("detail")) for entry in logs)


async def test_unreachable_agent_is_not_fatal() -> None:
    protector = TaskProtector(f"http://127.0.0.1:{free_port()}/api/x", 5, timeout_seconds=1)
    with capture_logs() as logs:
        await protector.job_started()
        await protector.job_finished()
    assert not protector.protected
    failures = [entry for entry in logs if entry["event"] == "task protection call failed"]
    assert len(failures) == 1  # enable failed; nothing was on, so nothing to turn off
    assert "\n" not in failures[0]["error"]


async def test_cancelled_run_disables_protection(agent: FakeAgent) -> None:
    protector = TaskProtector(agent.uri, 5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(protector.run)
        await protector.job_started()
        tg.cancel_scope.cancel()
    assert agent.bodies() == [ENABLE, DISABLE]


async def test_a_disable_that_just_failed_is_not_repeated_on_exit(agent: FakeAgent) -> None:
    """The stop's budget counts one agent call (worker.limits.SHUTDOWN.protection_off): a
    disable that failed at the last job's end is not tried again while the worker exits."""
    protector = TaskProtector(agent.uri, 5, retry_seconds=60)
    async with anyio.create_task_group() as tg:
        tg.start_soon(protector.run)
        await protector.job_started()
        agent.status = 500
        await protector.job_finished()  # the disable fails
        assert protector.protected
        tg.cancel_scope.cancel()
    assert agent.bodies() == [ENABLE, DISABLE]


async def test_no_agent_uri_means_no_requests(agent: FakeAgent) -> None:
    protector = TaskProtector.from_env(5, {"SOMETHING_ELSE": agent.uri})
    assert not protector.active
    async with anyio.create_task_group() as tg:
        tg.start_soon(protector.run)
        await protector.job_started()
        await protector.job_finished()
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert agent.requests == []
    assert TaskProtector.from_env(5, {"ECS_AGENT_URI": agent.uri}).active


# --- with the real consumer --------------------------------------------------------------------


async def test_consumer_protects_the_task_while_a_job_runs(agent: FakeAgent, aws: AwsEnv) -> None:
    settings = aws.settings(WORKER_CONCURRENCY="1", LOG_FORMAT="json")
    contact = seed_demo_contact(settings, aws.session)
    s3 = aws.client("s3")

    def output_exists() -> bool:
        listing = s3.list_objects_v2(Bucket=aws.output_bucket, Prefix="")
        return any(contact.recording_id in item["Key"] for item in listing.get("Contents", []))

    # Whether the job's output existed when the agent was called.
    agent.observe = lambda body: (bool(body["ProtectionEnabled"]), output_exists())
    protector = TaskProtector.from_env(5, {"ECS_AGENT_URI": agent.uri})
    async with open_clients(settings) as clients:
        consumer = Consumer(settings, clients, HealthState(), protector, poll_wait_seconds=1)
        await consumer.run(once=True)
    row = aws.client("dynamodb").get_item(
        TableName=aws.table_name, Key={"videoID": {"S": contact.recording_id}}
    )["Item"]
    assert row["processingStatus"]["S"] == "DONE"
    # Enabled before the job produced anything, disabled after it finished, nothing else.
    assert agent.bodies() == [ENABLE, DISABLE]
    assert agent.observations == [(True, False), (False, True)]
    assert not protector.protected
