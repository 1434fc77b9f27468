"""`make capacity` / `python -m bench.capacity`: simulate a contact center's day on the
template's own scaling and write bench/results/capacity/ (docs/capacity.md explains it).

    .venv/bin/python -m bench.capacity --contacts-per-day 40000 --peak-factor 4 \\
        --params infra/params/staging.env --set MaxTasks=30 --search
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.capacity import report
from bench.capacity.costmodel import RESULTS_PATH, SYNC_RESULTS_PATH, load_cost_model
from bench.capacity.pricing import Prices
from bench.capacity.search import Summary, busiest_hour_tasks, run, search_targets
from bench.capacity.simulator import SimulationOptions
from bench.capacity.template import TEMPLATE_PATH, TemplateError, load_scaling
from bench.capacity.traffic import TrafficProfile, call_lengths, generate, minute_rates

OUT_DIR = Path(__file__).resolve().parents[1] / "results" / "capacity"


def _floats(text: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{text[:40]!r}: comma-separated numbers expected") from None


def parser() -> argparse.ArgumentParser:
    """The command line (every default documented in docs/capacity.md)."""
    p = argparse.ArgumentParser(
        prog="python -m bench.capacity", description=__doc__.splitlines()[0]
    )
    load = p.add_argument_group("traffic")
    load.add_argument(
        "--agents",
        default="2000",
        help="comma-separated agent counts, one scenario each (default 2000)",
    )
    load.add_argument("--contacts-per-agent", type=float, default=20.0)
    load.add_argument(
        "--contacts-per-day",
        type=float,
        help="one scenario of this many contacts (instead of --agents)",
    )
    load.add_argument(
        "--peak-factor",
        type=float,
        default=4.0,
        help="busiest hour / average hour (a bell-shaped day)",
    )
    load.add_argument("--peak-hour", type=float, default=13.0, help="centre of the bell (UTC)")
    load.add_argument("--hourly-weights", help="24 comma-separated weights instead of the bell")
    load.add_argument("--length-median", type=float, default=12.0, help="minutes")
    load.add_argument("--length-sigma", type=float, default=0.7, help="lognormal sigma")
    load.add_argument("--length-min", type=float, default=5.0, help="minutes")
    load.add_argument("--length-max", type=float, default=60.0, help="minutes")
    load.add_argument(
        "--upload-delay-min",
        type=float,
        default=10.0,
        help="seconds from call end to the Connect recording in S3 (uniform)",
    )
    load.add_argument("--upload-delay-max", type=float, default=180.0)
    stack = p.add_argument_group("stack")
    stack.add_argument("--template", type=Path, default=TEMPLATE_PATH)
    stack.add_argument("--params", type=Path, help="parameter file, e.g. infra/params/staging.env")
    stack.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="template parameter override (repeatable), e.g. MaxTasks=30",
    )
    platform = p.add_argument_group("platform (not in the template)")
    platform.add_argument(
        "--startup-seconds",
        type=float,
        default=60.0,
        help="Fargate task launch to the worker polling",
    )
    platform.add_argument("--spot-interruptions-per-hour", type=float, default=0.02)
    platform.add_argument("--metric-delay-minutes", type=int, default=1)
    platform.add_argument(
        "--max-scale-in-fraction",
        type=float,
        default=1.0,
        help="cap of one target-tracking scale-in (1: proportional)",
    )
    platform.add_argument(
        "--cpu-speed",
        type=float,
        default=1.0,
        help="a Fargate vCPU's speed relative to the bench machine's core",
    )
    platform.add_argument(
        "--transfer-mib-per-s",
        type=float,
        help="S3 throughput per job (default: fitted to the bench)",
    )
    platform.add_argument("--bench-results", type=Path, default=RESULTS_PATH)
    platform.add_argument("--sync-results", type=Path, default=SYNC_RESULTS_PATH)
    money = p.add_argument_group("prices (USD, eu-west-1 Linux/x86 list prices by default)")
    defaults = Prices()
    for name in ("vcpu_hour", "gb_hour", "spot_vcpu_hour", "spot_gb_hour", "storage_gb_hour"):
        money.add_argument(
            f"--price-{name.replace('_', '-')}", type=float, default=getattr(defaults, name)
        )
    out = p.add_argument_group("output")
    out.add_argument("--slo-p95-minutes", type=float, default=15.0)
    out.add_argument(
        "--search",
        action="store_true",
        help="also find the smallest MaxTasks meeting the SLO per backlog target",
    )
    out.add_argument(
        "--search-targets", default="", help="backlog targets to search (default: the template's)"
    )
    out.add_argument(
        "--headroom",
        type=float,
        default=1.3,
        help="recommended MaxTasks = smallest meeting the SLO x this (busier days)",
    )
    out.add_argument("--seed", type=int, default=1)
    out.add_argument("--out", type=Path, default=OUT_DIR)
    return p  # fmt: skip


def _overrides(items: list[str]) -> dict[str, str]:
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise TemplateError(f"--set {item!r}: expected NAME=VALUE")
        result[name.strip()] = value.strip()
    return result


def _line(label: str, summary: Summary) -> str:
    p = summary.percentiles_minutes
    return (
        f"{label}: p50 {p['p50']:.1f} / p95 {p['p95']:.1f} / p99 {p['p99']:.1f} min, "
        f"SLO {'met' if summary.slo_met else 'BREACHED'}, {summary.task_hours:.0f} task-hours, "
        f"max {summary.result.max_running} tasks, "
        f"${summary.cost['per_day']['as_simulated']:.2f}/day"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, print a summary, write the results directory."""
    args = parser().parse_args(argv)
    try:
        # Bad traffic input (a negative count, min above max, 23 weights) is one line.
        for _, contacts_per_day in _scenarios(args):
            generate(_profile(args, contacts_per_day, _weights(args)), args.seed, np.zeros(1))
            call_lengths(_profile(args, 0, None), 1, np.random.default_rng(0))
            minute_rates(_profile(args, contacts_per_day, _weights(args)))
    except ValueError as error:
        print(f"capacity: {error}", file=sys.stderr)
        return 2
    return _run(args, argv)


def _weights(args: argparse.Namespace) -> tuple[float, ...] | None:
    return tuple(_floats(args.hourly_weights)) if args.hourly_weights else None


def _scenarios(args: argparse.Namespace) -> list[tuple[str, float]]:
    if args.contacts_per_day is not None:
        return [(f"{args.contacts_per_day:g} contacts/day", args.contacts_per_day)]
    agents = _floats(args.agents)
    if not agents or min(agents) <= 0:
        raise ValueError(f"--agents {args.agents[:40]!r}: positive numbers expected")
    return [(f"{count:g} agents", count * args.contacts_per_agent) for count in agents]


def _profile(
    args: argparse.Namespace, contacts_per_day: float, weights: tuple[float, ...] | None
) -> TrafficProfile:
    return TrafficProfile(
        contacts_per_day=contacts_per_day,
        peak_factor=args.peak_factor,
        peak_hour=args.peak_hour,
        hourly_weights=weights,
        length_median_minutes=args.length_median,
        length_sigma=args.length_sigma,
        length_min_minutes=args.length_min,
        length_max_minutes=args.length_max,
        upload_delay_min_seconds=args.upload_delay_min,
        upload_delay_max_seconds=args.upload_delay_max,
    )


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    started = time.monotonic()
    try:
        config = load_scaling(args.template, args.params, _overrides(args.set))
    except TemplateError as error:
        print(f"capacity: {error}", file=sys.stderr)
        return 2
    cost = load_cost_model(args.bench_results, args.sync_results).with_transfer_mib_per_s(
        args.transfer_mib_per_s
    )
    prices = Prices(
        vcpu_hour=args.price_vcpu_hour,
        gb_hour=args.price_gb_hour,
        spot_vcpu_hour=args.price_spot_vcpu_hour,
        spot_gb_hour=args.price_spot_gb_hour,
        storage_gb_hour=args.price_storage_gb_hour,
    )
    options = SimulationOptions(
        startup_seconds=args.startup_seconds,
        spot_interruptions_per_hour=args.spot_interruptions_per_hour,
        metric_delay_minutes=args.metric_delay_minutes,
        cpu_speed=args.cpu_speed,
        max_scale_in_fraction=args.max_scale_in_fraction,
        seed=args.seed,
    )
    weights = _weights(args)
    scenarios = _scenarios(args)
    targets = _floats(args.search_targets) or [config.backlog_target]
    document: dict[str, Any] = {
        "command": "python -m bench.capacity "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "template": config.source,
        "cost_model": asdict(cost),
        "options": asdict(options),
        "scenarios": [],
    }
    rows, searched = [], []
    args.out.mkdir(parents=True, exist_ok=True)
    for label, contacts_per_day in scenarios:
        profile = _profile(args, contacts_per_day, weights)
        contacts = generate(profile, args.seed)
        ideal = busiest_hour_tasks(config, cost, contacts) / args.cpu_speed
        print(f"{label}: {len(contacts)} messages, the busiest hour's work fills "
              f"{ideal:.1f} tasks")  # fmt: skip
        summary = run(config, cost, contacts, options, prices, args.slo_p95_minutes)
        print(_line(f"{label}, template settings", summary))
        slug = label.split()[0].replace(".", "_")
        report.chart(summary, args.out / f"tasks-{slug}.png", f"{label}: template settings")
        rows.append(report.table_row(f"{label}, as configured", summary))
        entry: dict[str, Any] = {
            "label": label,
            "traffic": asdict(profile),
            "configured": report.summary_dict(summary),
            "chart": f"tasks-{slug}.png",
            "busiest_hour_tasks": ideal,
        }
        if args.search:
            found = search_targets(config, cost, contacts, options, prices,
                                   args.slo_p95_minutes, targets)  # fmt: skip
            entry["search"] = []
            for target, best in found:
                rows.append(
                    report.table_row(f"{label}, smallest MaxTasks, target {target:g}", best)
                )
                entry["search"].append(
                    {
                        "backlog_target": target,
                        "best": report.summary_dict(best, timeline=False) if best else None,
                    }
                )
                if best is not None:
                    print(_line(f"{label}, smallest MaxTasks {best.config.max_tasks} at target "
                                f"{target:g}", best))  # fmt: skip
                    searched.append((label, best))
            if any(best for _, best in found):
                cheapest = min((b for _, b in found if b), key=lambda b: b.task_hours)
                # What to set: the cheapest search result with headroom for busier days.
                chosen = cheapest.config.with_parameters(
                    max_tasks=math.ceil(cheapest.config.max_tasks * args.headroom)
                )
                advised = run(chosen, cost, contacts, options, prices, args.slo_p95_minutes)
                rows.append(report.table_row(f"{label}, **recommended**", advised))
                entry["recommended"] = report.summary_dict(advised)
                entry["recommended_chart"] = f"tasks-{slug}-recommended.png"
                report.chart(advised, args.out / entry["recommended_chart"],
                             f"{label}: recommended MaxTasks {chosen.max_tasks}, "
                             f"target {chosen.backlog_target:g}")  # fmt: skip
                print(_line(f"{label}, recommended MaxTasks {chosen.max_tasks}", advised))
        document["scenarios"].append(entry)
    markdown = "\n".join(
        [
            "# Capacity simulation",
            "",
            f"`{document['command']}` (seed {args.seed}); template "
            f"`{config.source['template']}`, params `{config.source['params']}`, overrides "
            f"{config.source['overrides'] or 'none'}. SLO: p95 message-to-DONE <= "
            f"{args.slo_p95_minutes:g} min. docs/capacity.md explains the model.",
            "",
            report.TABLE_HEADER,
            *rows,
            "",
            f"Cost model: {cost.fixed_seconds:.2f} s fixed + "
            f"{cost.cpu_seconds_per_media_minute:.3f} s per media minute per vCPU + "
            f"{cost.bytes_per_media_minute / 1e6:.1f} MB per media minute at "
            f"{cost.transfer_bytes_per_second / 1e6:.1f} MB/s.",
            "",
            *[
                f"![{e['label']}, {kind}]({e[key]})"
                for e in document["scenarios"]
                for kind, key in (("as configured", "chart"), ("recommended", "recommended_chart"))
                if key in e
            ],
            "",
        ]
    )
    document["elapsed_seconds"] = time.monotonic() - started
    report.write(args.out, document, markdown)
    print(f"wrote {args.out}/capacity.md, capacity.json and the charts "
          f"({document['elapsed_seconds']:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
