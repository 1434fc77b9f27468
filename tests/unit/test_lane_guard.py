"""The unit lane's guard (tests/unit/conftest.py) fails a test that spawns or connects.

One inner pytest session in this process (pytester, no subprocess) with the guard's own
conftest: each forbidden call must fail its test and say why; pure code must pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

GUARD = Path(__file__).with_name("conftest.py")

INNER_TESTS = """
import asyncio
import os
import socket
import subprocess


def test_subprocess():
    subprocess.run(["true"], check=False)


def test_posix_spawn():
    os.posix_spawn("/bin/true", ["true"], {})


def test_asyncio_process():
    async def spawn():
        await asyncio.create_subprocess_exec("true")

    asyncio.run(spawn())


def test_connect():
    with socket.socket() as sock:
        sock.connect(("127.0.0.1", 9))


def test_bind():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))


def test_swallowed():
    try:
        subprocess.run(["true"], check=False)
    except BaseException:
        pass


def test_pure():
    assert sorted([3, 1, 2]) == [1, 2, 3]
"""


def test_every_process_or_socket_fails_its_test_and_pure_code_passes(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(GUARD.read_text())
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rA")
    # The swallowed call passes its body and fails at the guard's teardown (an error).
    result.assert_outcomes(failed=5, passed=2, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "unit lane: spawning a subprocess is not allowed in tests/unit*",
            "unit lane: os.posix_spawn is not allowed*",
            "unit lane: asyncio subprocess_exec is not allowed*",
            "unit lane: socket.connect is not allowed*",
            "unit lane: socket.bind is not allowed*",
            "unit lane: the test did spawning a subprocess",
            "FAILED test_inner.py::test_subprocess *",
            "FAILED test_inner.py::test_posix_spawn *",
            "FAILED test_inner.py::test_asyncio_process *",
            "FAILED test_inner.py::test_connect *",
            "FAILED test_inner.py::test_bind *",
            "ERROR test_inner.py::test_swallowed *",
            "PASSED test_inner.py::test_pure",
        ]
    )
