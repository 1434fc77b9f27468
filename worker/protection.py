"""ECS task scale-in protection (SPEC §6): on while at least one job runs, off when idle.

The ECS container agent injects ``ECS_AGENT_URI`` into every task's containers;
``PUT $ECS_AGENT_URI/task-protection/v1/state`` with ``{"ProtectionEnabled": true,
"ExpiresInMinutes": N}`` keeps service auto scaling and deployments from stopping this task
for N minutes. Off ECS (no ``ECS_AGENT_URI``) every method is a no-op.

Protection is an optimisation, never a reason to fail a job: every error of the agent call
(unreachable, timeout, non-2xx, a ``failure``/``error`` body) is logged on one line and the
state is retried by :meth:`TaskProtector.run`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import anyio
import structlog

from worker.errors import one_line
from worker.limits import SHUTDOWN
from worker.observability import TASK_PROTECTION

log = structlog.get_logger(__name__)

# Agent error details in log lines are cut to this many characters.
_DETAIL_CHARS = 200

PROTECTION_PATH: Final = "/task-protection/v1/state"
# ECS accepts 1..2880 minutes (48 h).
MIN_EXPIRES_MINUTES: Final = 1
MAX_EXPIRES_MINUTES: Final = 2880
# Renew at 80 % of the protection window: leaves a fifth of it for retries of a failed renewal.
DEFAULT_RENEW_FRACTION: Final = 0.8
# The agent is a local endpoint; anything slower than this is broken, and a job start must not
# wait on it for long.
DEFAULT_TIMEOUT_SECONDS: Final = SHUTDOWN.protection_off
# After a failed call, try again this soon (capped by the renewal period).
DEFAULT_RETRY_SECONDS: Final = 30.0


class TaskProtector:
    """Reference-counted scale-in protection for the ECS task this process runs in.

    ``job_started``/``job_finished`` are called by the consumer around every job; the first
    job turns protection on, the last one to finish turns it off. :meth:`run` (in the
    consumer's task group) renews protection before it expires while busy, retries failed
    calls, and turns protection off when cancelled.
    """

    def __init__(
        self,
        agent_uri: str | None,
        expires_minutes: int,
        *,
        renew_fraction: float = DEFAULT_RENEW_FRACTION,
        renew_after_seconds: float | None = None,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        """Create a protector; ``agent_uri`` None makes it a no-op.

        ``renew_after_seconds`` overrides ``renew_fraction * expires_minutes * 60`` (tests use a
        fraction of a second; ECS itself only takes whole minutes).
        """
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1")
        self._url = agent_uri.rstrip("/") + PROTECTION_PATH if agent_uri else None
        self._expires_minutes = min(MAX_EXPIRES_MINUTES, max(MIN_EXPIRES_MINUTES, expires_minutes))
        self._renew_after = (
            renew_after_seconds
            if renew_after_seconds is not None
            else self._expires_minutes * 60 * renew_fraction
        )
        self._retry_seconds = min(retry_seconds, self._renew_after)
        self._timeout = timeout_seconds
        self._busy = 0
        self._protected = False
        # Monotonic deadline of the next renewal (or retry); inf while nothing is due.
        self._next_action = math.inf
        # After a failed call, job starts do not call the agent again before this time (run()
        # retries): a broken agent must not add its timeout to every job.
        self._retry_at = 0.0
        # Serialises state changes with their agent call, so a quick finish/start pair can
        # never leave protection off while a job runs.
        self._lock = anyio.Lock()
        self._changed = anyio.Event()

    @classmethod
    def from_env(
        cls, expires_minutes: int, environ: Mapping[str, str] | None = None
    ) -> TaskProtector:
        """A protector for ``ECS_AGENT_URI`` (no-op when unset or empty)."""
        env = os.environ if environ is None else environ
        uri = (env.get("ECS_AGENT_URI") or "").strip()
        return cls(uri or None, expires_minutes)

    @property
    def active(self) -> bool:
        """True when running on ECS (an agent URI is configured)."""
        return self._url is not None

    @property
    def protected(self) -> bool:
        """True while the last successful call turned protection on."""
        return self._protected

    @property
    def busy(self) -> int:
        """Number of jobs currently running."""
        return self._busy

    async def job_started(self) -> None:
        """A job starts: the first running job turns protection on."""
        async with self._lock:
            self._busy += 1
            if self._url is not None and self._busy == 1 and not self._protected:
                if anyio.current_time() >= self._retry_at:
                    await self._apply(enable=True)
                else:
                    # The agent failed moments ago: let run() retry at the retry time.
                    self._next_action = min(self._next_action, self._retry_at)
                    self._changed.set()

    async def job_finished(self) -> None:
        """A job ends: when none is left running, protection goes off."""
        async with self._lock:
            self._busy = max(0, self._busy - 1)
            if self._url is not None and self._busy == 0 and self._protected:
                await self._apply(enable=False)

    async def run(self) -> None:
        """Until cancelled: renew while busy, retry failed calls; turn protection off on exit.

        Never raises (except cancellation). A no-op loop off ECS.
        """
        if self._url is None:
            await anyio.sleep_forever()
            return
        try:
            while True:
                delay = self._next_action - anyio.current_time()
                if delay > 0:
                    with anyio.move_on_after(delay if math.isfinite(delay) else None):
                        await self._changed.wait()
                    self._changed = anyio.Event()
                    if anyio.current_time() < self._next_action:
                        continue
                async with self._lock:
                    if anyio.current_time() < self._next_action:
                        continue  # a job_started/finished call already did the work
                    if self._busy > 0:
                        await self._apply(enable=True)  # renewal, or retry of a failed enable
                    elif self._protected:
                        await self._apply(enable=False)  # retry of a failed disable
                    else:
                        self._next_action = math.inf
        finally:
            # Not again when the agent failed moments ago (a disable at the last job's end
            # that timed out): a second timeout would push the stop past its budget
            # (worker.limits.SHUTDOWN counts one call), and a task that exits needs no
            # protection off to stop.
            if self._protected and anyio.current_time() >= self._retry_at:
                # Shielded: we are usually here because of a cancellation, and leaving the
                # task protected would block scale-in for up to N minutes.
                with anyio.CancelScope(shield=True):
                    await self._apply(enable=False)

    async def _apply(self, *, enable: bool) -> None:
        """One agent call; updates state, gauge and the next deadline. Never raises."""
        body: dict[str, Any] = {"ProtectionEnabled": enable}
        if enable:
            body["ExpiresInMinutes"] = self._expires_minutes
        ok = await self._put(body)
        now = anyio.current_time()
        if ok:
            self._protected = enable
            TASK_PROTECTION.set(1 if enable else 0)
            self._next_action = now + self._renew_after if enable else math.inf
            log.info(
                "task protection " + ("enabled" if enable else "disabled"),
                expires_minutes=self._expires_minutes if enable else None,
            )
            self._retry_at = 0.0
        else:
            self._next_action = self._retry_at = now + self._retry_seconds
        self._changed.set()

    async def _put(self, body: dict[str, Any]) -> bool:
        assert self._url is not None
        try:
            timeout = aiohttp.ClientTimeout(total=self._timeout)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.put(self._url, json=body) as response,
            ):
                text = await response.text()
                if response.status >= 300:
                    log.warning(
                        "task protection call failed",
                        status=response.status,
                        detail=one_line(text, _DETAIL_CHARS),
                        enable=body["ProtectionEnabled"],
                    )
                    return False
                problem = _failure_in(text)
                if problem:
                    log.warning(
                        "task protection call failed",
                        status=response.status,
                        detail=problem,
                        enable=body["ProtectionEnabled"],
                    )
                    return False
                return True
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
            log.warning(
                "task protection call failed",
                error=f"{type(error).__name__}: {one_line(str(error), _DETAIL_CHARS)}",
                enable=body["ProtectionEnabled"],
            )
            return False


def _failure_in(text: str) -> str | None:
    """The agent answers 200 with a ``failure`` or ``error`` object when ECS refused."""
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        return None
    if isinstance(data, dict):
        for key in ("failure", "error"):
            if data.get(key):
                return one_line(json.dumps(data[key]), _DETAIL_CHARS)
    return None
