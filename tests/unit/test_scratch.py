"""worker.scratch: a job's own directory, always removed (also when cancelled, never on the
event loop), a full disk transient only when shared, dead processes' directories swept.

Unit tests: no subprocess (a pid above ``pid_max`` is a process that cannot exist), no socket.
The moto/ffmpeg job tests (tests/aws/test_job.py) check the same through process_job.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from worker.errors import ScratchBusy, ScratchFull, TooLargeForScratch
from worker.scratch import (
    job_directory,
    remove_scratch,
    scratch_prefix,
    shared_with_other_jobs,
    sweep_stale_scratch,
)

pytestmark = pytest.mark.anyio

# No process can have a pid above the kernel's limit (4194304 at most on Linux).
NO_SUCH_PID = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def _job_dir(scratch: Path, recording_id: str, pid: int | None = None) -> Path:
    path = scratch / (scratch_prefix(recording_id, pid) + "x")
    path.mkdir()
    (path / "recording-input.mp4").write_bytes(b"x" * 10)
    return path


def test_the_prefix_names_the_owning_process_and_the_recording() -> None:
    assert scratch_prefix("rec-1", 42) == "job-42-rec-1-"
    assert scratch_prefix("r" * 100).startswith(f"job-{os.getpid()}-{'r' * 40}-")
    assert len(scratch_prefix("r" * 100, 1)) == len("job-1-") + 40 + 1


def test_the_sweep_removes_dead_processes_and_our_own_earlier_directories(
    tmp_path: Path,
) -> None:
    stale = _job_dir(tmp_path, "rec-a", NO_SUCH_PID)
    ours = _job_dir(tmp_path, "rec-b")  # this pid, before any job ran: a reused pid
    running = _job_dir(tmp_path, "rec-c", os.getppid())  # a live process's
    (tmp_path / "keep-me").mkdir()
    (tmp_path / "job-7-a-file").write_bytes(b"not a directory")
    assert sweep_stale_scratch(tmp_path) == 2
    assert not stale.exists() and not ours.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [running.name, "keep-me", "job-7-a-file"]
    )


async def test_a_job_directory_is_its_own_and_removed_when_the_job_ends(tmp_path: Path) -> None:
    async with job_directory(tmp_path, "rec-1") as workdir:
        assert workdir.parent == tmp_path and workdir.is_dir()
        assert workdir.name.startswith(scratch_prefix("rec-1"))
        (workdir / "nested").mkdir()
        (workdir / "nested" / "out.mp4").write_bytes(b"\0" * 1000)
    assert list(tmp_path.iterdir()) == []


async def test_a_job_directory_is_removed_on_failure_and_on_cancellation(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        async with job_directory(tmp_path, "rec-1") as workdir:
            (workdir / "in.wav").write_bytes(b"x")
            raise RuntimeError("boom")
    with anyio.CancelScope() as scope:
        async with job_directory(tmp_path, "rec-2") as workdir:
            (workdir / "in.wav").write_bytes(b"x")
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("other", [None, "keep-me", "job"])
async def test_a_full_disk_is_transient_only_beside_another_job(
    tmp_path: Path, other: str | None
) -> None:
    if other == "job":
        _job_dir(tmp_path, "other-recording")
    elif other is not None:
        (tmp_path / other).mkdir()  # not a job's directory: the disk is not shared
    expected = ScratchBusy if other == "job" else ScratchFull
    with pytest.raises(expected) as caught:
        async with job_directory(tmp_path, "rec-1"):
            raise ScratchFull("object of 10 bytes does not fit in 5 free scratch bytes")
    assert caught.value.message.startswith("object of 10 bytes does not fit")
    assert sorted(p.name.startswith("job-") for p in tmp_path.iterdir()) == (
        [True] if other == "job" else [False] * (other is not None)
    )


async def test_too_large_for_scratch_stays_permanent_beside_another_job(tmp_path: Path) -> None:
    _job_dir(tmp_path, "other-recording")
    with pytest.raises(TooLargeForScratch):
        async with job_directory(tmp_path, "rec-1"):
            raise TooLargeForScratch("object of 10 bytes exceeds SCRATCH_MAX_BYTES=5")


def test_shared_with_other_jobs_ignores_the_own_directory(tmp_path: Path) -> None:
    own = _job_dir(tmp_path, "rec-1")
    assert not shared_with_other_jobs(tmp_path, own)
    _job_dir(tmp_path, "rec-2", 1)
    assert shared_with_other_jobs(tmp_path, own)


async def test_removal_runs_in_a_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Unlinking multi-GB files takes a while: on the event loop it would stall every other
    # job's heartbeat and /healthz.
    real_rmtree = shutil.rmtree
    on_loop: list[bool] = []

    def spy(path: Any, *args: Any, **kwargs: Any) -> None:
        on_loop.append(threading.current_thread() is threading.main_thread())
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", spy)
    async with job_directory(tmp_path, "rec-1"):
        pass
    assert on_loop == [False]
    assert list(tmp_path.iterdir()) == []


async def test_scratch_removal_is_not_interrupted_by_a_cancellation(tmp_path: Path) -> None:
    workdir = tmp_path / "job-1-rec-x"
    (workdir / "nested").mkdir(parents=True)
    (workdir / "nested" / "recording-input.mp4").write_bytes(b"\0" * 100_000)
    with anyio.CancelScope() as scope:
        scope.cancel()  # already cancelled when the clean-up starts
        await remove_scratch(workdir)
    assert not workdir.exists()
