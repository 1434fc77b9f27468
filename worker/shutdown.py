"""How the worker stops (SPEC §6): :class:`StopState`, the stop state machine.

Stopping (SIGTERM/SIGINT): the first signal stops polling at once and marks the worker not
ready; in-flight jobs get ``SHUTDOWN_GRACE_SECONDS`` (0 is allowed: give everything back at
once) to finish. Jobs still running then are cancelled: their ffmpeg is killed by the media
runner's cancel scope, their lease is released and their message made visible again
(visibility 0) in shielded, time-bounded clean-ups; the process exits 0. A second signal
cancels the in-flight jobs immediately (same clean-ups, bounded to a few seconds) and exits
with 128 + signal number. ``os._exit`` is deliberately not used: ffmpeg runs in its own
session and would survive us.

Draining (the task's deployment was superseded, worker.deployment): polling stops the same
way, but the jobs in flight finish without a time limit (a later signal still sets the grace
deadline); protection goes off with the last one and the process exits 0.

The long poll in progress at the first signal needs care: SQS keeps delivering to a long poll
whose connection was dropped, so cancelling it would hide the next message for a whole
visibility timeout (aws/aws-sdk-java-v2#1395, aws/aws-sdk-go-v2#2068; moto behaves the same).
So a stop never cancels it (only a second signal does): it is left to finish and whatever it
returns is made visible again at once (ChangeMessageVisibility 0), then the worker exits.
The budget fits Fargate's 120 s stop timeout either way. An idle worker has no grace to spend:
its poll ends within the long-poll wait (20 s) plus ``RECEIVE_OVERRUN_SECONDS`` (its own
timeout, :mod:`worker.consumer`), about 35 s at worst. A busy worker polls for at most half
the grace period (``SHUTDOWN_GRACE_SECONDS`` 100 -> 20 s, the long poll's maximum), so its
poll is over before the grace ends and before the jobs still running are cancelled; the
messages of cancelled jobs, given back after it, are visible at once; their clean-ups are
bounded. Every one of those bounds is a named part of :data:`worker.limits.SHUTDOWN`, whose
``total(grace)`` is the sum (119 s with the default grace); ``config`` refuses a grace that
would not fit.
"""

from __future__ import annotations

import math

import anyio
import structlog

from worker.limits import SHUTDOWN
from worker.observability import HealthState

log = structlog.get_logger(__name__)

# While stopping with jobs in flight, a receive in progress may run this long past its wait
# (a short poll's round trip) before it is cancelled, even when the grace period is shorter.
RECEIVE_FINISH_SECONDS = SHUTDOWN.receive_finish


class StopState:
    """The stop state machine: running -> stopping (graceful) -> forced (second signal).

    It also keeps the in-flight count, because what a stop does depends on it: with jobs in
    flight the receive in progress must end within the grace period (see the module
    docstring). Waiters (a free slot, the drain) wait for :meth:`notify`.
    """

    def __init__(self, health: HealthState, grace_seconds: float) -> None:
        self._health = health
        self.grace_seconds = grace_seconds
        self.stopping = False
        # A signal asked for the stop (a second one forces it); a superseded deployment
        # (request_drain) stops polling too, without a deadline.
        self.signalled = False
        self.superseded = False
        self.forced = False
        self.in_flight = 0
        # Monotonic (anyio clock) time at which in-flight jobs are cancelled.
        self.deadline = math.inf
        self.receive_scope: anyio.CancelScope | None = None
        self._receive_ends = math.inf
        # Start-up checks in progress: a stop cancels them at once (nothing is in flight yet).
        self.ready_scope: anyio.CancelScope | None = None
        self.service_scope: anyio.CancelScope | None = None
        self._changed: anyio.Event | None = None

    def start(self) -> None:
        """Called inside the event loop before anything waits on :meth:`wait_for_change`."""
        self._changed = anyio.Event()

    def request_stop(self) -> None:
        """Graceful stop: no more polls; in-flight jobs get the grace period (also when a
        deployment drain is already under way: the signal's budget is what ECS allows)."""
        if self.signalled:
            return
        self.signalled = True
        self.deadline = min(self.deadline, anyio.current_time() + self.grace_seconds)
        log.info("worker.stopping", in_flight=self.in_flight, grace_seconds=self.grace_seconds)
        self._stop_polling("stopping")

    def request_drain(self) -> None:
        """This task's deployment was superseded (worker.deployment): no more polls, the jobs
        in flight finish without a time limit (they would have been run anyway; a signal
        still bounds them), then the worker exits 0 and ECS starts a current task."""
        if self.stopping:
            return
        self.superseded = True
        log.info("worker.draining_superseded", in_flight=self.in_flight)
        self._stop_polling("superseded")

    def _stop_polling(self, reason: str) -> None:
        self.stopping = True
        self._health.set_ready(False, reason)
        self._health.loop_stopped()
        if self.ready_scope is not None:
            self.ready_scope.cancel()
        self.end_receive()
        self.notify()

    def force_stop(self) -> None:
        """Immediate stop: cancel in-flight jobs now (their clean-ups still run, bounded)."""
        self.forced = True
        self.request_stop()
        self.end_receive()
        log.warning("worker.stopping_now", in_flight=self.in_flight)
        if self.service_scope is not None:
            self.service_scope.cancel()

    def receiving(self, scope: anyio.CancelScope | None, wait_seconds: float = 0.0) -> None:
        """The poll loop entered (``scope``) or left (None) a receive of ``wait_seconds``."""
        self.receive_scope = scope
        self._receive_ends = anyio.current_time() + wait_seconds if scope else math.inf

    def end_receive(self) -> None:
        """While stopping: let the receive in progress finish, never cancel it (see the module
        docstring); a forced stop cancels it. With jobs in flight it must still end by the
        end of the grace period (or right after its own wait), so the messages of jobs
        cancelled then are given back after it; an idle worker's receive is bounded by its
        own timeout (wait + ``RECEIVE_OVERRUN_SECONDS``)."""
        scope = self.receive_scope
        if scope is None or not self.stopping:
            return
        if self.forced:
            scope.cancel()
        elif self.in_flight > 0:
            finish = max(self.deadline, self._receive_ends + RECEIVE_FINISH_SECONDS)
            scope.deadline = min(scope.deadline, finish)

    def job_started(self) -> None:
        """Counted by the poll loop, not the task: the next iteration must see the slot."""
        self.in_flight += 1

    def job_finished(self) -> None:
        """A job's task ended (whatever its outcome)."""
        self.in_flight -= 1
        self.notify()

    def notify(self) -> None:
        """Wake whoever waits for a slot or for the jobs to drain (they re-check their
        condition); a fresh event for the next wait, so no wake-up is ever lost."""
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for_change(self, timeout: float) -> None:  # noqa: ASYNC109
        """Until :meth:`notify` or ``timeout`` seconds."""
        event = self._changed
        if event is None:
            return
        with anyio.move_on_after(timeout):
            await event.wait()
