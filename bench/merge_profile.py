"""Where a merge's CPU goes: every process it runs, and Python's own, beside the floor's.

``python -m bench.merge_profile RECORDING CONNECT_WAV CALL_END SCRATCH_DIR`` runs the floor
(:mod:`bench.floor`'s command) and then ``worker.media.merge`` in this process, each ffmpeg or
ffprobe under GNU ``time`` (its own user+sys, whatever else runs beside it), and prints one
JSON line: the floor's CPU, each of the merge's processes (what, CPU, wall), their count and
sum, this interpreter's CPU during the merge (parsing, numpy, the event loop) and the ratio of
the whole to the floor. A diagnostic for issue 18's per-job overhead, not part of ``make bench``:
the bench's own ratio (:mod:`bench.merge_run`, the process tree's CPU) is the one reported.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from bench.floor import floor_command
from bench.merge_run import options_from_settings
from worker import ffmpeg
from worker.config import AudioSettings, Settings
from worker.media import MergeRequest, merge

TIME = ("/usr/bin/time", "-f", "%U %S %e", "-o")


def _timed(argv: Sequence[str], record: Path) -> list[str]:
    return [*TIME, str(record), *argv]


def _read_time(record: Path) -> tuple[float, float]:
    """(user+sys, wall) from GNU time's last line."""
    user, system, wall = record.read_text().split()[-3:]
    return float(user) + float(system), float(wall)


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _profile_merge(request: MergeRequest, work: Path) -> dict[str, Any]:
    processes: list[dict[str, Any]] = []
    original = ffmpeg.run

    async def timed_run(args: Sequence[str], **kwargs: Any) -> ffmpeg.RunResult:
        record = work / f"time-{len(processes)}.txt"
        started = time.perf_counter()
        try:
            return await original(_timed(args, record), **kwargs)
        finally:
            cpu, wall = _read_time(record)
            processes.append(
                {
                    "what": kwargs.get("what"),
                    "cpu": cpu,
                    "wall": wall,
                    "from": round(started - t0, 3),
                }
            )

    ffmpeg.run = timed_run  # type: ignore[assignment]
    try:
        python_before = _self_cpu()
        t0 = time.perf_counter()
        await merge(request)
        wall = time.perf_counter() - t0
        python = _self_cpu() - python_before
    finally:
        ffmpeg.run = original  # type: ignore[assignment]
    return {"processes": processes, "python_cpu": python, "wall": wall}


def main(argv: list[str]) -> int:
    """CLI entry."""
    recording, connect, call_end, scratch = argv
    out = Path(scratch)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".webm" if recording.endswith(".webm") else ".mp4"
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        record = work / "floor-time.txt"
        started = time.perf_counter()
        command = floor_command(Path(recording), work / f"floor{suffix}", AudioSettings())
        subprocess.run(_timed(command, record), check=True)
        floor_wall = time.perf_counter() - started
        floor_cpu, _ = _read_time(record)
        settings = Settings(
            ac_audio_bucket="bench", input_bucket="bench", output_bucket="bench",
            connect_instance_alias="bench",
        )  # fmt: skip
        request = MergeRequest(
            recording=Path(recording),
            connect_audio=Path(connect),
            call_end_seconds=float(call_end),
            output=work / f"merged{suffix}",
            thumbnail=work / "thumbnail.png",
            options=options_from_settings(settings),
        )
        merged = anyio.run(_profile_merge, request, work)
    children = sum(p["cpu"] for p in merged["processes"])
    total = children + merged["python_cpu"]
    print(
        json.dumps(
            {
                "floor_cpu": floor_cpu,
                "floor_wall": floor_wall,
                **merged,
                "process_count": len(merged["processes"]),
                "children_cpu": children,
                "merge_cpu": total,
                "cpu_ratio": total / floor_cpu,
                "wall_ratio": merged["wall"] / floor_wall,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
