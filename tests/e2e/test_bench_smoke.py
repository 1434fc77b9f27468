"""Smoke test of the benchmark machinery (issue 6) on a 3-second generated recording.

No timing assertions: it checks that every implementation ran, was measured (CPU, RSS, scratch)
and that the report holds the three rows and the chart.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main


def test_bench_machinery_on_a_short_recording(tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    code = main(
        [
            "--short-seconds", "3", "--skip-worker", "--skip-transfer", "--skip-sync",
            "--results-dir", str(results_dir),
        ]
    )  # fmt: skip
    assert code == 0
    markdown = (results_dir / "results.md").read_text()
    for label in ("this project (merge)", "Lambda five-pass", "floor (copy + audio encode"):
        assert f"| 3 s | {label}" in markdown
    assert (results_dir / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((results_dir / "results.json").read_text())
    runs = results["media"][0]["runs"]
    for name in ("merge", "lambda", "floor"):
        run = runs[name]
        assert run["cpu_seconds"] > 0
        assert run["peak_rss_bytes"] > 1_000_000  # ffmpeg alone is tens of MB
        assert run["peak_scratch_bytes"] >= run["required_bytes"] > 0
    # The Lambda writes intermediate WAV/MP4 files; the one-pass merge and the floor do not.
    assert runs["lambda"]["scratch_ratio"] > 1.2
    assert runs["merge"]["scratch_ratio"] < 1.05


def test_sync_bench_machinery_on_two_small_cases(tmp_path: Path) -> None:
    from bench.report import sync_section
    from bench.sync_bench import run_sync_bench
    from tests.harness.speech_media import CaseSpec

    specs = [
        CaseSpec("speech", call_seconds=14, connect_start=1.0, acw_seconds=5),
        CaseSpec("music", mic="tones", call_seconds=14, acw_seconds=5),
    ]
    summary = run_sync_bench(tmp_path / "speech", specs, errors=(-2.0, 0.5))
    assert summary["merges"] == 4
    assert summary["wrong_syncs"] == 0
    assert summary["fallbacks_expected"] == 2
    methods = {(r["case"], r["method"]) for r in summary["rows"]}
    assert ("music", "waveform") not in methods
    # The speech case syncs at both timestamp errors: its error is measured, and small.
    assert [r["method"] for r in summary["rows"] if r["case"] == "speech"] == ["waveform"] * 2
    assert summary["max_abs_error_ms"] is not None
    assert summary["max_abs_error_ms"] <= 20
    table = "\n".join(sync_section(summary))
    assert "| Case | Timestamp error s | Method |" in table
    assert table.count("| music |") == 2
