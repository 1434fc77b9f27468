"""Stop signals caught from the first moments of ``komorebi-worker run`` to its last (SPEC §6).

ECS stops a task at any moment, a starting one included. ``run`` imports the SDK, the media
engine and their dependencies before its event loop listens for signals (seconds on a busy
task), and with Python's default action a SIGTERM in that window kills the process
(exit -15, 143 under an init process) instead of stopping it cleanly. So ``run`` installs a
handler that only remembers the signal, before those imports (:func:`install`, called first
by ``worker.cli``'s run command); the service takes what was remembered
(:meth:`StopSignals.take`) once its own signal receiver is open and stops as if the signal had
come then. When the receiver closes (the service is done, the process is on its way out) the
remembering handler goes back in place, so a late signal cannot turn exit 0 into -15.

What is left uncovered is the interpreter's own start (before any of our code runs: a few
tens of milliseconds); nothing inside the process can catch a signal there.

This module imports nothing but the standard library's ``signal``: it must be cheap to import.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Final

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Remembers stop signals until the service takes them."""

    def __init__(self) -> None:
        self.installed = False
        self._received: list[int] = []

    def install(self) -> None:
        """Catch SIGTERM and SIGINT from now on (idempotent; main thread only)."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._remember)
        self.installed = True

    def reinstall(self) -> None:
        """Put the remembering handler back after an event loop's receiver removed its own
        (asyncio restores the default action, which would kill us); a no-op unless
        :meth:`install` ran, so in-process users (tests) keep their own handlers."""
        if self.installed:
            self.install()

    def take(self) -> list[int]:
        """The signals received since the last call, oldest first."""
        taken, self._received = self._received, []
        return taken

    def _remember(self, signum: int, frame: FrameType | None) -> None:
        self._received.append(signum)


# The process's one instance: installed by ``worker.cli``'s run command, taken by
# ``worker.service.run_service``.
PROCESS: Final = StopSignals()


def install() -> None:
    """Catch stop signals in this process from now on (see the module docstring)."""
    PROCESS.install()
