"""Summaries of runs and the search for the smallest ``MaxTasks`` that meets a p95."""

from __future__ import annotations

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


def smallest_max_tasks(
    config: ScalingConfig,
    cost: CostModel,
    contacts: Contacts,
    options: SimulationOptions,
    prices: Prices,
    slo_p95_minutes: float,
    ceiling: int = 1000,
) -> Summary | None:
    """The run with the smallest ``MaxTasks`` that meets the SLO (None: not even ``ceiling``).

    Bisection: more tasks never make the p95 worse in this model (checked at the bounds).
    """
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
