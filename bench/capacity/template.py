"""The scaling the stack deploys, read from ``infra/template.yaml`` and a parameter file.

Nothing here is a copy of the template: every number the simulator uses about tasks, scaling
and the queue is read from the template's resources (found by type, not by logical name) and
its parameters, with a parameter file's values (``infra/params/*.env``) and ``--set``
overrides on top. The parameter file is read and checked by ``.ci/deploy.py`` itself (the
deploy stage's own code), so a typo or an out-of-range value fails here as it would fail a
deployment.

What the simulator cannot model is refused rather than guessed: a target-tracking metric
other than ``(visible + in flight) / tasks`` or ``visible / tasks``, a step policy that is not
``ChangeInCapacity``.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from worker.config import Settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "infra" / "template.yaml"
DEPLOY_SCRIPT = ROOT / ".ci" / "deploy.py"

# The parameters this model reads; problems with any other parameter of a file (a required
# VPC id, an unset ${VAR}) do not concern a capacity estimate.
SCALING_PARAMETERS = (
    "TaskCpu",
    "TaskMemory",
    "EphemeralStorageGiB",
    "WorkerConcurrency",
    "MinTasks",
    "MaxTasks",
    "BacklogPerTaskTarget",
    "FargateSpotWeight",
)


VISIBLE_AND_IN_FLIGHT = (
    "ApproximateNumberOfMessagesVisible",
    "ApproximateNumberOfMessagesNotVisible",
)


class TemplateError(Exception):
    """The template or parameter file cannot be simulated (one line)."""


@functools.cache
def deploy_module() -> ModuleType:
    """``.ci/deploy.py`` imported as a module (its directory is not a package)."""
    spec = importlib.util.spec_from_file_location("komorebi_ci_deploy", DEPLOY_SCRIPT)
    if spec is None or spec.loader is None:  # pragma: no cover - the file is in the repo
        raise TemplateError(f"cannot import {DEPLOY_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class StepAdjustment:
    """One step of a step-scaling policy; bounds are relative to the alarm threshold."""

    lower: float | None
    upper: float | None
    adjustment: int

    def matches(self, excess: float) -> bool:
        """Whether the metric's excess over the threshold falls in this step."""
        above = self.lower is None or excess >= self.lower
        below = self.upper is None or excess < self.upper
        return above and below


@dataclass(frozen=True)
class ScalingConfig:
    """Everything the simulator needs to know about the deployed service."""

    task_cpu_units: int
    task_memory_mib: int
    ephemeral_storage_gib: int
    worker_concurrency: int
    min_tasks: int
    max_tasks: int
    # Target tracking (AWS::ApplicationAutoScaling::ScalingPolicy, TargetTrackingScaling).
    backlog_target: float
    # Whether the metric's numerator counts the messages not visible (in flight or hidden by
    # a retry backoff) besides the visible ones.
    backlog_counts_in_flight: bool
    scale_out_cooldown: float
    scale_in_cooldown: float
    disable_scale_in: bool
    # Step scaling from zero and its alarm.
    from_zero_threshold: float
    from_zero_period_seconds: int
    from_zero_evaluation_periods: int
    from_zero_datapoints_to_alarm: int
    from_zero_steps: tuple[StepAdjustment, ...]
    from_zero_cooldown: float
    # The service's capacity provider strategy.
    fargate_base: int
    fargate_weight: float
    spot_weight: float
    # The queue and the worker container.
    visibility_timeout: int
    max_receive_count: int | None
    stop_timeout: int
    shutdown_grace_seconds: float
    retry_backoff_base_seconds: float
    retry_backoff_max_seconds: float
    # Where it came from (template, parameter file, overrides), for the report.
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def vcpu(self) -> float:
        """vCPUs of one task (1024 CPU units = 1 vCPU)."""
        return self.task_cpu_units / 1024

    @property
    def memory_gib(self) -> float:
        """Memory of one task in GiB."""
        return self.task_memory_mib / 1024

    @property
    def vcpu_per_slot(self) -> float:
        """CPU a job gets when every slot of the task is busy."""
        return self.vcpu / self.worker_concurrency

    @property
    def gives_back_on_stop(self) -> bool:
        """Whether a stopped task's unfinished jobs are made visible at once: the worker's
        grace period plus the release leaves room before the container's SIGKILL."""
        return self.shutdown_grace_seconds + 10 <= self.stop_timeout

    def with_parameters(self, **overrides: Any) -> ScalingConfig:
        """A copy with some fields changed (the search varies max_tasks, backlog_target)."""
        return replace(self, **overrides)


def _by_type(resources: Mapping[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, res) for name, res in resources.items() if res.get("Type") == kind]


def _one(resources: Mapping[str, Any], kind: str, what: str = "") -> tuple[str, dict[str, Any]]:
    found = _by_type(resources, kind)
    if len(found) != 1:
        raise TemplateError(f"expected one {kind}{what}, found {len(found)}")
    return found[0]


def _props(resource: Mapping[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = resource.get("Properties", {})
    return props


def _resolve(value: Any, parameters: Mapping[str, str]) -> Any:
    """A literal, or ``{"Ref": Parameter}`` replaced by the parameter's effective value."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        name = value["Ref"]
        if name not in parameters:
            raise TemplateError(f"Ref to {name}, which is not a parameter with a value")
        return parameters[name]
    return value


def _number(value: Any, parameters: Mapping[str, str], what: str) -> float:
    resolved = _resolve(value, parameters)
    try:
        return float(resolved)
    except (TypeError, ValueError):
        raise TemplateError(f"{what}: {resolved!r} is not a number") from None


def effective_parameters(template: dict[str, Any], values: Mapping[str, str]) -> dict[str, str]:
    """Each parameter's value as CloudFormation would use it: the file's, else the default."""
    result: dict[str, str] = {}
    for name, spec in template["Parameters"].items():
        if name in values:
            result[name] = values[name]
        elif "Default" in spec:
            result[name] = str(spec["Default"])
    return result


def _metric_name(query: Mapping[str, Any]) -> str:
    return str(query.get("MetricStat", {}).get("Metric", {}).get("MetricName", ""))


def _target_tracking(resources: Mapping[str, Any], params: Mapping[str, str]) -> dict[str, Any]:
    policies = [
        _props(res)
        for _, res in _by_type(resources, "AWS::ApplicationAutoScaling::ScalingPolicy")
        if _props(res).get("PolicyType") == "TargetTrackingScaling"
    ]
    if len(policies) != 1:
        raise TemplateError(f"expected one target-tracking policy, found {len(policies)}")
    config = policies[0]["TargetTrackingScalingPolicyConfiguration"]
    queries = {q["Id"]: q for q in config["CustomizedMetricSpecification"]["Metrics"]}
    returned = [q for q in queries.values() if q.get("ReturnData", True)]
    # The model computes exactly these metrics: (visible + not visible) / running tasks, or
    # visible / running tasks; 1-minute averages.
    expression = returned[0].get("Expression", "").replace(" ", "") if len(returned) == 1 else ""
    numerator, _, denominator = expression.partition("/")
    terms = numerator.removeprefix("(").removesuffix(")").split("+")
    names = (
        tuple(_metric_name(queries.get(term, {})) for term in terms),
        _metric_name(queries.get(denominator, {})),
    )
    counts = {
        (("ApproximateNumberOfMessagesVisible",), "RunningTaskCount"): False,
        (VISIBLE_AND_IN_FLIGHT, "RunningTaskCount"): True,
        ((VISIBLE_AND_IN_FLIGHT[1], VISIBLE_AND_IN_FLIGHT[0]), "RunningTaskCount"): True,
    }
    if names not in counts:
        raise TemplateError(
            f"target tracking on {expression or 'a predefined metric'!r} {names}: the simulator "
            "models (visible + in flight) / running tasks and visible / running tasks only"
        )
    disable = _resolve(config.get("DisableScaleIn", False), params)
    return {
        "backlog_target": _number(config["TargetValue"], params, "TargetValue"),
        "backlog_counts_in_flight": counts[names],
        # Application Auto Scaling's defaults for ECS when a cooldown is not set: 300 s.
        "scale_out_cooldown": _number(config.get("ScaleOutCooldown", 300), params, "cooldown"),
        "scale_in_cooldown": _number(config.get("ScaleInCooldown", 300), params, "cooldown"),
        "disable_scale_in": str(disable).lower() == "true",
    }


def _acts_on(actions: Any, policy_name: str) -> bool:
    """Whether an alarm's actions (a list, possibly inside intrinsics such as !If) name the
    policy."""
    if actions == {"Ref": policy_name}:
        return True
    if isinstance(actions, dict):
        return any(_acts_on(value, policy_name) for value in actions.values())
    if isinstance(actions, list):
        return any(_acts_on(value, policy_name) for value in actions)
    return False


def _step_scaling(resources: Mapping[str, Any], params: Mapping[str, str]) -> dict[str, Any]:
    steps = [
        (name, _props(res))
        for name, res in _by_type(resources, "AWS::ApplicationAutoScaling::ScalingPolicy")
        if _props(res).get("PolicyType") == "StepScaling"
    ]
    if len(steps) != 1:
        raise TemplateError(f"expected one step-scaling policy, found {len(steps)}")
    policy_name, policy = steps[0]
    config = policy["StepScalingPolicyConfiguration"]
    if config.get("AdjustmentType") != "ChangeInCapacity":
        raise TemplateError("the step policy must be ChangeInCapacity (the model adds tasks)")
    alarms = [
        _props(res)
        for _, res in _by_type(resources, "AWS::CloudWatch::Alarm")
        if _acts_on(_props(res).get("AlarmActions"), policy_name)
    ]
    if len(alarms) != 1:
        raise TemplateError(f"expected one alarm acting on {policy_name}, found {len(alarms)}")
    alarm = alarms[0]
    if alarm.get("ComparisonOperator") != "GreaterThanThreshold":
        raise TemplateError("the scale-from-zero alarm must be GreaterThanThreshold")
    periods = {int(q["MetricStat"]["Period"]) for q in alarm["Metrics"] if "MetricStat" in q}
    evaluation = int(_number(alarm["EvaluationPeriods"], params, "EvaluationPeriods"))
    return {
        "from_zero_threshold": _number(alarm["Threshold"], params, "Threshold"),
        "from_zero_period_seconds": max(periods),
        "from_zero_evaluation_periods": evaluation,
        "from_zero_datapoints_to_alarm": int(
            _number(alarm.get("DatapointsToAlarm", evaluation), params, "DatapointsToAlarm")
        ),
        "from_zero_steps": tuple(
            StepAdjustment(
                lower=(
                    None
                    if "MetricIntervalLowerBound" not in step
                    else _number(step["MetricIntervalLowerBound"], params, "bound")
                ),
                upper=(
                    None
                    if "MetricIntervalUpperBound" not in step
                    else _number(step["MetricIntervalUpperBound"], params, "bound")
                ),
                adjustment=int(_number(step["ScalingAdjustment"], params, "ScalingAdjustment")),
            )
            for step in config["StepAdjustments"]
        ),
        "from_zero_cooldown": _number(config.get("Cooldown", 300), params, "Cooldown"),
    }


def _capacity_providers(resources: Mapping[str, Any], params: Mapping[str, str]) -> dict[str, Any]:
    _, service = _one(resources, "AWS::ECS::Service")
    base, weights = 0, {"FARGATE": 0.0, "FARGATE_SPOT": 0.0}
    for item in _props(service).get("CapacityProviderStrategy", [{"CapacityProvider": "FARGATE"}]):
        provider = item["CapacityProvider"]
        weights[provider] = _number(item.get("Weight", 0), params, "Weight")
        if provider == "FARGATE":
            base = int(_number(item.get("Base", 0), params, "Base"))
        elif item.get("Base"):
            raise TemplateError("a Base on FARGATE_SPOT is not modelled")
    if weights["FARGATE"] == 0 and weights["FARGATE_SPOT"] == 0:
        weights["FARGATE"] = 1.0  # a strategy without weights: every task on FARGATE
    return {
        "fargate_base": base,
        "fargate_weight": weights["FARGATE"],
        "spot_weight": weights["FARGATE_SPOT"],
    }


def _task(resources: Mapping[str, Any], params: Mapping[str, str]) -> dict[str, Any]:
    _, definition = _one(resources, "AWS::ECS::TaskDefinition")
    props = _props(definition)
    workers = [c for c in props["ContainerDefinitions"] if c.get("Name") == "worker"]
    if len(workers) != 1:
        raise TemplateError("no container named worker in the task definition")
    worker = workers[0]
    # Unresolved: other variables refer to resources (!Ref JobQueue) that have no value here.
    env = {e["Name"]: e["Value"] for e in worker.get("Environment", [])}

    def setting(name: str, field_name: str) -> float:
        default = Settings.__dataclass_fields__[field_name].default
        return _number(env.get(name, default), params, name)

    storage = props.get("EphemeralStorage", {}).get("SizeInGiB", 20)  # Fargate's free 20 GiB
    return {
        "task_cpu_units": int(_number(props["Cpu"], params, "Cpu")),
        "task_memory_mib": int(_number(props["Memory"], params, "Memory")),
        "ephemeral_storage_gib": int(_number(storage, params, "EphemeralStorage")),
        "worker_concurrency": int(_number(env["WORKER_CONCURRENCY"], params, "concurrency")),
        "stop_timeout": int(_number(worker.get("StopTimeout", 30), params, "StopTimeout")),
        "shutdown_grace_seconds": setting("SHUTDOWN_GRACE_SECONDS", "shutdown_grace_seconds"),
        "retry_backoff_base_seconds": setting(
            "RETRY_BACKOFF_BASE_SECONDS", "retry_backoff_base_seconds"
        ),
        "retry_backoff_max_seconds": setting(
            "RETRY_BACKOFF_MAX_SECONDS", "retry_backoff_max_seconds"
        ),
    }


def _queue(resources: Mapping[str, Any], params: Mapping[str, str]) -> dict[str, Any]:
    queues = [
        _props(res)
        for _, res in _by_type(resources, "AWS::SQS::Queue")
        if "RedrivePolicy" in _props(res)
    ]
    if len(queues) != 1:
        raise TemplateError(f"expected one queue with a redrive policy, found {len(queues)}")
    queue = queues[0]
    return {
        "visibility_timeout": int(_number(queue.get("VisibilityTimeout", 30), params, "vis")),
        "max_receive_count": int(
            _number(queue["RedrivePolicy"]["maxReceiveCount"], params, "maxReceiveCount")
        ),
    }


def scaling_from_template(
    template: dict[str, Any], values: Mapping[str, str], source: dict[str, Any] | None = None
) -> ScalingConfig:
    """The :class:`ScalingConfig` of a loaded template with these parameter values (pure)."""
    params = effective_parameters(template, values)
    resources = template["Resources"]
    _, target = _one(resources, "AWS::ApplicationAutoScaling::ScalableTarget")
    fields_: dict[str, Any] = {
        "min_tasks": int(_number(_props(target)["MinCapacity"], params, "MinCapacity")),
        "max_tasks": int(_number(_props(target)["MaxCapacity"], params, "MaxCapacity")),
    }
    for part in (_target_tracking, _step_scaling, _capacity_providers, _task, _queue):
        fields_.update(part(resources, params))
    return ScalingConfig(**fields_, source=source or {})


def load_scaling(
    template_path: Path = TEMPLATE_PATH,
    params_path: Path | None = None,
    overrides: Mapping[str, str] | None = None,
) -> ScalingConfig:
    """Read the template, the optional parameter file and ``Name=Value`` overrides.

    The file is parsed and the values checked by ``.ci/deploy.py``; problems with the
    parameters this model reads (and unknown names) raise :class:`TemplateError`.
    """
    deploy = deploy_module()
    try:
        values: dict[str, str] = dict(deploy.read_params(params_path)) if params_path else {}
    except deploy.ParamsError as error:
        raise TemplateError(f"{params_path}: {error}") from None
    values.update(overrides or {})
    template = deploy.load_template(template_path)
    problems = [
        problem
        for problem in deploy.check_params(template_path, values)
        if problem.startswith("unknown parameter")
        or any(problem.startswith(f"{name}=") for name in SCALING_PARAMETERS)
    ]
    if problems:
        raise TemplateError("; ".join(problems))
    source = {
        "template": _display(template_path),
        "params": _display(params_path) if params_path else None,
        "overrides": dict(overrides or {}),
    }
    return scaling_from_template(template, values, source)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
