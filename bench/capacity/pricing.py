"""Fargate list prices and what a simulated day costs.

Defaults: AWS's public Fargate prices for Linux/x86 in eu-west-1 (Ireland), USD, on-demand and
Spot (Spot prices move; these are a typical level, about 70 % off). Check
https://aws.amazon.com/fargate/pricing/ for your region and pass your own with
``--price-*``. Ephemeral storage above Fargate's free 20 GiB is billed per GB-hour.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench.capacity.template import ScalingConfig


@dataclass(frozen=True)
class Prices:
    """USD per unit-hour."""

    vcpu_hour: float = 0.04048
    gb_hour: float = 0.004445
    spot_vcpu_hour: float = 0.012144
    spot_gb_hour: float = 0.0013335
    storage_gb_hour: float = 0.000111
    free_storage_gib: float = 20.0

    def task_hour(self, config: ScalingConfig, spot: bool) -> float:
        """USD for one task of this size for one hour."""
        vcpu = self.spot_vcpu_hour if spot else self.vcpu_hour
        gb = self.spot_gb_hour if spot else self.gb_hour
        storage = max(0.0, config.ephemeral_storage_gib - self.free_storage_gib)
        return config.vcpu * vcpu + config.memory_gib * gb + storage * self.storage_gb_hour


def day_cost(
    config: ScalingConfig, prices: Prices, task_seconds: dict[str, float], media_minutes: float
) -> dict[str, Any]:
    """Cost of the run as simulated (its FARGATE/FARGATE_SPOT mix), all on-demand, all Spot;
    each also per media hour processed."""
    hours = {provider: seconds / 3600 for provider, seconds in task_seconds.items()}
    total_hours = sum(hours.values())
    costs = {
        "as_simulated": hours.get("FARGATE", 0.0) * prices.task_hour(config, spot=False)
        + hours.get("FARGATE_SPOT", 0.0) * prices.task_hour(config, spot=True),
        "all_fargate": total_hours * prices.task_hour(config, spot=False),
        "all_spot": total_hours * prices.task_hour(config, spot=True),
    }
    media_hours = media_minutes / 60
    return {
        "prices": asdict(prices),
        "task_hours": hours,
        "per_day": costs,
        "per_media_hour": {k: (v / media_hours if media_hours else 0.0) for k, v in costs.items()},
    }
