"""Deploys finish under load (issue 17): the stale-task decision, the watcher against a faithful
fake of ECS (tests/harness/fake_ecs.py: why not moto), and a saturated ``komorebi-worker run`` that
drains when a new deployment appears."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiobotocore.session import get_session

from tests.harness.fake_ecs import FAMILY, FakeEcs, arn, serve_fake_ecs
from tests.harness.fixtures_aws import AwsEnv
from tests.harness.polling import wait_until
from tests.harness.worker_harness import (
    WorkerProcess,
    get_row,
    receive_now,
    seed_contact,
    send_job,
    with_fresh_queues,
    worker_env,
)
from worker.deployment import (
    DeploymentWatcher,
    TaskIdentity,
    parse_task_metadata,
    service_of_group,
    stale_reason,
    task_definition_name,
)

ME = TaskIdentity("arn:aws:ecs:us-east-1:1:cluster/c", "arn:aws:ecs:us-east-1:1:task/c/t", "w", "7")


def _service(*deployments: tuple[str, str], status: str = "ACTIVE") -> dict[str, Any]:
    return {
        "status": status,
        "deployments": [
            {"id": f"d{n}", "status": s, "taskDefinition": arn("task-definition", td)}
            for n, (s, td) in enumerate(deployments)
        ],
    }


# --- the decision (pure) ---------------------------------------------------------------------


def test_a_task_of_the_primary_deployment_is_current() -> None:
    assert stale_reason(ME, _service(("PRIMARY", "w:7"))) is None


def test_a_new_primary_deployment_makes_the_task_stale() -> None:
    reason = stale_reason(ME, _service(("PRIMARY", "w:8"), ("ACTIVE", "w:7")))
    assert reason == "the service's PRIMARY deployment d0 runs w:8; this task runs w:7"


def test_a_rollback_to_this_tasks_definition_makes_it_current_again() -> None:
    # The circuit breaker rolls back by making the old task definition PRIMARY again.
    assert stale_reason(ME, _service(("PRIMARY", "w:7"), ("ACTIVE", "w:8"))) is None


def test_another_family_with_the_same_revision_is_another_definition() -> None:
    assert stale_reason(ME, _service(("PRIMARY", "other:7"))) is not None


@pytest.mark.parametrize(
    "service",
    [
        None,
        {},
        _service(("PRIMARY", "w:8"), status="DRAINING"),  # being deleted: not a deployment
        _service(("ACTIVE", "w:8")),  # no PRIMARY
        _service(("PRIMARY", "w:8"), ("PRIMARY", "w:9")),  # ambiguous
        {"status": "ACTIVE", "deployments": [{"status": "PRIMARY", "taskDefinition": "x"}]},
        {"status": "ACTIVE", "deployments": None},  # external deployment controller
    ],
)
def test_anything_unclear_is_not_stale(service: dict[str, Any] | None) -> None:
    assert stale_reason(ME, service) is None


def test_task_definition_names() -> None:
    assert task_definition_name("arn:aws:ecs:eu-west-1:1:task-definition/a-b_c:12") == "a-b_c:12"
    assert task_definition_name("fam:3") == "fam:3"
    for broken in ("", "arn:aws:ecs:eu-west-1:1:task-definition/fam", "fam:x", ":3"):
        assert task_definition_name(broken) is None


def test_service_of_group() -> None:
    assert service_of_group("service:komorebi-Service-1") == "komorebi-Service-1"
    assert service_of_group("family:komorebi") is None
    assert service_of_group("service:") is None
    assert service_of_group(None) is None


def test_parse_task_metadata() -> None:
    data = {"Cluster": "c", "TaskARN": "t", "Family": "w", "Revision": "7", "Other": 1}
    assert parse_task_metadata(data) == TaskIdentity("c", "t", "w", "7")
    with pytest.raises(ValueError, match="Revision"):
        parse_task_metadata({**data, "Revision": ""})
    with pytest.raises(ValueError, match="object"):
        parse_task_metadata([data])


# --- the watcher against the fake ECS --------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[FakeEcs]:
    with serve_fake_ecs() as running:
        yield running


@pytest.fixture
async def ecs(fake: FakeEcs) -> AsyncIterator[Any]:
    async with get_session().create_client(
        "ecs",
        region_name="us-east-1",
        endpoint_url=fake.base_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ) as client:
        yield client


async def _watch(watcher: DeploymentWatcher, until: Callable[[], bool]) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(watcher.run)
        with anyio.fail_after(10):
            while not until():
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()


@pytest.mark.anyio
async def test_the_watcher_reports_a_new_deployment_once(fake: FakeEcs, ecs: Any) -> None:
    reasons: list[str] = []
    watcher = DeploymentWatcher(fake.metadata_uri, ecs, 0.02, reasons.append)
    await _watch(watcher, lambda: len(fake.of("DescribeServices")) >= 3)
    assert reasons == []  # current: nothing happens
    fake.deploy(2)
    with anyio.fail_after(10):
        await watcher.run()  # returns once it has reported: no second report
    assert reasons == [f"the service's PRIMARY deployment ecs-svc/{2:019d} runs {FAMILY}:2; "
                       f"this task runs {FAMILY}:1"]  # fmt: skip
    # The service name is read once, the metadata once.
    assert len(fake.of("DescribeTasks")) == 1 and len(fake.of("metadata")) == 1


@pytest.mark.anyio
async def test_errors_are_logged_and_retried_never_fatal(fake: FakeEcs, ecs: Any) -> None:
    from structlog.testing import capture_logs

    reasons: list[str] = []
    broken = DeploymentWatcher(fake.base_url + "/nowhere", ecs, 0.02, reasons.append)
    with capture_logs() as logs:
        await _watch(broken, lambda: broken.failures >= 3)
    failed = [e for e in logs if e["event"] == "deployment.check_failed"]
    # Retried every check, logged once (the same failure: tests/test_qa_deployment.py).
    assert len(failed) == 1 and "404" in failed[0]["error"]
    assert reasons == [] and fake.of("DescribeServices") == []


@pytest.mark.anyio
async def test_a_failure_that_repeats_is_logged_once_per_kind(fake: FakeEcs, ecs: Any) -> None:
    # Each check fails at its first ECS call: denied 5 times, a ClientException
    # twice (codes the SDK does not retry), denied again, then the calls work.
    fake.ecs_errors = ["AccessDeniedException"] * 5 + ["ClientException"] * 2
    fake.ecs_errors += ["AccessDeniedException"]
    reasons: list[str] = []
    watcher = DeploymentWatcher(fake.metadata_uri, ecs, 0.01, reasons.append)
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        await _watch(watcher, lambda: not fake.ecs_errors and watcher.failures == 0)
        fake.deploy(2)
        await _watch(watcher, lambda: bool(reasons))
    events = [(e["event"], e.get("kind")) for e in logs if e["event"].startswith("deployment.")]
    assert events == [
        ("deployment.watching", None),
        ("deployment.check_failed", "AccessDeniedException"),
        ("deployment.check_failed", "ClientException"),
        ("deployment.check_failed", "AccessDeniedException"),
        ("deployment.check_recovered", None),
        ("deployment.superseded", None),
    ]
    assert [e["after_failures"] for e in logs if e["event"] == "deployment.check_recovered"] == [8]
    # Every failed check was retried (each one failed at DescribeTasks, the first call), then
    # the service name was read once and the deployment seen.
    assert len(fake.of("DescribeTasks")) == 9 and len(reasons) == 1


@pytest.mark.anyio
async def test_a_task_outside_a_service_is_not_watched(fake: FakeEcs, ecs: Any) -> None:
    fake.group = f"family:{FAMILY}"  # started by RunTask
    fake.deploy(2)
    reasons: list[str] = []
    watcher = DeploymentWatcher(fake.metadata_uri, ecs, 0.02, reasons.append)
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        # Its first check ends in "not a service task": no more checks from then on.
        await _watch(watcher, lambda: any(e["event"] == "deployment.watch_off" for e in logs))
    assert reasons == [] and fake.of("DescribeServices") == []
    assert len(fake.of("DescribeTasks")) == 1


@pytest.mark.anyio
async def test_off_ecs_the_watcher_does_nothing() -> None:
    assert DeploymentWatcher.metadata_uri({}) is None
    assert DeploymentWatcher.metadata_uri({"ECS_CONTAINER_METADATA_URI_V4": " "}) is None
    watcher = DeploymentWatcher(None, None, 0.01, lambda reason: None)
    assert not watcher.active
    with anyio.move_on_after(0.1) as scope:
        await watcher.run()
    assert scope.cancelled_caught


@pytest.mark.anyio
async def test_a_signal_during_a_deployment_drain_bounds_it_by_the_grace() -> None:
    from worker.observability import HealthState
    from worker.shutdown import StopState

    state = StopState(HealthState(), grace_seconds=100)
    state.start()
    state.job_started()
    state.request_drain()
    assert state.stopping and state.superseded and not state.signalled
    assert state.deadline == math.inf  # the jobs finish, however long they take
    before = anyio.current_time()
    state.request_stop()  # ECS stops the task meanwhile: its 120 s apply
    assert state.signalled and before + 100 <= state.deadline <= anyio.current_time() + 100
    deadline = state.deadline
    state.request_stop()
    state.request_drain()
    assert state.deadline == deadline and not state.forced


# --- a saturated worker drains ---------------------------------------------------------------


@pytest.fixture
def aws(world: AwsEnv) -> AwsEnv:
    return with_fresh_queues(world)


@pytest.fixture(scope="module")
def short_recording(generated: Callable[[str], Path]) -> Path:
    return generated("h264-aac")


def test_a_saturated_worker_drains_when_a_new_deployment_appears(
    aws: AwsEnv, tmp_path: Path, short_recording: Path, fake: FakeEcs
) -> None:
    # Two slots busy with slow merges (ffmpeg at half real time), a third job waiting.
    contacts = [seed_contact(aws, recording=short_recording) for _ in range(3)]
    for contact in contacts:
        send_job(aws, contact.recording_id, 3)
    env = worker_env(
        aws, tmp_path / "scratch", WORKER_CONCURRENCY="2", DEPLOYMENT_CHECK_SECONDS="0.5"
    )
    (tmp_path / "scratch").mkdir()
    worker = WorkerProcess({**env, **fake.env()}, tmp_path / "worker.log", readrate=0.5)
    try:
        wait_until(lambda: worker.count("merge_plan") == 2, timeout=90, what="both slots busy")
        deployed_at = fake.deploy(2)
        # The bound: its longest in-flight job (a few seconds here) plus 2 minutes.
        assert worker.wait(timeout=180) == 0, worker.tail()
    finally:
        worker.stop()
    events = worker.events()
    names = [e.get("event") for e in events]
    superseded = names.index("deployment.superseded")
    assert names.count("deployment.superseded") == 1
    # The drain was caused by the new deployment: the first DescribeServices that showed it.
    seen = [c for c in fake.of("DescribeServices") if c.at >= deployed_at]
    assert seen, "the worker never looked after the deployment"
    # Nothing new started after it; both jobs in flight finished normally, after it.
    assert names[superseded:].count("merge_plan") == 0
    assert names.count("merge_plan") == 2
    assert names[superseded:].count("job.succeeded") == 2
    assert "worker.grace_expired" not in names and "job.released" not in names
    done = [c for c in contacts if get_row(aws, c.recording_id).get("processingStatus") == "DONE"]
    assert len(done) == 2
    # The third message was never received by the draining worker: this is its first receive.
    [waiting] = receive_now(aws)
    assert waiting["Attributes"]["ApproximateReceiveCount"] == "1"
    assert json.loads(waiting["Body"])["recordingID"] not in {c.recording_id for c in done}
    # Protection: on while busy, off at the end (after the drain began), nothing after that.
    protection = [c.body for c in fake.of("protection")]
    assert protection[0] == {"ProtectionEnabled": True, "ExpiresInMinutes": 60}
    assert protection[-1] == {"ProtectionEnabled": False}
    last_put = fake.of("protection")[-1].at
    assert last_put > seen[0].at
    assert "signal.received" not in names  # no signal involved: the worker left by itself
