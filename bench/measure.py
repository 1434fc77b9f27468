"""Measure one command as a process tree: wall time, CPU time, peak RSS, peak scratch disk.

- Wall time: ``perf_counter`` from spawn to reap.
- CPU time: user+sys from ``wait4`` of the direct child. The kernel adds every descendant the
  child waited for (ffmpeg runs are always reaped), so this is the whole tree's CPU, exact,
  without sampling.
- Peak RSS: the SUM of the resident set sizes of the child and all its descendants, sampled
  every ``interval`` seconds with psutil (a short-lived peak between samples can be missed;
  at 50 ms the error is small against multi-second runs).
- Peak scratch: the bytes allocated on disk (``st_blocks * 512``, each inode once) under the
  scratch directory, sampled at the same times. Inputs are hard-linked into the scratch
  directory before the run so they count, as in the worker where they are downloaded there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil


@dataclass
class Measurement:
    """What one measured run cost."""

    wall_seconds: float
    cpu_seconds: float
    user_seconds: float
    system_seconds: float
    peak_rss_bytes: int
    peak_scratch_bytes: int
    samples: int
    returncode: int
    # The last JSON object the command printed on stdout (runner-reported details).
    report: dict[str, Any] = field(default_factory=dict)
    stderr_tail: str = ""
    # Share of the run's wall time during which some runnable task on the machine waited for a
    # CPU (Linux PSI, /proc/pressure/cpu "some"): how contended the shared machine was.
    cpu_pressure: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


def tree_rss(proc: psutil.Process) -> int:
    """Sum of RSS over ``proc`` and all its live descendants (0 for vanished ones)."""
    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue  # exited between listing and reading
    return total


def disk_usage(directory: Path) -> int:
    """Bytes allocated under ``directory`` (each inode counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [directory]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed while walking
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in seen:
                continue
            seen.add(ident)
            total += st.st_blocks * 512
    return total


def cpu_pressure_total() -> int | None:
    """Cumulative microseconds with some task waiting for a CPU (None without PSI)."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(part.split("=", 1) for part in first.split()[1:])
    return int(fields["total"])


def measure(
    argv: Sequence[str],
    *,
    scratch: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    interval: float = 0.05,
) -> Measurement:
    """Run ``argv`` to completion and return what it cost (see the module docstring)."""
    pressure_before = cpu_pressure_total()
    started = time.perf_counter()
    child = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    # Drain the pipes in threads so a chatty child never blocks on a full pipe.
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []

    def drain(stream: Any, sink: list[bytes]) -> None:
        for chunk in iter(lambda: stream.read(65536), b""):
            sink.append(chunk)

    readers = [
        threading.Thread(target=drain, args=(child.stdout, out_chunks), daemon=True),
        threading.Thread(target=drain, args=(child.stderr, err_chunks), daemon=True),
    ]
    for reader in readers:
        reader.start()
    proc = psutil.Process(child.pid)
    peak_rss = 0
    peak_scratch = 0
    samples = 0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid == child.pid:
            wall = time.perf_counter() - started
            break
        peak_rss = max(peak_rss, tree_rss(proc))
        if scratch is not None:
            peak_scratch = max(peak_scratch, disk_usage(scratch))
        samples += 1
        time.sleep(interval)
    pressure_after = cpu_pressure_total()
    pressure = None
    if pressure_before is not None and pressure_after is not None and wall > 0:
        pressure = (pressure_after - pressure_before) / 1e6 / wall
    child.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    if scratch is not None:
        peak_scratch = max(peak_scratch, disk_usage(scratch))
    stdout = b"".join(out_chunks).decode(errors="replace")
    stderr = b"".join(err_chunks).decode(errors="replace")
    report: dict[str, Any] = {}
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                report = json.loads(line)
                break
            except ValueError:
                continue
    return Measurement(
        wall_seconds=wall,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        user_seconds=usage.ru_utime,
        system_seconds=usage.ru_stime,
        peak_rss_bytes=peak_rss,
        peak_scratch_bytes=peak_scratch,
        samples=samples,
        returncode=child.returncode,
        report=report,
        stderr_tail="\n".join(stderr.splitlines()[-15:]),
        cpu_pressure=pressure,
    )


def prepare_scratch(directory: Path, inputs: Sequence[Path]) -> list[Path]:
    """Fresh ``directory`` holding hard links (copies across devices) of ``inputs``."""
    if directory.exists():
        remove_tree(directory)
    directory.mkdir(parents=True)
    linked = []
    for source in inputs:
        target = directory / source.name
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        linked.append(target)
    return linked


def remove_tree(directory: Path) -> None:
    """Delete ``directory`` and everything in it (missing is fine)."""
    shutil.rmtree(directory, ignore_errors=True)
