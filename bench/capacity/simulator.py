"""A discrete-event simulation of a day of the service: SQS, the workers, autoscaling.

One heap of timed events; nothing advances second by second. What is modelled, and how:

- **SQS**: a message is visible from its send; a task with a free slot receives it at once
  (the worker long-polls only while a slot is free, for at most its free slots). Which free
  task gets it is random (SQS hands a message to any waiting poll). A job's heartbeat keeps it
  invisible while it runs. A failed attempt (Connect's audio not there yet) becomes visible
  again after ``worker.outcome.backoff_seconds`` for its receive count; on the queue's
  ``maxReceiveCount``-th receive it is dead-lettered instead (counted, not retried).
- **Workers**: ``WorkerConcurrency`` slots per task; job seconds from the cost model with the
  task's vCPU shared by its slots. A task starts ``startup_seconds`` after it is launched.
- **Scale-in protection**: a task with a job running is protected; when the desired count
  drops, ECS stops pending tasks, then idle ones; a busy task above the desired count is
  stopped when it goes idle (with nothing visible to take).
- **Spot interruptions**: each FARGATE_SPOT task is interrupted at ``spot_interruptions_per_hour``
  (exponential). SIGTERM: the worker stops receiving, jobs get ``SHUTDOWN_GRACE_SECONDS``;
  those still running are given back (visible at once) when the grace fits the container's
  ``StopTimeout``, else they reappear after the visibility timeout. The service launches a
  replacement when the task has stopped.
- **CloudWatch and Application Auto Scaling**: 1-minute datapoints (time-weighted averages and
  maxima of visible messages and running tasks), seen ``metric_delay_minutes`` late. Target
  tracking on ``(visible + not visible) / running`` (the template's metric; not visible = jobs
  in flight + messages hidden by a retry backoff or a killed task's unexpired visibility
  timeout) or on ``visible / running`` (the earlier template's): its high alarm needs 3
  datapoints above the target, its low alarm 15 below 90 % of it; while in alarm, Application
  Auto Scaling sets the desired count to ``ceil(current x metric / target)`` each minute,
  within ``[MinTasks, MaxTasks]``. Scale-out during the scale-out cooldown counts the capacity
  the cooldown's activity added (computed from the capacity before it); scale-in waits for the
  scale-in cooldown and for the scale-out cooldown; with no running task the ratio has no
  data. The step policy from zero: its alarm (``IF(FILL(tasks, 0) == 0, visible, 0) >
  threshold``, the template's periods) adds the matching step's tasks, then waits its
  cooldown. Target tracking does nothing at a desired count of zero (``0 x anything``).
- **Capacity providers**: the service's base on FARGATE, then tasks split by the weights.

The day's messages are all sent within 24 hours; the run goes on until every message is done
or dead-lettered (bounded), and every task-second is billed.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.capacity.costmodel import CostModel
from bench.capacity.template import ScalingConfig
from bench.capacity.traffic import Contacts
from worker.outcome import backoff_seconds

# Event kinds, in the order they are handled when simultaneous.
_VISIBLE, _JOB_END, _TASK_READY, _SPOT, _GRACE_END, _MINUTE = range(6)
# Target tracking's alarms (Application Auto Scaling creates them): 3 datapoints above the
# target to scale out; 15 below 90 % of it to scale in.
HIGH_DATAPOINTS = 3
LOW_DATAPOINTS = 15
LOW_FRACTION = 0.9
# After the day, the run stops this long after the last message at the latest.
MAX_TAIL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class SimulationOptions:
    """What the template does not say: AWS's and the platform's own behaviour."""

    startup_seconds: float = 60.0
    spot_interruptions_per_hour: float = 0.02
    metric_delay_minutes: int = 1
    cpu_speed: float = 1.0
    scale_in_protection: bool = True
    # Application Auto Scaling documents scale-in as "more gradual" than scale-out without a
    # formula; 1.0 applies the proportional formula, smaller values cap each scale-in
    # activity at this fraction of the desired count (at least one task).
    max_scale_in_fraction: float = 1.0
    seed: int = 1


@dataclass
class _Message:
    __slots__ = ("audio_ready", "done", "media_minutes", "receives", "sent", "token")
    sent: float
    audio_ready: float
    media_minutes: float
    receives: int
    done: float
    token: int


@dataclass
class _Task:
    __slots__ = ("id", "jobs", "launched", "spot", "state", "stopped")
    id: int
    spot: bool
    launched: float
    state: str  # new, pending, running, draining, stopped
    jobs: dict[int, int]  # message index -> attempt token
    stopped: float


class _Gauge:
    """A step function of time: per-minute time-weighted average and maximum."""

    __slots__ = ("integral", "last", "maximum", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.last = 0.0
        self.integral = 0.0
        self.maximum = 0.0

    def set(self, now: float, value: float) -> None:
        self.integral += self.value * (now - self.last)
        self.last = now
        self.value = value
        self.maximum = max(self.maximum, value)

    def close(self, now: float, seconds: float) -> tuple[float, float]:
        self.integral += self.value * (now - self.last)
        result = (self.integral / seconds, self.maximum)
        self.integral, self.last, self.maximum = 0.0, now, self.value
        return result


class _FreeTasks:
    """Running tasks with a free slot: O(1) add, remove and random choice."""

    def __init__(self) -> None:
        self.items: list[_Task] = []
        self.index: dict[int, int] = {}

    def add(self, task: _Task) -> None:
        if task.id not in self.index:
            self.index[task.id] = len(self.items)
            self.items.append(task)

    def discard(self, task: _Task) -> None:
        position = self.index.pop(task.id, None)
        if position is None:
            return
        last = self.items.pop()
        if last.id != task.id:
            self.items[position] = last
            self.index[last.id] = position

    def choice(self, rng: random.Random) -> _Task:
        return self.items[rng.randrange(len(self.items))]


@dataclass
class SimulationResult:
    """What a run measured (per message, per minute, per task)."""

    sent: np.ndarray
    done: np.ndarray  # nan: dead-lettered or unfinished
    media_minutes: np.ndarray
    dead_lettered: int
    attempts: int
    not_ready_attempts: int
    interrupted_jobs: int
    spot_interruptions: int
    task_seconds: dict[str, float]
    timeline: dict[str, list[float]]
    end_seconds: float
    max_running: int
    peak_desired: int
    scaling_activities: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def latencies(self) -> np.ndarray:
        """Seconds from message to DONE of every message that got done."""
        finished = ~np.isnan(self.done)
        result: np.ndarray = self.done[finished] - self.sent[finished]
        return result

    @property
    def unfinished(self) -> int:
        """Messages neither done nor dead-lettered when the run stopped."""
        return int(np.isnan(self.done).sum()) - self.dead_lettered


class Simulation:
    """One run; :func:`simulate` is the entry point."""

    def __init__(
        self,
        config: ScalingConfig,
        cost: CostModel,
        contacts: Contacts,
        options: SimulationOptions,
    ) -> None:
        self.config = config
        self.cost = cost
        self.options = options
        self.rng = random.Random(options.seed)
        self.events: list[tuple[float, int, int, Any, Any]] = []
        self.seq = itertools.count()
        n = len(contacts)
        self.messages = [
            _Message(float(s), float(s + d), float(m), 0, math.nan, 0)
            for s, d, m in zip(
                contacts.sent, contacts.audio_delay, contacts.media_minutes, strict=True
            )
        ]
        self.visible: deque[int] = deque()
        self.tasks: dict[int, _Task] = {}  # live tasks (stopped ones are removed)
        self.state_counts = {"pending": 0, "running": 0, "draining": 0}
        self.live_by_provider = {False: 0, True: 0}
        self.free = _FreeTasks()
        self.next_task_id = 0
        self.desired = config.min_tasks
        self.outstanding = n  # not yet done or dead-lettered
        self.in_system = 0
        self.dead_lettered = 0
        self.attempts = 0
        self.not_ready_attempts = 0
        self.interrupted = 0
        self.spot_interruptions = 0
        self.activities = 0
        self.task_seconds = {"FARGATE": 0.0, "FARGATE_SPOT": 0.0}
        self.gauges = {
            "visible": _Gauge(),
            "running": _Gauge(),
            "in_system": _Gauge(),
            "busy_slots": _Gauge(),
        }
        self.busy_slots = 0
        self.datapoints: list[dict[str, float]] = []
        self.timeline: dict[str, list[float]] = {
            "visible": [],
            "visible_max": [],
            "running": [],
            "desired": [],
            "in_system": [],
            "busy_slots": [],
            "arrivals": [],
        }
        self.arrivals_this_minute = 0
        self.peak_desired = self.desired
        self.max_running = 0
        # Application Auto Scaling's cooldown state.
        self.scale_out_until = -math.inf
        self.scale_out_base = 0
        self.scale_in_until = -math.inf
        self.step_until = -math.inf
        self.last_arrival = float(contacts.sent[-1]) if n else 0.0
        self._arrival_index = 0
        self._arrival_times = contacts.sent
        for _ in range(self.desired):
            self._launch(0.0, ready_at=0.0)

    # --- events ----------------------------------------------------------------------------

    def _push(self, time: float, kind: int, a: Any = None, b: Any = None) -> None:
        heapq.heappush(self.events, (time, next(self.seq), kind, a, b))

    def run(self) -> SimulationResult:
        """Run to the end: every message done or dead-lettered, or the tail bound."""
        self._push(60.0, _MINUTE)
        arrivals = self._arrival_times
        n = len(arrivals)
        limit = self.last_arrival + MAX_TAIL_SECONDS
        now = 0.0
        while self.events:
            # Arrivals are pre-sorted: merged with the heap instead of pushed into it.
            if self._arrival_index < n and arrivals[self._arrival_index] <= self.events[0][0]:
                now = float(arrivals[self._arrival_index])
                self._arrive(now, self._arrival_index)
                self._arrival_index += 1
                continue
            now, _, kind, a, b = heapq.heappop(self.events)
            if now > limit:
                break
            if kind == _VISIBLE:
                self._make_visible(now, a)
            elif kind == _JOB_END:
                self._job_end(now, a, b)
            elif kind == _TASK_READY:
                self._task_ready(now, a)
            elif kind == _SPOT:
                self._interrupt(now, a)
            elif kind == _GRACE_END:
                self._grace_end(now, a)
            elif kind == _MINUTE:
                self._minute(now)
                if self._finished(now):
                    break
                self._push(now + 60.0, _MINUTE)
        for task in self.tasks.values():
            self._bill(task, now)
        return SimulationResult(
            sent=np.array([m.sent for m in self.messages]),
            done=np.array([m.done for m in self.messages]),
            media_minutes=np.array([m.media_minutes for m in self.messages]),
            dead_lettered=self.dead_lettered,
            attempts=self.attempts,
            not_ready_attempts=self.not_ready_attempts,
            interrupted_jobs=self.interrupted,
            spot_interruptions=self.spot_interruptions,
            task_seconds=dict(self.task_seconds),
            timeline=self.timeline,
            end_seconds=now,
            max_running=self.max_running,
            peak_desired=self.peak_desired,
            scaling_activities=self.activities,
        )

    def _finished(self, now: float) -> bool:
        """The day is over, every message handled, and the service is back at its minimum."""
        return (
            self._arrival_index >= len(self._arrival_times)
            and now > self.last_arrival
            and self.outstanding == 0
            and self._active() <= self.config.min_tasks
        )

    # --- messages --------------------------------------------------------------------------

    def _arrive(self, now: float, index: int) -> None:
        self.arrivals_this_minute += 1
        self.in_system += 1
        self.gauges["in_system"].set(now, self.in_system)
        self._make_visible(now, index)

    def _make_visible(self, now: float, index: int) -> None:
        self.visible.append(index)
        self.gauges["visible"].set(now, len(self.visible))
        self._dispatch(now)

    def _dispatch(self, now: float) -> None:
        while self.visible and self.free.items:
            task = self.free.choice(self.rng)
            index = self.visible.popleft()
            self._start(now, task, index)
        self.gauges["visible"].set(now, len(self.visible))

    def _start(self, now: float, task: _Task, index: int) -> None:
        message = self.messages[index]
        message.receives += 1
        message.token += 1
        self.attempts += 1
        task.jobs[index] = message.token
        self.busy_slots += 1
        self.gauges["busy_slots"].set(now, self.busy_slots)
        if len(task.jobs) >= self.config.worker_concurrency:
            self.free.discard(task)
        if now >= message.audio_ready:
            seconds = self.cost.job_seconds(
                message.media_minutes, self._vcpu_per_job(task), self.options.cpu_speed
            )
            self._push(now + seconds, _JOB_END, task, (index, message.token, True))
        else:
            self.not_ready_attempts += 1
            self._push(
                now + self.cost.not_ready_seconds, _JOB_END, task, (index, message.token, False)
            )

    def _vcpu_per_job(self, task: _Task) -> float:
        # A job's share when every slot is busy: the pessimistic case at the scale of interest.
        return self.config.vcpu_per_slot

    def _job_end(self, now: float, task: _Task, job: tuple[int, int, bool]) -> None:
        index, token, success = job
        if task.jobs.get(index) != token:
            return  # given back on a stop; this attempt's end never happens
        del task.jobs[index]
        self.busy_slots -= 1
        self.gauges["busy_slots"].set(now, self.busy_slots)
        message = self.messages[index]
        if success:
            message.done = now
            self._leave(now)
        elif (
            self.config.max_receive_count is not None
            and message.receives >= self.config.max_receive_count
        ):
            self.dead_lettered += 1
            self._leave(now)
        else:
            delay = backoff_seconds(
                message.receives,
                self.config.retry_backoff_base_seconds,
                self.config.retry_backoff_max_seconds,
                self.rng,
            )
            self._push(now + delay, _VISIBLE, index)
        self._slot_freed(now, task)

    def _leave(self, now: float) -> None:
        self.outstanding -= 1
        self.in_system -= 1
        self.gauges["in_system"].set(now, self.in_system)

    def _slot_freed(self, now: float, task: _Task) -> None:
        if task.state == "draining":
            if not task.jobs:
                self._stop(now, task)
            return
        if self.visible:
            self.free.add(task)
            self._dispatch(now)
            return
        if not task.jobs and self._active() > self.desired:
            self._stop(now, task)  # protection lifted: ECS removes the surplus task
            return
        self.free.add(task)

    # --- tasks -----------------------------------------------------------------------------

    def _set_state(self, task: _Task, state: str) -> None:
        """Move a task to ``state``, keeping the per-state and per-provider counts."""
        if task.state != "new":
            self.state_counts[task.state] -= 1
        if state == "stopped":
            self.live_by_provider[task.spot] -= 1
            del self.tasks[task.id]
        else:
            self.state_counts[state] += 1
            if task.state == "new":
                self.live_by_provider[task.spot] += 1
        task.state = state

    def _active(self) -> int:
        return self.state_counts["pending"] + self.state_counts["running"]

    def _running(self) -> int:
        return self.state_counts["running"] + self.state_counts["draining"]

    def _choose_spot(self) -> bool:
        fargate = self.live_by_provider[False]
        spot = self.live_by_provider[True]
        if fargate < self.config.fargate_base or self.config.spot_weight <= 0:
            return False
        if self.config.fargate_weight <= 0:
            return True
        beyond_base = fargate - self.config.fargate_base
        return (spot + 1) / self.config.spot_weight <= (
            beyond_base + 1
        ) / self.config.fargate_weight

    def _launch(self, now: float, ready_at: float | None = None) -> None:
        task = _Task(self.next_task_id, self._choose_spot(), now, "new", {}, math.nan)
        self.next_task_id += 1
        self.tasks[task.id] = task
        self._set_state(task, "pending")
        start = now + self.options.startup_seconds if ready_at is None else ready_at
        self._push(start, _TASK_READY, task)

    def _task_ready(self, now: float, task: _Task) -> None:
        if task.state != "pending":
            return
        self._set_state(task, "running")
        self.gauges["running"].set(now, self._running())
        self.max_running = max(self.max_running, self._running())
        if task.spot and self.options.spot_interruptions_per_hour > 0:
            wait = self.rng.expovariate(self.options.spot_interruptions_per_hour / 3600)
            self._push(now + wait, _SPOT, task)
        self.free.add(task)
        self._dispatch(now)

    def _interrupt(self, now: float, task: _Task) -> None:
        """SIGTERM (Spot interruption or a stop of a busy task without protection)."""
        if task.state != "running":
            return
        self.spot_interruptions += task.spot
        self._terminate(now, task)

    def _terminate(self, now: float, task: _Task) -> None:
        self.free.discard(task)
        if not task.jobs:
            self._stop(now, task)
            return
        self._set_state(task, "draining")
        self._push(now + self.config.shutdown_grace_seconds, _GRACE_END, task)

    def _grace_end(self, now: float, task: _Task) -> None:
        if task.state != "draining":
            return
        for index in list(task.jobs):
            del task.jobs[index]
            self.busy_slots -= 1
            self.interrupted += 1
            if self.config.gives_back_on_stop:
                self._push(now, _VISIBLE, index)
            else:  # killed: invisible until the last heartbeat's extension runs out
                remaining = self.rng.uniform(
                    self.config.visibility_timeout * 2 / 3, self.config.visibility_timeout
                )
                self._push(now + remaining, _VISIBLE, index)
        self.gauges["busy_slots"].set(now, self.busy_slots)
        self._stop(now, task)

    def _stop(self, now: float, task: _Task) -> None:
        self.free.discard(task)
        self._set_state(task, "stopped")
        self._bill(task, now)
        self.gauges["running"].set(now, self._running())
        # The service replaces a task stopped under it (Spot); after a scale-in it is at the
        # desired count already.
        if self._active() < self.desired:
            self._launch(now)

    def _bill(self, task: _Task, now: float) -> None:
        task.stopped = now
        self.task_seconds["FARGATE_SPOT" if task.spot else "FARGATE"] += now - task.launched

    # --- scaling ---------------------------------------------------------------------------

    def _set_desired(self, now: float, desired: int) -> None:
        desired = max(self.config.min_tasks, min(self.config.max_tasks, desired))
        if desired == self.desired:
            return
        self.activities += 1
        self.desired = desired
        self.peak_desired = max(self.peak_desired, desired)
        active = [t for t in self.tasks.values() if t.state in ("pending", "running")]
        for _ in range(desired - len(active)):
            self._launch(now)
        surplus = len(active) - desired
        if surplus <= 0:
            return
        # ECS stops pending tasks first, then idle ones; busy ones hold scale-in protection.
        order = sorted(active, key=lambda t: (t.state != "pending", bool(t.jobs), -t.launched))
        for task in order[:surplus]:
            if task.state == "pending":
                self._set_state(task, "stopped")
                self._bill(task, now)
            elif not task.jobs:
                self._stop(now, task)
            elif not self.options.scale_in_protection:
                self._terminate(now, task)
            # else: protected; stopped when it goes idle (_slot_freed)

    def _minute(self, now: float) -> None:
        visible, visible_max = self.gauges["visible"].close(now, 60.0)
        running, running_max = self.gauges["running"].close(now, 60.0)
        in_system, _ = self.gauges["in_system"].close(now, 60.0)
        busy, _ = self.gauges["busy_slots"].close(now, 60.0)
        self.datapoints.append(
            {
                "visible": visible,
                "visible_max": visible_max,
                "running": running,
                "running_max": running_max,
                # SQS's ApproximateNumberOfMessagesNotVisible: every message in the system
                # that is not visible, i.e. in flight or hidden by a retry backoff.
                "not_visible": in_system - visible,
            }
        )
        line = self.timeline
        line["visible"].append(visible)
        line["visible_max"].append(visible_max)
        line["running"].append(running)
        line["desired"].append(float(self.desired))
        line["in_system"].append(in_system)
        line["busy_slots"].append(busy)
        line["arrivals"].append(float(self.arrivals_this_minute))
        self.arrivals_this_minute = 0
        seen = len(self.datapoints) - self.options.metric_delay_minutes
        if seen > 0:
            self._target_tracking(now, self.datapoints[:seen])
            self._step_from_zero(now, self.datapoints[:seen])

    def _target_tracking(self, now: float, points: list[dict[str, float]]) -> None:
        target = self.config.backlog_target

        in_flight = self.config.backlog_counts_in_flight
        counted = ("visible", "not_visible") if in_flight else ("visible",)

        def ratio(point: dict[str, float]) -> float | None:
            backlog = sum(point[name] for name in counted)
            return backlog / point["running"] if point["running"] > 0 else None

        recent = [ratio(p) for p in points[-LOW_DATAPOINTS:]]
        latest = recent[-1]
        if latest is None or self.desired == 0:
            return
        high = recent[-HIGH_DATAPOINTS:]
        if len(high) == HIGH_DATAPOINTS and all(r is not None and r > target for r in high):
            in_cooldown = now < self.scale_out_until
            base = self.scale_out_base if in_cooldown else self.desired
            wanted = math.ceil(base * latest / target)
            if wanted > self.desired:
                if not in_cooldown:
                    self.scale_out_base = self.desired
                    self.scale_out_until = now + self.config.scale_out_cooldown
                self._set_desired(now, wanted)
            return
        if (
            not self.config.disable_scale_in
            and len(recent) == LOW_DATAPOINTS
            and all(r is not None and r < LOW_FRACTION * target for r in recent)
            and now >= self.scale_in_until
            and now >= self.scale_out_until
        ):
            wanted = math.ceil(self.desired * latest / target)
            step = max(1, math.floor(self.desired * self.options.max_scale_in_fraction))
            wanted = max(wanted, self.desired - step)
            if wanted < self.desired:
                self.scale_in_until = now + self.config.scale_in_cooldown
                self._set_desired(now, wanted)

    def _step_from_zero(self, now: float, points: list[dict[str, float]]) -> None:
        config = self.config
        per_period = max(1, config.from_zero_period_seconds // 60)
        periods = len(points) // per_period
        if periods < config.from_zero_evaluation_periods:
            return
        values = []
        for p in range(periods - config.from_zero_evaluation_periods, periods):
            block = points[p * per_period : (p + 1) * per_period]
            tasks = max(b["running_max"] for b in block)
            visible = max(b["visible_max"] for b in block)
            values.append(visible if tasks == 0 else 0.0)
        breaching = sum(1 for v in values if v > config.from_zero_threshold)
        if breaching < config.from_zero_datapoints_to_alarm or now < self.step_until:
            return
        excess = values[-1] - config.from_zero_threshold
        for step in config.from_zero_steps:
            if step.matches(excess):
                self.step_until = now + config.from_zero_cooldown
                self._set_desired(now, self.desired + step.adjustment)
                return


def simulate(
    config: ScalingConfig,
    cost: CostModel,
    contacts: Contacts,
    options: SimulationOptions | None = None,
) -> SimulationResult:
    """Run one day (see the module docstring)."""
    return Simulation(config, cost, contacts, options or SimulationOptions()).run()
