"""The unit lane: pure code only. A test here that spawns a process or opens a socket fails.

Every subprocess path (``subprocess.Popen``, ``os.posix_spawn``/``fork``/``exec*``/``system``,
asyncio's and therefore anyio's process creation) and every socket ``connect``/``bind`` is
replaced, for the test's duration, by a call that fails the test and names the lane it belongs
in. Violations are also remembered, so a test whose code swallows the failure still fails (at
teardown).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest

_SPAWNERS = ("posix_spawn", "posix_spawnp", "fork", "forkpty", "system")
_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    """Remember whether the test body failed (then the guard's teardown stays quiet)."""
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_EXECS = ("execv", "execve", "execvp", "execvpe")


@pytest.fixture(autouse=True)
def _no_process_no_socket(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[None]:
    """Fail the test on any subprocess spawn or socket connect/bind (see the module)."""
    violations: list[str] = []

    def refuse(what: str) -> Callable[..., NoReturn]:
        def refused(*args: Any, **kwargs: Any) -> NoReturn:
            violations.append(what)
            pytest.fail(
                f"unit lane: {what} is not allowed in tests/unit (no subprocess, no socket); "
                "move the test to tests/media, tests/aws or tests/e2e",
                pytrace=False,
            )

        return refused

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse("spawning a subprocess"))
    for name in (*_SPAWNERS, *_EXECS):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse(f"os.{name}"))
    loop = asyncio.base_events.BaseEventLoop
    monkeypatch.setattr(loop, "subprocess_exec", refuse("asyncio subprocess_exec"))
    monkeypatch.setattr(loop, "subprocess_shell", refuse("asyncio subprocess_shell"))
    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse(f"socket.{name}"))
    yield
    if violations and not request.node.stash.get(_CALL_FAILED, False):
        pytest.fail(f"unit lane: the test did {', '.join(violations)}", pytrace=False)
