"""How long one job takes: a cost model fitted to ``make bench`` results.

    job seconds = fixed
                + cpu seconds per media minute x minutes / (vCPU a slot gets, at most 1)
                + bytes per media minute x minutes / transfer bytes per second

Where each coefficient comes from (``fit_cost_model``, a pure function of the results files):

- **fixed**: the worker's median time per job outside ffmpeg (row read, lease, Connect lookup,
  row update: ``worker.median_overhead_seconds`` of ``bench/results/results.json``) plus the
  call-end sync's median cost (``sync.cost.median_seconds`` of
  ``bench/results/issue-13/results.json``; the whole-job runs predate the sync).
- **transfer**: the whole-job runs (``worker.jobs_rss``: one 5-minute and one 60-minute
  recording through ``komorebi-worker run`` against moto): bytes moved per media minute =
  inputs + outputs (the job's peak scratch, which the bench shows is exactly inputs + outputs)
  over the minutes; throughput = those bytes over the download + upload stage seconds.
- **cpu per media minute**: what is left of those runs' job seconds (job - fixed - transfer),
  least squares through the origin against the minutes. The bench machine's core counts as one
  vCPU (``--cpu-speed`` scales it). ffmpeg's work here is single-threaded (CPU time equals
  wall time in every bench row), so a slot gets at most one vCPU's worth: a 4-vCPU task with
  2 slots is not faster per job than a 2-vCPU one; a 1-vCPU task with 2 slots is half as fast
  when both are busy.

The fit is weighted by seconds, so the long jobs that dominate capacity fit best: it
reproduces the 60-minute job (80 s) within a second and over-estimates the 5-minute one
(about 7 s against 4.5 s). The bench's transfers ran against moto on the same 2 cores, which
also slowed the 60-minute job's merge (moto used 24 s of CPU beside it); real S3 from Fargate
is usually faster, so the model is on the safe side (``--transfer-mib-per-s`` overrides it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.capacity.template import ROOT

RESULTS_PATH = ROOT / "bench" / "results" / "results.json"
SYNC_RESULTS_PATH = ROOT / "bench" / "results" / "issue-13" / "results.json"
MIB = 1024 * 1024


@dataclass(frozen=True)
class CostModel:
    """Seconds of one job attempt as a function of its media length and its CPU share."""

    fixed_seconds: float
    cpu_seconds_per_media_minute: float
    bytes_per_media_minute: float
    transfer_bytes_per_second: float
    # A job's ffmpeg work uses one core at most (CPU time = wall time in the bench).
    max_vcpu_per_job: float = 1.0
    # Seconds of an attempt that finds no Connect recording yet: the row read, the lease and
    # the S3 listing, nothing downloaded (the worker's overhead outside ffmpeg).
    not_ready_seconds: float = 0.0

    def job_seconds(
        self, media_minutes: float, vcpu_per_slot: float, cpu_speed: float = 1.0
    ) -> float:
        """Seconds of a whole successful job of ``media_minutes`` on a slot with that CPU."""
        speed = min(vcpu_per_slot, self.max_vcpu_per_job) * cpu_speed
        compute = self.cpu_seconds_per_media_minute * media_minutes / speed
        transfer = self.bytes_per_media_minute * media_minutes / self.transfer_bytes_per_second
        return self.fixed_seconds + compute + transfer

    def with_transfer_mib_per_s(self, mib_per_s: float | None) -> CostModel:
        """The same model with another S3 throughput (None: unchanged)."""
        if mib_per_s is None:
            return self
        return CostModel(**{**asdict(self), "transfer_bytes_per_second": mib_per_s * MIB})


def fit_cost_model(results: Mapping[str, Any], sync_results: Mapping[str, Any] | None) -> CostModel:
    """Fit the model to a ``make bench`` results document (see the module docstring)."""
    worker = results["worker"]
    runs = worker["jobs_rss"]
    if not runs:
        raise ValueError("the results hold no whole-job runs (worker.jobs_rss)")
    overhead = float(worker["median_overhead_seconds"])
    sync = float(sync_results["sync"]["cost"]["median_seconds"]) if sync_results else 0.0
    fixed = overhead + sync
    minutes = [float(run["minutes"]) for run in runs]
    moved = [float(run["peak_scratch_bytes"]) for run in runs]
    transfer = [
        float(run["mean_stage_seconds"]["download"] + run["mean_stage_seconds"]["upload"])
        for run in runs
    ]
    bytes_per_minute = sum(moved) / sum(minutes)
    throughput = sum(moved) / sum(transfer)
    compute = [
        float(run["mean_job_seconds"]) - fixed - seconds
        for run, seconds in zip(runs, transfer, strict=True)
    ]
    cpu_per_minute = sum(m * c for m, c in zip(minutes, compute, strict=True)) / sum(
        m * m for m in minutes
    )
    return CostModel(
        fixed_seconds=fixed,
        cpu_seconds_per_media_minute=cpu_per_minute,
        bytes_per_media_minute=bytes_per_minute,
        transfer_bytes_per_second=throughput,
        not_ready_seconds=overhead,
    )


def load_cost_model(
    results_path: Path = RESULTS_PATH, sync_results_path: Path | None = SYNC_RESULTS_PATH
) -> CostModel:
    """:func:`fit_cost_model` on the files ``make bench`` wrote."""
    results = json.loads(results_path.read_text())
    sync = None
    if sync_results_path is not None and sync_results_path.is_file():
        sync = json.loads(sync_results_path.read_text())
    return fit_cost_model(results, sync)


def measured_jobs(results: Mapping[str, Any]) -> list[tuple[float, float]]:
    """(media minutes, measured job seconds) of each whole-job run, to compare with the fit."""
    return [
        (float(run["minutes"]), float(run["mean_job_seconds"]))
        for run in results["worker"]["jobs_rss"]
    ]
