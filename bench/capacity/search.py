"""Summaries of runs and the search for the smallest ``MaxTasks`` that meets a p95."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.capacity.costmodel import CostModel
from bench.capacity.pricing import Prices, day_cost
from bench.capacity.simulator import SimulationOptions, SimulationResult, simulate
from bench.capacity.template import ScalingConfig
from bench.capacity.traffic import Contacts


@dataclass(frozen=True)
class Summary:
    """The numbers a run is judged by."""

    config: ScalingConfig
    result: SimulationResult
    slo_p95_minutes: float
    cost: dict[str, Any]

    @property
    def percentiles_minutes(self) -> dict[str, float]:
        """Message-to-DONE p50/p95/p99 in minutes (inf when nothing got done)."""
        latencies = self.result.latencies
        if len(latencies) == 0:
            return {"p50": float("inf"), "p95": float("inf"), "p99": float("inf")}
        values = np.percentile(latencies, [50, 95, 99]) / 60
        return {"p50": float(values[0]), "p95": float(values[1]), "p99": float(values[2])}

    @property
    def slo_met(self) -> bool:
        """p95 within the SLO and every message done (none unfinished or dead-lettered)."""
        return (
            self.percentiles_minutes["p95"] <= self.slo_p95_minutes
            and self.result.unfinished == 0
            and self.result.dead_lettered == 0
        )

    @property
    def task_hours(self) -> float:
        """Task-hours of the run, both capacity providers."""
        return sum(self.result.task_seconds.values()) / 3600


def run(
    config: ScalingConfig,
    cost: CostModel,
    contacts: Contacts,
    options: SimulationOptions,
    prices: Prices,
    slo_p95_minutes: float,
) -> Summary:
    """Simulate and summarise."""
    result = simulate(config, cost, contacts, options)
    money = day_cost(config, prices, result.task_seconds, float(contacts.media_minutes.sum()))
    return Summary(config, result, slo_p95_minutes, money)


def busiest_hour_tasks(config: ScalingConfig, cost: CostModel, contacts: Contacts) -> float:
    """Tasks the busiest hour's work keeps busy (job seconds / slots / 3600), no waste."""
    if len(contacts) == 0:
        return 0.0
    hours = (contacts.sent // 3600).astype(int)
    work = np.zeros(int(hours.max()) + 1)
    seconds = [cost.job_seconds(float(m), config.vcpu_per_slot) for m in contacts.media_minutes]
    np.add.at(work, hours, seconds)
    return float(work.max()) / config.worker_concurrency / 3600


def smallest_max_tasks(
    config: ScalingConfig,
    cost: CostModel,
    contacts: Contacts,
    options: SimulationOptions,
    prices: Prices,
    slo_p95_minutes: float,
    ceiling: int | None = None,
) -> Summary | None:
    """The run with the smallest ``MaxTasks`` that meets the SLO (None: not even ``ceiling``,
    by default 4x the busiest hour's tasks).

    Bisection: more tasks never make the p95 worse in this model (checked at the bounds).
    """
    if ceiling is None:
        ideal = busiest_hour_tasks(config, cost, contacts) / options.cpu_speed
        ceiling = max(10, math.ceil(4 * ideal))
    top = run(config.with_parameters(max_tasks=ceiling), cost, contacts, options, prices,
              slo_p95_minutes)  # fmt: skip
    if not top.slo_met:
        return None
    low, high, best = max(1, config.min_tasks), max(1, top.result.max_running), top
    if high < ceiling:
        best = run(config.with_parameters(max_tasks=high), cost, contacts, options, prices,
                   slo_p95_minutes)  # fmt: skip
        if not best.slo_met:  # the cap changed the dynamics: keep the ceiling's run
            low, high, best = high + 1, ceiling, top
    while low < high:
        middle = (low + high) // 2
        attempt = run(config.with_parameters(max_tasks=middle), cost, contacts, options, prices,
                      slo_p95_minutes)  # fmt: skip
        if attempt.slo_met:
            high, best = middle, attempt
        else:
            low = middle + 1
    return best


def search_targets(
    config: ScalingConfig,
    cost: CostModel,
    contacts: Contacts,
    options: SimulationOptions,
    prices: Prices,
    slo_p95_minutes: float,
    targets: Sequence[float],
) -> list[tuple[float, Summary | None]]:
    """For each backlog-per-task target, the smallest ``MaxTasks`` run meeting the SLO."""
    return [
        (
            target,
            smallest_max_tasks(
                config.with_parameters(backlog_target=target),
                cost,
                contacts,
                options,
                prices,
                slo_p95_minutes,
            ),
        )
        for target in targets
    ]
