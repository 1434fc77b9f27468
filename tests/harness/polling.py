"""Waiting for a condition: the one polling helper, blocking and async.

Tests wait on events (a row, a log line, a metric), never on a fixed sleep; ``timeout`` is
only the point at which waiting becomes a failure, with ``what`` naming what never came.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "",
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """Call ``check()`` until it returns something truthy and return that, or fail.

    An exception of a type in ``ignore`` (a server still starting) counts as "not yet".
    Raises AssertionError naming ``what`` (else ``check``) and the last such error after
    ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = check()
        except ignore as error:
            last = error
        else:
            if result:
                return result
        if time.monotonic() > deadline:
            since = f"; last error: {last!r}" if last else ""
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what or check}{since}"
            )
        time.sleep(interval)


async def eventually(
    check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> T:
    """:func:`wait_until` in async tests: ``check()`` (a blocking call) runs in a thread."""
    import anyio
    import anyio.to_thread

    deadline = time.monotonic() + timeout
    while True:
        result = await anyio.to_thread.run_sync(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or check}")
        await anyio.sleep(interval)
