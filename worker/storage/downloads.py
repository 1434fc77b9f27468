"""Ranged, resumable downloads: an S3 object streamed to a file, in parallel ranges.

Memory stays bounded whatever the object size: each range is written to disk chunk by chunk
(``os.pwrite`` at its offset in a preallocated file). Ranges are pinned to the ETag seen
first, and a range whose body breaks mid-stream is fetched again (botocore only retries the
request, not a body that dies half-way).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog
from botocore.exceptions import ClientError

from worker.aws import S3, error_code, http_status, translated
from worker.errors import AwsUnavailable, ObjectChanged, ObjectNotFound, ScratchFull
from worker.observability import BYTES_TRANSFERRED
from worker.storage.matching import is_enospc, is_not_found
from worker.storage.parts import WRITE_CHUNK, byte_ranges, run_workers

# The module's events keep the logger name they had before storage became a package.
log = structlog.get_logger("worker.storage")

# Attempts per ranged GET when the body stream breaks mid-transfer (botocore only retries
# the request itself, not a body that dies half-way).
PART_ATTEMPTS = 3


async def download_object(
    s3: Any,
    bucket: str,
    key: str,
    destination: Path,
    *,
    size: int,
    etag: str | None,
    part_size: int,
    max_concurrency: int,
) -> None:
    """Stream ``s3://bucket/key`` (``size`` bytes, ``etag``) to ``destination``.

    Objects larger than ``part_size`` are fetched with up to ``max_concurrency`` parallel
    ranged GETs. The file is removed if anything fails or the task is cancelled.
    """
    try:
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as error:
        if is_enospc(error):
            raise ScratchFull(f"scratch disk full creating {destination.name}") from None
        raise
    try:
        try:
            if size > 0:
                # A thread: where the filesystem cannot preallocate, glibc writes every
                # block, which would stall heartbeats for seconds on a multi-GB object.
                await anyio.to_thread.run_sync(_reserve, fd, size)
            ranges = list(byte_ranges(size, part_size)) if size > part_size else []
            if ranges:
                await _download_ranges(s3, bucket, key, etag, fd, ranges, max_concurrency)
            else:
                written = await _download_range(s3, bucket, key, None, fd, etag)
                if written != size:
                    raise AwsUnavailable(
                        f"GetObject: s3://{bucket}/{key} returned {written} of {size} bytes"
                    )
            if os.fstat(fd).st_size != size:
                raise AwsUnavailable(f"GetObject: s3://{bucket}/{key}: size mismatch")
        finally:
            os.close(fd)
    except BaseException as error:
        # Never leave a partial file behind (also on cancellation).
        _remove(destination)
        if is_enospc(error):
            raise ScratchFull(f"scratch disk full writing {destination.name}") from None
        raise


async def _download_ranges(
    s3: Any,
    bucket: str,
    key: str,
    etag: str | None,
    fd: int,
    ranges: list[tuple[int, int]],
    max_concurrency: int,
) -> None:
    pending = iter(ranges)

    async def worker() -> None:
        # Workers pull ranges from one iterator: at most max_concurrency requests open,
        # no task per part (a 10 GB object has hundreds of parts).
        for start, end in pending:
            written = await _download_range(s3, bucket, key, (start, end), fd, etag)
            if written != end - start + 1:
                raise AwsUnavailable(
                    f"GetObject: s3://{bucket}/{key} range {start}-{end} returned {written} bytes"
                )

    await run_workers(worker, min(max_concurrency, len(ranges)))


class _Counted:
    """Bytes of one range already counted in the transfer metric: a retried range writes the
    same bytes again, and counts only those beyond what an earlier attempt counted."""

    def __init__(self) -> None:
        self.counted = 0

    def __call__(self, written: int) -> None:
        if written > self.counted:
            BYTES_TRANSFERRED.labels(direction="download").inc(written - self.counted)
            self.counted = written


async def _download_range(
    s3: Any,
    bucket: str,
    key: str,
    byte_range: tuple[int, int] | None,
    fd: int,
    etag: str | None,
) -> int:
    """GET one range (or the whole object) into ``fd`` at its offset; bytes written."""
    offset = byte_range[0] if byte_range else 0
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if byte_range:
        kwargs["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
    if etag:
        kwargs["IfMatch"] = etag
    count = _Counted()

    def special(error: BaseException) -> BaseException | None:
        if is_not_found(error):
            return ObjectNotFound(bucket, key)
        if error_code(error) == "PreconditionFailed" or http_status(error) == 412:
            return ObjectChanged(f"GetObject: s3://{bucket}/{key} changed during the download")
        return None

    for attempt in range(1, PART_ATTEMPTS + 1):
        try:
            with translated(special, service=S3):
                response = await s3.get_object(**kwargs)
                async with response["Body"] as body:
                    return await _body_to_file(body, fd, offset, count)
        except ObjectChanged:
            raise
        except AwsUnavailable as error:
            # A request that failed outright was already retried by botocore; a body that
            # broke mid-stream was not: retry the range a few times ourselves.
            if isinstance(error.__cause__, ClientError) or attempt == PART_ATTEMPTS:
                raise
            log.warning(
                "s3_range_retry",
                bucket=bucket,
                key=key,
                offset=offset,
                attempt=attempt,
                error=error.message,
            )
    raise AssertionError("unreachable")  # pragma: no cover


async def _body_to_file(body: Any, fd: int, offset: int, count: _Counted) -> int:
    """Write a GetObject body to ``fd`` from ``offset`` in ``WRITE_CHUNK`` batches; bytes
    written (each batch counted as it lands)."""
    written = 0
    buffer = bytearray()
    while True:
        chunk = await body.read(WRITE_CHUNK)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) >= WRITE_CHUNK:
            await _pwrite_all(fd, bytes(buffer), offset + written)
            written += len(buffer)
            count(written)
            buffer.clear()
    if buffer:
        await _pwrite_all(fd, bytes(buffer), offset + written)
        written += len(buffer)
        count(written)
    return written


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _reserve(fd: int, size: int) -> None:
    """Reserve ``size`` bytes on disk so a full scratch disk fails before any transfer.

    Only "no space" matters; a filesystem that cannot preallocate just gets a sparse file.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if is_enospc(error):
            raise
        os.ftruncate(fd, size)


async def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    await anyio.to_thread.run_sync(_pwrite_sync, fd, data, offset)


def _pwrite_sync(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
