"""Where the sync's time goes on the 60-minute call (issue 19's cost target): each stage's wall
and CPU and every process it starts, for the timestamp exact and 30 s late, against one merge
of the same recording in the same process.

``PYTHONPATH=. python -m bench.sync_cost_profile [repeats] [--no-merge]``: the best of
``repeats`` syncs per timestamp (by wall time), the load average beside them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from bench import sync_wide_bench as bench
from bench.long_speech import make_long_case
from bench.media_gen import CACHE_DIR
from worker import ffmpeg
from worker.media import sync, sync_drift, sync_wide

Timings = dict[str, list[tuple[float, float]]]


def _wrap(module: Any, name: str, label: str, timings: Timings) -> None:
    """Record each call of ``module.name`` (async) as (wall, CPU) under ``label`` (a process:
    under what it runs for)."""
    original: Callable[..., Awaitable[Any]] = getattr(module, name)

    async def timed(*args: Any, **kwargs: Any) -> Any:
        started, cpu = time.perf_counter(), bench.cpu_seconds()
        try:
            return await original(*args, **kwargs)
        finally:
            spent = (round(time.perf_counter() - started, 3), round(bench.cpu_seconds() - cpu, 3))
            key = f"{label}: {kwargs['what']}" if label == "process" else label
            timings.setdefault(key, []).append(spent)

    setattr(module, name, timed)


def main(argv: list[str] | None = None) -> int:
    """Print the best of N syncs per timestamp: wall, CPU, ratio to the merge, processes."""
    args = sys.argv[1:] if argv is None else argv
    repeats = int(args[0]) if args and args[0].isdigit() else 3
    case = make_long_case(CACHE_DIR / "speech-19", bench.LONG[-1])
    merge = (1.0, 1.0) if "--no-merge" in args else bench.merge_seconds(case)
    print(f"merge: wall {merge[0]:.2f} s, CPU {merge[1]:.2f} s; {bench._load()}")
    timings: Timings = {}
    _wrap(sync, "measure_keeping", "narrow", timings)
    _wrap(sync_wide, "wide", "wide", timings)
    _wrap(sync_drift, "measure_drift", "drift", timings)
    _wrap(ffmpeg, "run", "process", timings)
    for error in (0.0, 30.0):
        best: tuple[float, float, Timings, str] | None = None
        for _ in range(repeats):
            timings.clear()
            call_end = float(int(case.true_call_end + error))
            result, wall, cpu, _used = anyio.run(bench._sync, case, call_end)
            outcome = f"{result.method} {result.reason} offset {result.offset_seconds:.5f}"
            outcome += f" drift {result.drift_ppm:.2f}"
            if best is None or wall < best[0]:
                best = (wall, cpu, {k: list(v) for k, v in timings.items()}, outcome)
        assert best is not None
        wall, cpu, stages, outcome = best
        processes = sum(len(v) for k, v in stages.items() if k.startswith("process: "))
        processes -= sum(len(v) for k, v in stages.items() if k.startswith("process: probe"))
        processes -= sum(len(v) for k, v in stages.items() if "packet scan of" in k)
        print(
            f"ts{error:+.0f}: {outcome}: wall {wall:.2f} s ({wall / merge[0]:.3f}x), "
            f"CPU {cpu:.2f} s ({cpu / merge[1]:.3f}x), {processes} processes; "
            f"load {os.getloadavg()[0]:.2f}"
        )
        for label, values in stages.items():
            total = sum(w for w, _ in values)
            print(f"  {label:<42} n={len(values):<3} wall {total:.2f} {values}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
