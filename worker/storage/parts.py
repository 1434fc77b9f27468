"""What downloads and uploads share: part sizes, byte ranges and the parallel part workers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import anyio
import anyio.abc

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MIB
# S3 rejects multipart parts below 5 MiB (except the last) and allows at most 10,000 parts.
MIN_PART_SIZE = 5 * MIB
MAX_PARTS = 10_000
# Writes to disk are batched to about this size: few syscalls, small buffers.
WRITE_CHUNK = 1 * MIB


def byte_ranges(size: int, part_size: int) -> Iterator[tuple[int, int]]:
    """Inclusive byte ranges covering ``size`` bytes in ``part_size`` pieces."""
    for start in range(0, size, part_size):
        yield start, min(start + part_size, size) - 1


async def run_workers(worker: Callable[[], Awaitable[None]], count: int) -> None:
    """Run ``count`` copies of ``worker``; the first failure cancels the rest and is re-raised.

    Re-raising the error itself (not an ExceptionGroup) keeps the typed errors the job and
    the consumer dispatch on.
    """
    failures: list[Exception] = []

    async def guarded(group: anyio.abc.TaskGroup) -> None:
        try:
            await worker()
        except Exception as error:  # noqa: BLE001 - re-raised below, after the group
            if not failures:
                failures.append(error)
            group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(guarded, group)
    if failures:
        raise failures[0]
