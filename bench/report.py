"""Write the results: ``results.md`` (tables, targets, machine), ``chart.png``, ``results.json``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

MB = 1_000_000
MIB = 1024 * 1024

LABELS = {
    "merge": "this project (merge)",
    "merge_nosync": "this project, ALIGN_MODE=end (no sync)",
    "lambda": "Lambda five-pass",
    "floor": "floor (copy + audio encode, faststart)",
    "floor_nofaststart": "floor without faststart (info)",
}


def machine_info() -> dict[str, Any]:
    """CPU, memory, OS, tool versions, load: what a reader needs to weigh the numbers."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration, ValueError):
        mem_kib = 0
    ffmpeg_version = subprocess.run(
        ["ffmpeg", "-version"], capture_output=True, text=True, check=False
    ).stdout.split("\n", 1)[0]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "ffmpeg": ffmpeg_version,
        "commit": commit,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _mb(value: float) -> str:
    return f"{value / MB:.0f}"


def media_rows(results: dict[str, Any]) -> list[str]:
    """The main table, one row per (length, implementation)."""
    lines = [
        "| Recording | Implementation | Wall s | CPU s | Peak RSS MB | Peak scratch MB "
        "| Scratch / (inputs+outputs) | Wall vs Lambda | Wall vs floor | CPU vs Lambda "
        "| CPU vs floor | CPU pressure |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for case in results["media"]:
        runs = case["runs"]
        lam, flo = runs.get("lambda"), runs.get("floor")
        label = case.get("label") or f"{case['minutes']} min"
        for name, run in runs.items():
            lines.append(
                f"| {label} | {LABELS.get(name, name)} "
                f"| {run['wall_seconds']:.1f} | {run['cpu_seconds']:.1f} "
                f"| {_mb(run['peak_rss_bytes'])} | {_mb(run['peak_scratch_bytes'])} "
                f"| {run['scratch_ratio']:.3f} "
                f"| {_ratio(run, lam, 'wall_seconds')} | {_ratio(run, flo, 'wall_seconds')} "
                f"| {_ratio(run, lam, 'cpu_seconds')} | {_ratio(run, flo, 'cpu_seconds')} "
                f"| {_pct(run.get('cpu_pressure'))} |"
            )
    return lines


def _ratio(run: dict[str, Any], base: dict[str, Any] | None, key: str) -> str:
    """``run[key] / base[key]`` as "1.23x"; "-" when ``base`` was not run."""
    return "-" if base is None or not base[key] else f"{run[key] / base[key]:.2f}x"


def chart(results: dict[str, Any], path: Path) -> None:
    """Wall time vs recording length, one line per implementation (merge, Lambda, floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted(results["media"], key=lambda c: c["minutes"])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, style in (("lambda", "s-"), ("merge", "o-"), ("floor", "^--")):
        xs = [c["minutes"] for c in cases if name in c["runs"]]
        ys = [c["runs"][name]["wall_seconds"] for c in cases if name in c["runs"]]
        ax.plot(xs, ys, style, label=LABELS[name])
    ax.set_xlabel("recording length (minutes)")
    ax.set_ylabel("wall time (s)")
    ax.set_title("Merge wall time vs recording length (720p H.264+AAC)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(results: dict[str, Any], directory: Path) -> Path:
    """Write results.json, chart.png and results.md under ``directory``; return the .md path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if results.get("media"):
        chart(results, directory / "chart.png")
    md = directory / "results.md"
    md.write_text(render(results))
    return md


def render(results: dict[str, Any]) -> str:
    """The Markdown report."""
    out: list[str] = ["# Benchmark results", ""]
    out.append(
        f"Run: {results['started']} UTC, `{results['command']}`, "
        f"took {results['elapsed_seconds'] / 60:.1f} min."
    )
    if results.get("media_generation_seconds") is not None:
        out.append(
            f"Cached media ready in {results['media_generation_seconds']:.0f} s "
            "(generated on the first run, reused afterwards)."
        )
    out.append("")
    if results.get("media"):
        out += ["## Merge: this project vs the Lambda's sequence vs the floor", ""]
        out += media_rows(results)
        out += [
            "",
            "Wall = in-process wall time of the work (interpreter start-up excluded: a running",
            "worker has paid it). CPU = user+sys of the whole process tree (wait4 rusage) minus",
            "the runner interpreter's start-up CPU; every implementation is essentially",
            "single-threaded ffmpeg work, so CPU is close to the wall time on an idle machine",
            "(CPU pressure = share of the run's wall time during which some task on the machine",
            "waited for a CPU, from /proc/pressure/cpu: how contended the shared machine was).",
            "Peak RSS = sum over the process tree (Python + ffmpeg), sampled every 50 ms. Peak",
            "scratch = bytes allocated in the run's directory, inputs included (hard-linked in).",
            "",
            "![wall time vs recording length](chart.png)",
            "",
        ]
    if results.get("sync"):
        out += sync_section(results["sync"])
    if results.get("transfer"):
        out += _transfer_section(results["transfer"])
    worker = results.get("worker")
    if worker:
        out += _worker_section(worker)
    if results.get("targets"):
        out += [
            "## Targets (longest recording measured)",
            "",
            "| Target | Measured | Met |",
            "|---|---|---|",
        ]
        for target in results["targets"]:
            met = {True: "yes", False: "**no**", None: "not measured"}[target["met"]]
            out.append(f"| {target['name']} | {target['measured']} | {met} |")
        out.append("")
    out += ["## Machine", ""]
    for key, value in results["machine"].items():
        out.append(f"- {key}: {value}")
    out += ["", "## Reproduce", "", "```", *results["reproduce"], "```", ""]
    return "\n".join(out)


def sync_section(synced: dict[str, Any]) -> list[str]:
    """Issue 13: the call-end sync's error table over the speech corpus."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    out = [
        "## Call-end sync on the speech corpus (issue 13)",
        "",
        f"{synced['cases']} cases x {synced['merges'] // max(1, synced['cases'])} timestamp "
        "errors, each merged with `ALIGN_MODE=auto`; the alignment error is measured in the "
        "output (Connect audio against the microphone, by cross-correlation).",
        "",
        "| Merges | Waveform syncs | Median abs error ms | Max abs error ms | Wrong syncs "
        "| Fallbacks (required) | Fallbacks on speech | Timestamp alone: median abs error ms "
        "| Lowest synced confidence | Highest confidence without the call |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        f"| {synced['merges']} | {synced['waveform_syncs']} "
        f"| {ms(synced['median_abs_error_ms'])} | {ms(synced['max_abs_error_ms'])} "
        f"| {synced['wrong_syncs']} | {synced['fallbacks']} ({synced['fallbacks_expected']}) "
        f"| {synced['fallbacks_on_speech']} | {ms(synced['timestamp_median_abs_error_ms'])} "
        f"| {ms(synced['min_confidence_synced'])} | {ms(synced['max_confidence_negative'])} |",
        "",
    ]
    cost = synced.get("cost")
    if cost:
        out += [
            f"The sync alone (two fast-seeked decodes and the correlations, in process) on the "
            f"{cost['minutes']}-minute recording: median {cost['median_seconds']:.2f} s, best "
            f"{cost['best_seconds']:.2f} s.",
            "",
        ]
    out += [
        "| Case | Timestamp error s | Method | Reason | Confidence | Error in output ms |",
        "|---|--:|---|---|--:|--:|",
    ]
    for row in synced["rows"]:
        out.append(
            f"| {row['case']} | {row['timestamp_error']:+.1f} | {row['method']} "
            f"| {row['reason']} | {row['confidence']:.1f} | {row['error_ms']:+.2f} |"
        )
    out.append("")
    return out


def _worker_section(worker: dict[str, Any]) -> list[str]:
    out = ["## Worker: jobs through the moto server (`komorebi-worker run`)", ""]
    if worker.get("error"):
        out += [f"Throughput not measured: {worker['error']}", ""]
    if worker.get("runs"):
        out += [
            "Short jobs (60 s 720p recording, 45 s Connect WAV), each a fresh world:",
            "",
            "| WORKER_CONCURRENCY | Jobs done | Wall s | Jobs/min | Mean job s "
            "| Mean probe+merge s | Mean overhead outside ffmpeg s | Peak RSS MB "
            "| CPU s/job worker+ffmpeg | CPU s/job emulator | CPU-bound ceiling jobs/min "
            "| CPU pressure |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for run in worker["runs"]:
            done = max(run["done"], 1)
            out.append(
                f"| {run['concurrency']} | {run['done']}/{run['jobs']} | {run['wall_seconds']:.1f} "
                f"| {run['jobs_per_minute']:.1f} | {run['mean_job_seconds']:.2f} "
                f"| {run['mean_merge_seconds']:.2f} | {run['mean_overhead_seconds']:.2f} "
                f"| {_mb(run['peak_rss_bytes'])} "
                f"| {run.get('worker_cpu_seconds', float('nan')) / done:.2f} "
                f"| {run.get('moto_cpu_seconds', float('nan')) / done:.2f} "
                f"| {run.get('cpu_bound_jobs_per_minute', float('nan')):.1f} "
                f"| {_pct(run.get('cpu_pressure'))} |"
            )
        if worker.get("speedup") is not None:
            out += ["", f"Concurrency 2 / concurrency 1 jobs/min: **{worker['speedup']:.2f}x**"]
        stages = worker["runs"][0].get("mean_stage_seconds", {})
        if stages:
            listed = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
            out += ["", f"Mean stage seconds at concurrency 1: {listed}."]
        out.append("")
    if worker.get("jobs_rss"):
        out += [
            "One whole job (download, probe, merge, thumbnail, upload, row update) per length,",
            "concurrency 1; RSS = the worker process tree (Python + ffmpeg), sampled:",
            "",
            "| Recording | Job s | Peak RSS MB | Peak scratch MB | Inputs MB |",
            "|---|--:|--:|--:|--:|",
        ]
        for run in worker["jobs_rss"]:
            out.append(
                f"| {run['minutes']} min | {run['mean_job_seconds']:.1f} "
                f"| {_mb(run['peak_rss_bytes'])} | {_mb(run['peak_scratch_bytes'])} "
                f"| {_mb(run['input_bytes'])} |"
            )
        out.append("")
    if worker.get("jobs_rss_error"):
        out += [f"Whole-job runs incomplete: {worker['jobs_rss_error']}", ""]
    return out


def _transfer_section(t: dict[str, Any]) -> list[str]:
    out = [
        f"## S3 transfer of a {t['size_mib']} MiB object (moto server in its own process, "
        f"best of {t['rounds']})",
        "",
        "`signed`: as the SDKs behave over plain HTTP (moto): SigV4 hashes every request body "
        "(SHA-256). `unsigned`: `s3.payload_signing_enabled = false` in the shared config file "
        "for both clients, which is what both SDKs do by themselves over HTTPS when a CRC32 "
        "checksum header is present (production S3).",
        "",
        "| Variant | Implementation | Upload MiB/s | Download MiB/s | CPU s up/down "
        "| Peak RSS MB up/down |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for variant, by_impl in t["best"].items():
        for impl in ("project", "boto3"):
            b = by_impl[impl]
            up, down = b["upload"], b["download"]
            out.append(
                f"| {variant} | {impl} | {up['mib_per_s']:.0f} | {down['mib_per_s']:.0f} "
                f"| {up['cpu_seconds']:.1f} / {down['cpu_seconds']:.1f} "
                f"| {_mb(up['peak_rss_bytes'])} / {_mb(down['peak_rss_bytes'])} |"
            )
        r = t["ratios"][variant]
        out.append(
            f"| {variant} | **project / boto3** | **{r['upload']:.2f}x** "
            f"| **{r['download']:.2f}x** | | |"
        )
    out.append("")
    return out
