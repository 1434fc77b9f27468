"""Write a capacity run: markdown table, JSON, and a PNG of tasks and backlog over the day."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.capacity.search import Summary


def summary_dict(summary: Summary, timeline: bool = True) -> dict[str, Any]:
    """The JSON form of one run (with its per-minute timeline unless ``timeline`` is False)."""
    result = summary.result
    config = asdict(summary.config)
    return {
        "settings": {
            "MinTasks": summary.config.min_tasks,
            "MaxTasks": summary.config.max_tasks,
            "BacklogPerTaskTarget": summary.config.backlog_target,
            "TaskCpu": summary.config.task_cpu_units,
            "TaskMemory": summary.config.task_memory_mib,
            "WorkerConcurrency": summary.config.worker_concurrency,
        },
        "config": config,
        "messages": len(result.sent),
        "media_hours": float(result.media_minutes.sum() / 60),
        "message_to_done_minutes": summary.percentiles_minutes,
        "slo_p95_minutes": summary.slo_p95_minutes,
        "slo_met": summary.slo_met,
        "dead_lettered": result.dead_lettered,
        "unfinished": result.unfinished,
        "attempts": result.attempts,
        "not_ready_attempts": result.not_ready_attempts,
        "interrupted_jobs": result.interrupted_jobs,
        "spot_interruptions": result.spot_interruptions,
        "task_hours": summary.task_hours,
        "max_running_tasks": result.max_running,
        "peak_desired_tasks": result.peak_desired,
        "scaling_activities": result.scaling_activities,
        "run_hours": result.end_seconds / 3600,
        "cost": summary.cost,
        **(
            {
                "timeline_per_minute": {
                    k: [round(v, 2) for v in vs] for k, vs in result.timeline.items()
                }
            }
            if timeline
            else {}
        ),
    }


def table_row(label: str, summary: Summary | None) -> str:
    """One markdown row: what to set and what it gives."""
    if summary is None:
        return f"| {label} | - | - | - | no MaxTasks up to the ceiling meets it | | | | | |"
    p = summary.percentiles_minutes
    c = summary.config
    cost = summary.cost
    return (
        f"| {label} | {c.max_tasks} | {c.backlog_target:g} | "
        f"{c.vcpu:g} vCPU / {c.memory_gib:g} GB / {c.worker_concurrency} slots | "
        f"{p['p50']:.1f} / {p['p95']:.1f} / {p['p99']:.1f} | "
        f"{'yes' if summary.slo_met else '**no**'} | {summary.task_hours:.0f} | "
        f"{summary.result.max_running} | "
        f"${cost['per_day']['as_simulated']:.2f} (${cost['per_day']['all_fargate']:.2f} / "
        f"${cost['per_day']['all_spot']:.2f}) | "
        f"${cost['per_media_hour']['as_simulated']:.4f} |"
    )


TABLE_HEADER = (
    "| Scenario | MaxTasks | Backlog target | Task | p50 / p95 / p99 min | SLO met | Task-hours | "
    "Max tasks | Cost/day as simulated (all Fargate / all Spot) | Cost per media hour |\n"
    "|---|--:|--:|---|---|---|--:|--:|---|--:|"
)


def chart(summary: Summary, path: Path, title: str) -> None:
    """Tasks (desired, running, busy slots / slots) and visible backlog per minute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    line = summary.result.timeline
    hours = (np.arange(len(line["desired"])) + 1) / 60
    figure, (tasks_axis, backlog_axis) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    tasks_axis.plot(hours, line["desired"], label="desired count", drawstyle="steps-post")
    tasks_axis.plot(hours, line["running"], label="running tasks (1-min average)")
    tasks_axis.plot(
        hours,
        np.asarray(line["busy_slots"]) / summary.config.worker_concurrency,
        label="busy slots / WorkerConcurrency",
        alpha=0.7,
    )
    tasks_axis.axhline(summary.config.max_tasks, color="grey", linestyle=":", label="MaxTasks")
    tasks_axis.set_ylabel("tasks")
    tasks_axis.legend(loc="upper left", fontsize=8)
    tasks_axis.set_title(title)
    backlog_axis.plot(hours, line["visible"], label="visible messages (1-min average)")
    backlog_axis.plot(hours, line["arrivals"], label="messages sent per minute", alpha=0.7)
    backlog_axis.set_ylabel("messages")
    backlog_axis.set_xlabel("hour of the day (UTC)")
    backlog_axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write(out_dir: Path, document: dict[str, Any], markdown: str) -> None:
    """capacity.json and capacity.md in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "capacity.json").write_text(json.dumps(document, indent=1) + "\n")
    (out_dir / "capacity.md").write_text(markdown)
