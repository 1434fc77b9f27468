"""Scratch directories: each job's own, always removed; dead processes' swept at start-up.

Every job works in a directory of its own under ``SCRATCH_DIR``, named
``job-<pid>-<recording id>-<random>``: the pid says which process owns it, so a process that
starts can tell which directories a killed one (SIGKILL skips every ``finally``) left behind.

A job's directory is removed in a worker thread inside a shielded scope: a cancellation
cannot interrupt it half-way, and unlinking multi-GB files does not stall the event loop
(other jobs' heartbeats, ``/healthz``).

Whether a full disk is worth a retry also depends on the directories here: alone on the disk,
a job that does not fit never will (:class:`ScratchFull`, permanent); beside other running
jobs it may fit once they end (:class:`ScratchBusy`, transient). An object above
``SCRATCH_MAX_BYTES`` or the disk's size (:class:`TooLargeForScratch`, checked by the object
store) stays permanent whatever else runs.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread

from worker.errors import ScratchBusy, ScratchFull, TooLargeForScratch

__all__ = [
    "job_directory",
    "remove_scratch",
    "scratch_prefix",
    "shared_with_other_jobs",
    "sweep_stale_scratch",
]

_JOB_DIRECTORY = re.compile(r"job-(\d+)-")


def scratch_prefix(recording_id: str, pid: int | None = None) -> str:
    """Name prefix of a job's scratch directory: the pid says which process owns it."""
    return f"job-{os.getpid() if pid is None else pid}-{recording_id[:40]}-"


@asynccontextmanager
async def job_directory(scratch: Path, recording_id: str) -> AsyncIterator[Path]:
    """A new directory of the job's own under ``scratch``, removed (shielded) when the body
    ends however it ends.

    A :class:`ScratchFull` leaving the body while other jobs' directories share ``scratch``
    becomes :class:`ScratchBusy` (they may make room); :class:`TooLargeForScratch` never does.
    """
    workdir = Path(tempfile.mkdtemp(prefix=scratch_prefix(recording_id), dir=scratch))
    try:
        yield workdir
    except ScratchFull as error:
        if not isinstance(error, TooLargeForScratch) and shared_with_other_jobs(scratch, workdir):
            raise ScratchBusy(f"{error.message} (shared with running jobs)") from None
        raise
    finally:
        await remove_scratch(workdir)


async def remove_scratch(workdir: Path) -> None:
    """Remove a job's scratch directory: in a thread (multi-GB files take a while to unlink,
    which must not stall the event loop), shielded so a cancellation cannot leave it
    half-removed."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(
            functools.partial(shutil.rmtree, workdir, ignore_errors=True)
        )


def shared_with_other_jobs(scratch: Path, own: Path) -> bool:
    """Whether another job's directory (this process's or another's) is in ``scratch``."""
    return any(entry != own and entry.is_dir() for entry in scratch.glob("job-*"))


def sweep_stale_scratch(scratch: Path) -> int:
    """Remove job directories left by dead processes (a SIGKILL skips every ``finally``).

    Called once at start-up, before any job runs, so a directory carrying this process's own
    pid is stale too (a restarted container can reuse a pid). Returns how many it removed.
    """
    removed = 0
    for entry in scratch.glob("job-*"):
        match = _JOB_DIRECTORY.match(entry.name)
        if not match or not entry.is_dir():
            continue
        pid = int(match[1])
        if pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
