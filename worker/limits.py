"""Limits the worker's modules share, each written once (pure: no I/O, no worker imports).

The media limits (the one-week bound, ffmpeg's time limits), the SQS service limits the
consumer and the queue adapter both obey, and :class:`ShutdownBudget`: every bounded step
between SIGTERM and the process's exit, named, so that one sum (:meth:`ShutdownBudget.total`)
says whether a ``SHUTDOWN_GRACE_SECONDS`` fits Fargate's stop timeout. The modules that run
those steps read their bound from :data:`SHUTDOWN`; ``config`` refuses a grace that does not
fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Nothing we process is longer than a week: a call end past it is not a timestamp someone
# meant, and a media timeline past it is a broken header. Bounding keeps arithmetic and
# ffmpeg's time limits sane.
MAX_MEDIA_SECONDS: Final = 7 * 24 * 3600.0

# An ffmpeg run over N seconds of media may take base + per_media_second * N seconds
# (FFMPEG_TIMEOUT_BASE_SECONDS / FFMPEG_TIMEOUT_PER_MEDIA_SECOND); a run over no media
# (probe, thumbnail) gets the base.
FFMPEG_TIMEOUT_BASE_SECONDS: Final = 120.0
FFMPEG_TIMEOUT_PER_MEDIA_SECOND: Final = 1.0

# SQS: a message's visibility cannot reach past 12 h after its receipt.
SQS_MAX_VISIBILITY_SECONDS: Final = 12 * 60 * 60
# SQS batch APIs (ReceiveMessage, SendMessageBatch, DeleteMessageBatch) take at most 10
# (moto accepts more; AWS does not).
SQS_MAX_BATCH: Final = 10
# The longest long poll SQS allows.
SQS_MAX_WAIT_SECONDS: Final = 20

# ECS sends SIGKILL this long after SIGTERM (the task definition's StopTimeout, Fargate's
# maximum: infra/template.yaml).
FARGATE_STOP_TIMEOUT_SECONDS: Final = 120.0


@dataclass(frozen=True)
class ShutdownBudget:
    """Every bounded step between SIGTERM and exit, in seconds (the module docstring of
    :mod:`worker.consumer` tells the story; this is its arithmetic).

    A busy worker: its receive in progress is given at most half the grace to run
    (:meth:`busy_poll_wait`), the jobs in flight get the grace, then each cancelled job kills
    its ffmpeg, releases its lease, removes its scratch directory and gives its message back,
    one after the other (jobs do this concurrently); then the worker turns task protection
    off and stops its HTTP server. An idle worker has no grace to spend: its receive ends
    within its own timeout, what it brought is given back, and it exits.
    """

    # ffmpeg.py: after SIGKILL, how long the runner waits to reap the process.
    kill_ffmpeg: float = 3.0
    # job_lease.py: the lease's release (one UpdateItem, shielded), past it the lease expires.
    release_lease: float = 5.0
    # job.py: removing a job's scratch directory (rmtree in a worker thread, shielded). Not a
    # timeout, an allowance: a job's few files on local disk go in well under a second.
    remove_scratch: float = 1.0
    # delivery.py / consumer.py: a message made visible again (ChangeMessageVisibility 0).
    give_back: float = 5.0
    # delivery.py: carrying out a finished job's outcome (delete / dead-letter / retry, the
    # row, shielded). A job that finishes just before the grace ends settles after it, in
    # place of a cancelled job's clean-ups: no longer than those, so the sum holds either way.
    settle: float = 14.0
    # protection.py: the ECS agent call turning scale-in protection off (its HTTP timeout).
    protection_off: float = 3.0
    # observability/server.py: aiohttp's shutdown timeout for a scrape in progress.
    http_stop: float = 2.0
    # consumer.py: the idle long poll's wait, and how long a receive may run past its wait
    # before the loop gives up on it.
    receive_wait: float = float(SQS_MAX_WAIT_SECONDS)
    receive_overrun: float = 15.0
    # shutdown.py: while stopping with jobs in flight, a receive in progress may run this long
    # past its wait (a short poll's round trip) before it is cancelled.
    receive_finish: float = 1.0
    stop_timeout: float = FARGATE_STOP_TIMEOUT_SECONDS

    def busy_poll_wait(self, grace: float) -> int:
        """Long-poll length with jobs in flight: at most half the grace, so that a poll
        running at SIGTERM is over before the grace ends (whole seconds: SQS's unit)."""
        return max(0, min(int(self.receive_wait), int(grace / 2)))

    def cancelled_job(self) -> float:
        """One job cancelled at the end of the grace: kill, release, remove, give back."""
        return self.kill_ffmpeg + self.release_lease + self.remove_scratch + self.give_back

    def exit(self) -> float:
        """After the last job: protection off, then the HTTP server."""
        return self.protection_off + self.http_stop

    def after_grace(self) -> float:
        """What a job may still take once the grace is over: a cancelled job's clean-ups, or
        the settling of one that finished just before."""
        return max(self.cancelled_job(), self.settle)

    def busy(self, grace: float) -> float:
        """Worst case with jobs in flight: the grace (or the receive in progress and the give
        back of what it brought, when that is longer), the jobs' last steps, exit."""
        receive = self.busy_poll_wait(grace) + self.receive_finish + self.give_back
        return max(grace, receive) + self.after_grace() + self.exit()

    def idle(self) -> float:
        """Worst case with nothing in flight: the receive to its own timeout, its messages
        given back, exit."""
        return self.receive_wait + self.receive_overrun + self.give_back + self.exit()

    def total(self, grace: float) -> float:
        """The longest a stop can take with ``SHUTDOWN_GRACE_SECONDS`` = ``grace``."""
        return max(self.busy(grace), self.idle())

    def max_grace(self) -> float:
        """The largest grace whose :meth:`total` stays within the stop timeout."""
        return self.stop_timeout - self.after_grace() - self.exit()


SHUTDOWN: Final = ShutdownBudget()
