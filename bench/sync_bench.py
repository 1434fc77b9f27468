"""The call-end sync on a speech corpus (issue 13): alignment error measured in the output.

Every case of :data:`CORPUS` (espeak-ng voices, telephony Connect audio, a reverberant noisy
microphone in Opus/AAC; see :mod:`tests.harness.speech_media`) is merged with
``ALIGN_MODE=auto`` for every timestamp error of
:data:`tests.harness.speech_media.TIMESTAMP_ERRORS` (whole-second truncation on top). The
alignment error is measured in the merged file by content: where the Connect audio lies against
where the microphone says it belongs. A *wrong sync* is a waveform sync off by more than 20 ms,
or any waveform sync on a case whose microphone holds nothing of the
call. ``python -m bench.sync_bench`` runs it alone.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from tests.harness.speech_media import (
    TIMESTAMP_ERRORS,
    CaseSpec,
    alignment_error,
    connect_placement,
    make_speech_case,
    merge_case,
    message_call_end,
)
from worker import media

WRONG_SECONDS = 0.020
CORPUS = [
    CaseSpec("support-webm", script=0, voices=0, container="webm"),
    CaseSpec("support-mp4-aac", script=0, voices=1, container="mp4-aac", noise_db=-40,
             connect_start=-3.0, call_seconds=38),
    CaseSpec("billing-mp4-opus", script=1, voices=1, container="mp4", mic_gain_db=-18,
             connect_start=5.5, call_seconds=25),
    CaseSpec("billing-webm-noisy", script=1, voices=2, container="webm", noise_db=-34,
             mic_gain_db=-12, call_seconds=33),
    CaseSpec("travel-webm", script=2, voices=2, container="webm", connect_start=0.4,
             call_seconds=21, acw_seconds=6),
    CaseSpec("travel-mp4-aac-quiet", script=2, voices=0, container="mp4-aac", mic_gain_db=-24,
             noise_db=-55, call_seconds=28, connect_start=2.2),
    CaseSpec("short-call-webm", script=0, voices=2, container="webm", call_seconds=12,
             connect_start=1.3),
    CaseSpec("no-microphone", mic="none"),
    CaseSpec("muted-microphone", mic="silence", container="mp4"),
    CaseSpec("other-call-webm", mic="other", container="webm"),
    CaseSpec("other-call-mp4", mic="other", script=1, voices=1, container="mp4-aac", seed=3),
    CaseSpec("music-webm", mic="tones", container="webm"),
    CaseSpec("music-on-hold-loop", mic="looped_tones", container="mp4", call_seconds=40),
]  # fmt: skip


def run_sync_bench(
    cache: Path,
    specs: list[CaseSpec] | None = None,
    errors: tuple[float, ...] = TIMESTAMP_ERRORS,
) -> dict[str, Any]:
    """Every case x timestamp error: sync outcome and the alignment error in the output."""
    from worker.observability import configure_logging

    configure_logging(level="WARNING", fmt="console")  # the table, not every merge's log
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp:
        for spec in specs or CORPUS:
            case = make_speech_case(cache, spec)
            ext = "webm" if spec.container == "webm" else "mp4"
            for error in errors:
                call_end = message_call_end(case.true_call_end, error)
                out = Path(tmp) / f"{spec.name}.{ext}"
                started = time.perf_counter()
                result = merge_case(case, call_end, out)
                seconds = time.perf_counter() - started
                if spec.mic in ("none", "silence"):  # nothing to locate the microphone by
                    placed = connect_placement(out, case.connect, result.call_end_seconds)
                    measured = placed - case.true_placement
                else:
                    measured = alignment_error(out, case, result.call_end_seconds)
                waveform = result.sync.method == "waveform"
                rows.append(
                    {
                        "case": spec.name,
                        "must_fall_back": case.must_fall_back,
                        "timestamp_error": error,
                        "call_end": call_end,
                        "true_call_end": round(case.true_call_end, 6),
                        "method": result.sync.method,
                        "reason": result.sync.reason,
                        "confidence": result.sync.confidence,
                        "error_ms": round(float(measured) * 1000, 3),
                        "wrong": waveform
                        and (case.must_fall_back or abs(measured) > WRONG_SECONDS),
                        "merge_seconds": round(seconds, 3),
                    }
                )
                print(
                    f"  {spec.name:<22} ts {error:+.1f} s -> {result.sync.method:<9} "
                    f"{result.sync.reason:<16} z {result.sync.confidence:7.1f}  "
                    f"error {measured * 1000:+9.2f} ms",
                    flush=True,
                )
                out.unlink(missing_ok=True)
    return summarise(rows)


def measure_sync_cost(
    recording: Path, connect: Path, call_end: float, repeats: int = 5
) -> dict[str, Any]:
    """Wall time of the sync alone (two fast-seeked decodes + the correlations), in process,
    on one recording: median and best of ``repeats``."""
    from worker.media import sync

    async def once() -> float:
        rec = media.Recording.of(await media.probe(recording))
        conn = media.ConnectAudio.of(await media.probe(connect))
        plan = media.plan_merge(rec, conn, call_end, media.MergeOptions())
        inputs = media.sync_inputs(rec, conn, plan)
        started = time.perf_counter()
        await sync.measure(inputs)
        return time.perf_counter() - started

    times = [anyio.run(once) for _ in range(repeats)]
    return {"median_seconds": statistics.median(times), "best_seconds": min(times)}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The error table: over waveform syncs, |error| median/max; wrong syncs; fallbacks."""
    synced = [abs(r["error_ms"]) for r in rows if r["method"] == "waveform"]
    positives = [r for r in rows if not r["must_fall_back"]]
    negatives = [r for r in rows if r["must_fall_back"]]
    z_pos = [r["confidence"] for r in positives if r["method"] == "waveform"]
    z_neg = [r["confidence"] for r in negatives]
    return {
        "rows": rows,
        "cases": len({r["case"] for r in rows}),
        "merges": len(rows),
        "waveform_syncs": len(synced),
        "median_abs_error_ms": statistics.median(synced) if synced else None,
        "max_abs_error_ms": max(synced) if synced else None,
        "wrong_syncs": sum(1 for r in rows if r["wrong"]),
        "fallbacks": sum(1 for r in rows if r["method"] == "timestamp"),
        "fallbacks_expected": len(negatives),
        "fallbacks_on_speech": sum(1 for r in positives if r["method"] == "timestamp"),
        "timestamp_median_abs_error_ms": statistics.median(
            abs(r["call_end"] - r["true_call_end"]) * 1000 for r in positives
        )
        if positives
        else None,
        "min_confidence_synced": min(z_pos) if z_pos else None,
        "max_confidence_negative": max(z_neg) if z_neg else None,
    }


def main() -> int:
    """Run the corpus alone and print the summary."""
    from bench.media_gen import CACHE_DIR

    summary = run_sync_bench(CACHE_DIR / "speech")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
