"""Health state shared by the poll loop and the HTTP server (``/healthz``, ``/readyz``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from worker.observability.metrics import LAST_POLL, READY


class HealthState:
    """Shared by the poll loop and the HTTP server.

    ``/healthz`` (liveness) fails when the poll loop has not iterated for
    ``stall_after_seconds``: a wedged loop is only cured by a restart. Start-up counts as an
    iteration, so a worker that never reaches its loop fails too. ``/readyz`` fails until the
    AWS clients exist and the queue answered, and again while shutting down.
    """

    def __init__(
        self, stall_after_seconds: float = 90.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stall_after_seconds = stall_after_seconds
        self._clock = clock
        self._last_tick = clock()
        self._ready = False
        self._ready_reason = "starting"
        self._loop_stopped = False
        READY.set(0)

    def loop_tick(self) -> None:
        """The poll loop made progress (every iteration, also while waiting for a slot)."""
        self._last_tick = self._clock()

    def poll_succeeded(self) -> None:
        """A ReceiveMessage call succeeded: progress, and the last-poll gauge moves."""
        self.loop_tick()
        LAST_POLL.set(time.time())

    def loop_stopped(self) -> None:
        """The poll loop ended on purpose (shutdown): stop judging liveness by its ticks.

        Without this, a long shutdown grace period would look like a stall and an
        orchestrator could kill the task while it drains its jobs.
        """
        self._loop_stopped = True

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Ready: AWS clients created and queue reachable. Not ready: starting or stopping."""
        self._ready = ready
        self._ready_reason = "ok" if ready else (reason or "not ready")
        READY.set(1 if ready else 0)

    def healthz(self) -> tuple[bool, str]:
        """Liveness: ``(False, why)`` when the poll loop stalled."""
        if self._loop_stopped:
            return True, "ok (poll loop stopped for shutdown)"
        age = self._clock() - self._last_tick
        if age > self.stall_after_seconds:
            return (
                False,
                f"poll loop stalled: no iteration for {age:.0f} s "
                f"(limit {self.stall_after_seconds:.0f} s)",
            )
        return True, "ok"

    def readyz(self) -> tuple[bool, str]:
        """Readiness: ``(False, why)`` before the AWS clients are ready and while stopping."""
        return self._ready, self._ready_reason
