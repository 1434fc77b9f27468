"""Issue 19's sync bench: sync anywhere, drift, on real human speech.

- **Short scenarios** (real merges, the error measured in the output by content at the start,
  middle and end of the Connect audio; :func:`tests.harness.speech_media.alignment_errors`): early
  stops of 8/30/120 s, a late start found 30 s away, timestamps 30 s early and late, a
  suspended span, and the must-keep-the-timestamp cases (a muted microphone, another
  conversation of other people).
- **Long calls** (:mod:`bench.long_speech`: 15 minutes at 40 ppm, 60 minutes at 100 ppm, the
  timestamp exact and 30 s late): the sync alone, its placement compared with the truth at the
  start, middle and end (MP4: no container shift to correct).
- **Cost**: the sync (with drift, and with the wide search) against a merge of the 60-minute
  recording, each the best of :data:`COST_REPEATS` runs. **Memory**: peak RSS of the sync
  (wide search forced) on audio-only recordings of 5, 60 and 240 minutes (pink noise: the
  wide search runs over the whole length), each in its own process.

``python -m bench.sync_wide_bench`` runs it alone (``--quick``: short scenarios only) and
writes ``bench/results/issue-19/``.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from bench.long_speech import LongCase, LongSpec, make_long_case
from tests.harness.speech_media import (
    CaseSpec,
    alignment_errors,
    call_times,
    make_speech_case,
    merge_case,
    message_call_end,
)
from worker import media
from worker.media import sync

RESULTS = Path(__file__).parent / "results" / "issue-19"
WRONG_SECONDS = 0.020
# The cost is the best of this many runs (the sync's and the merge's alike): one run on a
# shared machine can catch another process's burst. The sync's decisions do not vary.
COST_REPEATS = 3
HUMAN = -1  # CaseSpec.voices: real human voices
# (spec, timestamp errors in seconds)
SHORT: list[tuple[CaseSpec, list[float]]] = [
    (CaseSpec("human-webm", voices=HUMAN, call_seconds=60, container="webm"), [0.0, 2.4]),
    (CaseSpec("human-ts-30", voices=HUMAN, seed=2, call_seconds=75, container="mp4"),
     [-30.0, 30.0]),
    (CaseSpec("early-stop-8", voices=HUMAN, seed=3, call_seconds=50, early_stop=8.0,
              container="mp4-aac"), [0.0]),
    (CaseSpec("early-stop-30", voices=HUMAN, seed=4, call_seconds=75, early_stop=30.0,
              container="webm"), [0.0]),
    (CaseSpec("early-stop-120", voices=HUMAN, seed=5, call_seconds=170, early_stop=120.0,
              container="mp4"), [0.0]),
    (CaseSpec("late-start", voices=HUMAN, seed=6, call_seconds=50, connect_start=25.0,
              container="mp4"), [30.0]),
    (CaseSpec("suspended", voices=HUMAN, seed=7, call_seconds=60, suspended=(20.0, 27.0),
              container="webm"), [0.0]),
    (CaseSpec("muted-microphone", voices=HUMAN, mic="silence", call_seconds=40), [0.0, 30.0]),
    (CaseSpec("other-conversation", voices=HUMAN, mic="other", call_seconds=60,
              container="mp4"), [0.0, 30.0]),
]  # fmt: skip
LONG = [
    LongSpec("call-15min-40ppm", call_seconds=900, drift_ppm=40.0, seed=11),
    LongSpec("call-60min-100ppm", call_seconds=3600, drift_ppm=100.0, seed=12),
]
MEMORY_MINUTES = (5, 60, 240)


def run_short(cache: Path) -> list[dict[str, Any]]:
    """Every short scenario merged, errors measured in the output."""
    rows = []
    for spec, errors in SHORT:
        case = make_speech_case(cache, spec)
        for error in errors:
            call_end = message_call_end(case.true_call_end, error)
            ext = "webm" if spec.container == "webm" else "mp4"
            out = cache / f"out-{spec.name}.{ext}"
            started = time.perf_counter()
            result = merge_case(case, call_end, out)
            seconds = time.perf_counter() - started
            synced = result.sync
            measured: list[float] = []
            if synced.measured and not case.must_fall_back:
                at = call_times(case)
                measured = alignment_errors(out, case, case.true_connect_end, at)
            wrong = synced.measured and (
                case.must_fall_back or max(abs(e) for e in measured) > WRONG_SECONDS
            )
            rows.append(
                {
                    "case": spec.name,
                    "timestamp_error_s": error,
                    "method": synced.method,
                    "reason": synced.reason,
                    "confidence": synced.confidence,
                    "drift_ppm": round(synced.drift_ppm, 2),
                    "errors_ms": [round(e * 1000, 3) for e in measured],
                    "must_keep_timestamp": case.must_fall_back,
                    "wrong": bool(wrong),
                    "merge_seconds": round(seconds, 2),
                }
            )
            print(f"  {_line(rows[-1])}", flush=True)
            out.unlink(missing_ok=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    errors = " ".join(f"{e:+7.2f}" for e in row["errors_ms"]) or "-"
    return (
        f"{row['case']:<20} ts {row['timestamp_error_s']:+5.1f} s -> {row['method']:<13} "
        f"{row['reason']:<22} z {row['confidence']:6.1f} drift {row['drift_ppm']:+7.2f} ppm "
        f"errors(ms) {errors}"
    )


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (ffmpeg) so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def _sync(case: LongCase, call_end: float) -> tuple[sync.SyncResult, float, float, float]:
    """The sync alone (the probes before it not counted): result, wall, CPU, call end used."""
    rec = media.Recording.of(await media.probe(case.recording))
    conn = media.ConnectAudio.of(await media.probe(case.connect))
    plan = media.plan_merge(rec, conn, call_end, media.MergeOptions())
    started, cpu = time.perf_counter(), cpu_seconds()
    result = await sync.measure(media.sync_inputs(rec, conn, plan))
    return result, time.perf_counter() - started, cpu_seconds() - cpu, plan.call_end


def run_long(cache: Path) -> list[dict[str, Any]]:
    """The sync on long calls; its placement against the truth at start, middle and end."""
    rows = []
    for spec in LONG:
        started = time.perf_counter()
        case = make_long_case(cache, spec)
        print(f"  {spec.name}: media in {time.perf_counter() - started:.0f} s", flush=True)
        for error in (0.0, 30.0):
            call_end = float(int(case.true_call_end + error))
            result, seconds, cpu, used = _best_sync(case, call_end)
            measured: list[float] = []
            if result.measured:
                end = used + result.offset_seconds
                placement = end - case.connect_duration * result.drift_ratio
                for at in (0.0, case.connect_duration / 2, case.connect_duration):
                    ours = placement + at * result.drift_ratio
                    truth = case.placement + at * case.ratio
                    measured.append(ours - truth)
            row = {
                "case": spec.name,
                "timestamp_error_s": error,
                "method": result.method,
                "reason": result.reason,
                "confidence": result.confidence,
                "drift_ppm": round(result.drift_ppm, 2),
                "true_drift_ppm": spec.drift_ppm,
                "errors_ms": [round(e * 1000, 3) for e in measured],
                "must_keep_timestamp": False,
                "wrong": result.measured and max(abs(e) for e in measured) > WRONG_SECONDS,
                "sync_seconds": round(seconds, 2),
                "sync_cpu_seconds": round(cpu, 2),
            }
            rows.append(row)
            print(f"  {_line(row)}  sync {seconds:.1f} s ({cpu:.1f} s CPU)", flush=True)
    return rows


def _best_sync(case: LongCase, call_end: float) -> tuple[sync.SyncResult, float, float, float]:
    """:func:`_sync` :data:`COST_REPEATS` times: its (unvarying) result, the least wall and
    CPU seconds."""
    runs = [anyio.run(_sync, case, call_end) for _ in range(COST_REPEATS)]
    results = {run[0] for run in runs}
    if len(results) != 1:
        raise AssertionError(f"the sync varied between runs: {results}")
    result, _, _, used = runs[0]
    return result, min(run[1] for run in runs), min(run[2] for run in runs), used


def merge_seconds(case: LongCase) -> tuple[float, float]:
    """Wall and CPU time of a merge of ``case`` with ALIGN_MODE end (no sync at all): the
    least of :data:`COST_REPEATS` merges."""
    runs = [_merge_once(case) for _ in range(COST_REPEATS)]
    return min(wall for wall, _ in runs), min(cpu for _, cpu in runs)


def _merge_once(case: LongCase) -> tuple[float, float]:
    """Wall and CPU time of one merge of ``case`` with ALIGN_MODE end."""
    out = case.recording.with_name("merged.mp4")
    started, cpu = time.perf_counter(), cpu_seconds()
    request = media.MergeRequest(
        recording=case.recording,
        connect_audio=case.connect,
        call_end_seconds=case.true_call_end,
        output=out,
        thumbnail=None,
        options=media.MergeOptions(align="end"),
    )
    anyio.run(media.merge, request)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    out.unlink(missing_ok=True)
    return seconds, cpu


_RSS_SCRIPT = """
import resource, sys, time, anyio
from pathlib import Path
from worker import media
from worker.media import sync
recording, connect, minutes = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
async def main():
    # An audio-only recording (a Recording needs video): the sync's inputs made directly.
    conn = media.ConnectAudio.of(await media.probe(connect))
    inputs = sync.SyncInputs(
        recording=recording, recording_audio_index=0, recording_audio_channels=1,
        recording_duration=minutes * 60.0, connect=connect,
        connect_audio_index=conn.audio.index, connect_audio_channels=conn.audio.channels,
        connect_duration=conn.duration, call_end=minutes * 60.0 - 30.0,
    )
    started = time.perf_counter()
    result = await sync.measure(inputs)
    print(result.method, result.reason, round(time.perf_counter() - started, 2))
anyio.run(main)
# VmHWM: this process's own peak since its exec (ru_maxrss keeps the peak of the process
# it was forked from: the bench, holding the long cases' samples).
status = Path("/proc/self/status").read_text().splitlines()
self_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(self_kb, child_kb)
"""


def memory_input(cache: Path, minutes: int) -> Path:
    """An audio-only WebM of ``minutes`` of pink noise (cheap to make at any length: the
    memory of the wide search depends on the length, not the content)."""
    path = cache / f"memory-{minutes}min.webm"
    if not path.exists():
        subprocess.run(
            ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
             "-i", f"anoisesrc=d={minutes * 60}:c=pink:r=16000:a=0.05", "-c:a", "libopus",
             "-b:a", "12k", "-ar", "48000", str(path.with_suffix(".tmp.webm"))],
            check=True,
        )  # fmt: skip
        path.with_suffix(".tmp.webm").rename(path)
    return path


def run_memory(cache: Path) -> list[dict[str, Any]]:
    """Peak RSS of the sync with the wide search forced (a microphone that holds nothing of
    the call: the whole recording is searched), per recording length."""
    cache.mkdir(parents=True, exist_ok=True)
    connect = make_speech_case(cache, SHORT[0][0]).connect
    rows = []
    for minutes in MEMORY_MINUTES:
        recording = memory_input(cache, minutes)
        done = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(recording), str(connect), str(minutes)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        lines = [line for line in done.stdout.splitlines() if line and line[0] != "{"]
        lines = [line for line in lines if not line.startswith("20")]  # log lines
        method, reason, seconds = lines[-2].split()
        self_kb, child_kb = (int(x) for x in lines[-1].split())
        row = {
            "minutes": minutes,
            "method": method,
            "reason": reason,
            "sync_seconds": float(seconds),
            "python_peak_rss_mb": round(self_kb / 1024, 1),
            "ffmpeg_peak_rss_mb": round(child_kb / 1024, 1),
        }
        rows.append(row)
        print(f"  memory {row}", flush=True)
    return rows


def summarise(short: list[dict[str, Any]], long: list[dict[str, Any]]) -> dict[str, Any]:
    """The error table's figures over every measured placement."""
    errors = [abs(e) for r in short + long for e in r["errors_ms"]]
    return {
        "placements": sum(1 for r in short + long if r["method"] != "timestamp"),
        "runs": len(short) + len(long),
        "median_abs_error_ms": statistics.median(errors) if errors else None,
        "max_abs_error_ms": max(errors) if errors else None,
        "wrong_placements": sum(1 for r in short + long if r["wrong"]),
        "kept_timestamp_where_required": sum(
            1 for r in short if r["must_keep_timestamp"] and r["method"] == "timestamp"
        ),
        "required": sum(1 for r in short if r["must_keep_timestamp"]),
        "missed": sum(
            1 for r in short + long if not r["must_keep_timestamp"] and r["method"] == "timestamp"
        ),
    }


def cost_of(long: list[dict[str, Any]], merge: tuple[float, float]) -> dict[str, Any]:
    """The 60-minute call's sync (timestamp right, 30 s off) against a merge of the same
    recording measured in the same process, each the best of :data:`COST_REPEATS`: wall and
    CPU (process and ffmpeg children)."""
    wall, cpu = merge
    syncs = [r for r in long if r["case"] == LONG[-1].name]

    def key(row: dict[str, Any]) -> str:
        return f"ts{row['timestamp_error_s']:+.0f}"

    return {
        "merge_seconds_align_end": round(wall, 2),
        "merge_cpu_seconds": round(cpu, 2),
        "sync_seconds": {key(r): r["sync_seconds"] for r in syncs},
        "sync_cpu_seconds": {key(r): r.get("sync_cpu_seconds") for r in syncs},
        "ratio": {key(r): round(r["sync_seconds"] / wall, 3) for r in syncs},
        "cpu_ratio": {
            key(r): round(r["sync_cpu_seconds"] / cpu, 3) for r in syncs if "sync_cpu_seconds" in r
        },
        "load": _load(),
    }


def _load() -> str:
    """The machine's load and CPU pressure when measured (wall times mean little under load)."""
    pressure = Path("/proc/pressure/cpu")
    some = pressure.read_text().split("\n")[0] if pressure.exists() else "-"
    return f"loadavg {' '.join(Path('/proc/loadavg').read_text().split()[:3])}; cpu {some}"


def markdown(done: dict[str, Any]) -> str:
    """Issue 19's tables from the parts written so far: the error table, the cost, memory."""
    summary = done["summary"]
    lines = [
        "# Issue 19: sync anywhere and drift (bench/sync_wide_bench.py)",
        "",
        "| target | measured |",
        "|---|---|",
        f"| median abs error <= 5 ms | {summary['median_abs_error_ms']} ms |",
        f"| max abs error <= 20 ms | {summary['max_abs_error_ms']} ms |",
        f"| wrong placements = 0 | {summary['wrong_placements']} |",
        f"| timestamp kept where required | {summary['kept_timestamp_where_required']}"
        f" of {summary['required']} |",
        f"| placements / runs (timestamp kept where it could have been found: "
        f"{summary['missed']}) | {summary['placements']} / {summary['runs']} |",
        "",
        "| case | ts error (s) | method | reason | z | drift (ppm) | errors (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in done.get("short", []) + done.get("long", []):
        errors = " ".join(f"{e:+.2f}" for e in row["errors_ms"]) or "-"
        lines.append(
            f"| {row['case']} | {row['timestamp_error_s']:+.0f} | {row['method']} | "
            f"{row['reason']} | {row['confidence']} | {row['drift_ppm']} | {errors} |"
        )
    cost = done.get("cost")
    if cost:
        lines += [
            "",
            f"Cost on the 60-minute call (target: <= +10% of the merge's wall time; each the "
            f"best of {COST_REPEATS} runs); merge "
            f"{cost['merge_seconds_align_end']} s wall, {cost.get('merge_cpu_seconds')} s CPU "
            f"({cost.get('load', '')}):",
            "",
            "| timestamp | sync wall (s) | / merge wall | sync CPU (s) | / merge CPU |",
            "|---|---|---|---|---|",
        ]
        for key, seconds in cost["sync_seconds"].items():
            lines.append(
                f"| {key} | {seconds} | {cost['ratio'][key]} | "
                f"{cost.get('sync_cpu_seconds', {}).get(key)} | "
                f"{cost.get('cpu_ratio', {}).get(key)} |"
            )
    memory = done.get("memory")
    if isinstance(memory, dict):  # an older run's {"rows": [...], "note": ...}
        memory = memory.get("rows", [])
    if memory:
        lines += [
            "",
            "Memory of the sync, wide search forced (target: flat from 5 to 240 minutes):",
            "",
            "| minutes | method | sync (s) | Python peak RSS (MB) | children peak RSS (MB)* |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['minutes']} | {r['method']} {r['reason']} | {r['sync_seconds']} | "
            f"{r['python_peak_rss_mb']} | {r.get('ffmpeg_peak_rss_mb', '-')} |"
            for r in memory
        ]
        lines += ["", "\\* a child's peak counts from its fork (a copy of Python) before exec."]
    return "\n".join(lines) + "\n"


PARTS = ("short", "long", "memory")


def main(argv: list[str] | None = None) -> int:
    """Run the bench (``--only short,long,memory``: some parts) and write
    ``results/issue-19/<part>.json``; the summary reads every part written so far."""
    from bench.media_gen import CACHE_DIR

    args = sys.argv[1:] if argv is None else argv
    parts = args[args.index("--only") + 1].split(",") if "--only" in args else list(PARTS)
    if "--quick" in args:
        parts = ["short"]
    cache = CACHE_DIR / "speech-19"
    RESULTS.mkdir(parents=True, exist_ok=True)

    def write(part: str, value: Any) -> None:
        (RESULTS / f"{part}.json").write_text(json.dumps(value, indent=1) + "\n")

    if "short" in parts:
        print("short scenarios (real merges, human speech):", flush=True)
        write("short", run_short(cache))
    if "long" in parts:
        print("long calls (sync alone):", flush=True)
        long = run_long(cache)
        write("long", long)
        write("cost", cost_of(long, merge_seconds(make_long_case(cache, LONG[-1]))))
    if "memory" in parts:
        print("memory (sync alone, wide search forced):", flush=True)
        write("memory", run_memory(cache))
    done = {
        part: json.loads((RESULTS / f"{part}.json").read_text())
        for part in ("short", "long", "cost", "memory")
        if (RESULTS / f"{part}.json").exists()
    }
    done["summary"] = summarise(done.get("short", []), done.get("long", []))
    write("summary", done["summary"])
    table = markdown(done)
    (RESULTS / "results.md").write_text(table)
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
