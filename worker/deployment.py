"""Deploys finish under load (issue 17): a task of a superseded deployment drains and exits.

A busy task holds ECS scale-in protection (worker.protection), and protection also keeps a
*deployment* from stopping it: under steady load an old task is never idle, so it would run
forever and the deployment (CloudFormation, the Jenkins deploy stage) would never finish.
So the task checks, every ``DEPLOYMENT_CHECK_SECONDS`` (60), whether it still belongs to the
service's current deployment; once it does not, the consumer drains (worker.consumer: no new
receive, the jobs in flight finish normally, protection goes off, exit 0) and ECS starts a
task of the new deployment in its place.

How the task knows (real AWS calls, all read-only):

1. ``GET $ECS_CONTAINER_METADATA_URI_V4/task`` (the Fargate task metadata endpoint, no IAM):
   the cluster, this task's ARN and its task definition family and revision;
2. ``ecs:DescribeTasks`` on this task, once: its ``group`` is ``service:NAME``. The service
   name is not in the metadata, and the template cannot hand it to the task in an
   environment variable: the service's generated name is only known after the task
   definition that would carry it (a dependency cycle), and naming the service explicitly
   would replace the running service on the next stack update;
3. ``ecs:DescribeServices`` on that service, every check: the task definition of its
   ``PRIMARY`` deployment (the one ECS is rolling out or has rolled out) is compared with
   this task's (:func:`stale_reason`, pure). A circuit-breaker rollback makes the old task
   definition PRIMARY again, so the old tasks that have not seen the new deployment stay
   and the new ones drain. A drain is never undone: an old task that saw the new deployment
   before the rollback finishes its jobs and exits 0, and ECS starts a task of the
   rolled-back definition in its place (checked by a worker process, QA, issue 17).

Errors of these calls are logged and retried at the next check, never fatal: the check is an
optimisation of deployments, never a reason to stop processing. A failure that repeats (a
task role without ``ecs:DescribeServices`` fails every check, every minute, for the task's
whole life) is logged once per kind (:func:`failure_kind`) until a check succeeds
(``deployment.check_recovered``) or fails another way, not once a minute per task. Off ECS (no
``ECS_CONTAINER_METADATA_URI_V4``, e.g. local runs) and for a task outside a service
(``RunTask``) it does nothing.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import anyio
import structlog

from worker.aws import AWS_ERRORS
from worker.errors import one_line

log = structlog.get_logger(__name__)

METADATA_ENV: Final = "ECS_CONTAINER_METADATA_URI_V4"
# The metadata endpoint is local to the task; anything slower than this is broken.
METADATA_TIMEOUT_SECONDS: Final = 3.0
# Checks are spread by up to this fraction of the interval, so a fleet started together does
# not call DescribeServices in step.
JITTER_FRACTION: Final = 0.1
_DETAIL_CHARS = 200
# What a failed check may raise: AWS and HTTP errors, a malformed answer.
_CHECK_ERRORS: tuple[type[BaseException], ...] = (*AWS_ERRORS, OSError, ValueError, KeyError)


@dataclass(frozen=True)
class TaskIdentity:
    """This task as the metadata endpoint describes it."""

    cluster: str
    task_arn: str
    family: str
    revision: str

    @property
    def task_definition(self) -> str:
        """``family:revision``."""
        return f"{self.family}:{self.revision}"


def parse_task_metadata(data: Any) -> TaskIdentity:
    """The identity in a ``$ECS_CONTAINER_METADATA_URI_V4/task`` answer; ValueError if it
    lacks one of ``Cluster``, ``TaskARN``, ``Family``, ``Revision``."""
    if not isinstance(data, Mapping):
        raise ValueError("task metadata is not a JSON object")
    values = {key: str(data.get(key) or "").strip() for key in ("Cluster", "TaskARN", "Family")}
    values["Revision"] = str(data.get("Revision") or "").strip()
    missing = [key for key, value in values.items() if not value]
    if missing:
        raise ValueError(f"task metadata lacks {', '.join(missing)}")
    return TaskIdentity(values["Cluster"], values["TaskARN"], values["Family"], values["Revision"])


def task_definition_name(reference: str) -> str | None:
    """``family:revision`` of a task definition ARN (or of ``family:revision`` itself)."""
    name = reference.rsplit("task-definition/", 1)[-1] if "task-definition/" in reference else ""
    name = name or (reference if ":" in reference and not reference.startswith("arn:") else "")
    family, _, revision = name.rpartition(":")
    return f"{family}:{revision}" if family and revision.isdigit() else None


def service_of_group(group: str | None) -> str | None:
    """The service name of a task's ``group`` (``service:NAME``); None for other groups."""
    prefix = "service:"
    if group and group.startswith(prefix) and len(group) > len(prefix):
        return group[len(prefix) :]
    return None


def stale_reason(identity: TaskIdentity, service: Mapping[str, Any] | None) -> str | None:
    """Why this task no longer belongs to the service's current deployment, or None.

    Stale only on evidence: an ACTIVE service whose one PRIMARY deployment runs another task
    definition. Anything unclear (no service, a service being deleted, no or several PRIMARY
    deployments, an unreadable task definition, e.g. an external deployment controller) is
    "not stale": draining on a misreading would take capacity away for nothing.
    """
    if not service or service.get("status") != "ACTIVE":
        return None
    primary = [d for d in service.get("deployments") or [] if d.get("status") == "PRIMARY"]
    if len(primary) != 1:
        return None
    current = task_definition_name(str(primary[0].get("taskDefinition") or ""))
    if current is None or current == identity.task_definition:
        return None
    return (
        f"the service's PRIMARY deployment {primary[0].get('id', '?')} runs {current}; "
        f"this task runs {identity.task_definition}"
    )


def failure_kind(error: BaseException) -> str:
    """What makes two failed checks "the same failure" for the log: an AWS error's code
    (AccessDenied and Throttling are different kinds), else the exception's type."""
    response = getattr(error, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, Mapping) else None
    return str(code) if code else type(error).__name__


class DeploymentWatcher:
    """Calls ``on_stale`` once when this task's deployment is superseded (module docstring)."""

    def __init__(
        self,
        metadata_uri: str | None,
        ecs: Any,
        interval_seconds: float,
        on_stale: Callable[[str], None],
    ) -> None:
        """``metadata_uri`` None (off ECS) makes :meth:`run` a no-op; ``ecs`` is an
        aiobotocore ECS client (None then)."""
        self._uri = metadata_uri.rstrip("/") if metadata_uri else None
        self._ecs = ecs
        self._interval = interval_seconds
        self._on_stale = on_stale
        self._identity: TaskIdentity | None = None
        self._service: str | None = None
        # Set when the task turns out not to belong to a service: nothing to watch.
        self._off = False
        # Checks failed in a row, and the kind of the last failure logged.
        self.failures = 0
        self._logged_kind: str | None = None

    @staticmethod
    def metadata_uri(environ: Mapping[str, str] | None = None) -> str | None:
        """``$ECS_CONTAINER_METADATA_URI_V4`` (None when unset or empty)."""
        env = os.environ if environ is None else environ
        return (env.get(METADATA_ENV) or "").strip() or None

    @property
    def active(self) -> bool:
        """True when running on ECS (the metadata endpoint is known)."""
        return self._uri is not None and self._ecs is not None

    async def run(self) -> None:
        """Check every interval until the task is stale (then ``on_stale``, return) or
        cancelled. Never raises (except cancellation)."""
        if not self.active:
            await anyio.sleep_forever()
            return
        while True:
            reason = None
            try:
                reason = await self._check()
            except _CHECK_ERRORS as error:
                self._failed(error)
            else:
                self._succeeded()
            if self._off:
                log.info("deployment.watch_off", reason="not a service task")
                await anyio.sleep_forever()
            if reason is not None:
                assert self._identity is not None
                log.info(
                    "deployment.superseded",
                    reason=reason,
                    task_definition=self._identity.task_definition,
                )
                self._on_stale(reason)
                return
            jitter = 1 + random.uniform(-JITTER_FRACTION, JITTER_FRACTION)  # noqa: S311
            await anyio.sleep(self._interval * jitter)

    def _failed(self, error: BaseException) -> None:
        """Log a failed check, once per kind in a row (module docstring)."""
        self.failures += 1
        kind = failure_kind(error)
        if kind == self._logged_kind:
            return
        self._logged_kind = kind
        log.warning(
            "deployment.check_failed",
            error=f"{type(error).__name__}: {one_line(str(error), _DETAIL_CHARS)}",
            kind=kind,
            note="logged once until the check succeeds or fails another way",
        )

    def _succeeded(self) -> None:
        if self.failures:
            log.info("deployment.check_recovered", after_failures=self.failures)
        self.failures = 0
        self._logged_kind = None

    async def _check(self) -> str | None:
        """Why this task is stale, or None (current, or not a service task: ``_off``)."""
        if self._identity is None:
            self._identity = parse_task_metadata(await self._metadata())
            log.info(
                "deployment.watching",
                task_definition=self._identity.task_definition,
                cluster=self._identity.cluster,
            )
        identity = self._identity
        if self._service is None:
            answer = await self._ecs.describe_tasks(
                cluster=identity.cluster, tasks=[identity.task_arn]
            )
            tasks = answer.get("tasks") or []
            if not tasks:
                raise ValueError(f"DescribeTasks does not know this task: {answer.get('failures')}")
            self._service = service_of_group(tasks[0].get("group"))
            if self._service is None:
                self._off = True
                return None
        answer = await self._ecs.describe_services(
            cluster=identity.cluster, services=[self._service]
        )
        services = answer.get("services") or []
        return stale_reason(identity, services[0] if services else None)

    async def _metadata(self) -> Any:
        assert self._uri is not None
        timeout = aiohttp.ClientTimeout(total=METADATA_TIMEOUT_SECONDS)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self._uri + "/task") as response,
        ):
            response.raise_for_status()
            return await response.json(content_type=None)
