"""A worker process stopped in the middle of a merge, and what it must have given back.

:func:`sigterm_mid_merge` seeds a contact whose merge takes ~16 s (its ffmpeg reads the
4 s recording at a quarter of real time), starts ``komorebi-worker run``, sends SIGTERM once
ffmpeg runs and expects exit 0 with the job released; :func:`assert_given_back` checks the
message, the row's lease, the scratch directory and the ffmpeg processes afterwards.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.harness.fixtures_aws import AwsEnv
from tests.harness.polling import wait_until
from tests.harness.worker_harness import (
    STOP_TIMEOUT_SECONDS,
    Contact,
    WorkerProcess,
    get_row,
    queue_depth,
    receive_now,
    seed_contact,
    send_job,
)

# ffmpeg reads the recording at this multiple of real time: a 4 s recording merges in ~16 s.
SLOW_READRATE = 0.25


def ffmpeg_children_using(folder: Path) -> list[psutil.Process]:
    """Running ffmpeg/ffprobe processes whose command line names ``folder``."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if (process.info.get("name") or "").startswith("ff") and str(folder) in cmdline:
            found.append(process)
    return found


@dataclass(frozen=True)
class StoppedMidMerge:
    """The contact, its message and the worker that was stopped while merging it."""

    contact: Contact
    message_id: str
    worker: WorkerProcess


def sigterm_mid_merge(
    aws: AwsEnv,
    recording: Path,
    env: Mapping[str, str],
    log_path: Path,
    *,
    row_extra: dict[str, Any] | None = None,
    mid_merge: Callable[[Contact], None] | None = None,
) -> StoppedMidMerge:
    """Seed a contact (``row_extra`` added to its row), start a worker with ``env`` (its
    ``SCRATCH_DIR`` set), SIGTERM it once ffmpeg runs (``mid_merge`` is called just before);
    it must exit 0 and log one ``job.released``."""
    scratch = Path(env["SCRATCH_DIR"])
    contact = seed_contact(aws, recording=recording, extra=row_extra)
    message_id = send_job(aws, contact.recording_id, 3)
    worker = WorkerProcess(env, log_path, readrate=SLOW_READRATE)
    try:
        worker.wait_for_event("merge_plan")  # ffmpeg is about to start
        wait_until(lambda: bool(ffmpeg_children_using(scratch)), what="ffmpeg running")
        if mid_merge is not None:
            mid_merge(contact)
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=STOP_TIMEOUT_SECONDS) == 0, worker.tail()
    finally:
        worker.stop()
    assert worker.count("job.released") == 1, worker.tail()
    return StoppedMidMerge(contact, message_id, worker)


def assert_given_back(aws: AwsEnv, stopped: StoppedMidMerge, scratch: Path) -> dict[str, Any]:
    """After :func:`sigterm_mid_merge`: the message visible again within seconds (not after
    the queue's own 300 s visibility) and left visible, the lease released, the scratch
    directory empty, no ffmpeg left. Returns the row."""
    wait_until(lambda: queue_depth(aws)[0] == 1, timeout=5, what="the message visible again")
    messages = receive_now(aws)
    assert [m["MessageId"] for m in messages] == [stopped.message_id]
    aws.client("sqs").change_message_visibility(
        QueueUrl=aws.queue_url, ReceiptHandle=messages[0]["ReceiptHandle"], VisibilityTimeout=0
    )
    row = get_row(aws, stopped.contact.recording_id)
    assert "leaseOwner" not in row, row
    assert list(scratch.iterdir()) == []
    assert ffmpeg_children_using(scratch) == []
    assert "Traceback" not in stopped.worker.log_path.read_text()
    return row
