"""S3 transfers: listing, streamed (parallel ranged) downloads, multipart uploads.

Memory stays bounded whatever the object size: downloads are written to disk chunk by chunk
(``os.pwrite`` at each part's offset in a preallocated file), uploads read one part from disk
at a time. Large objects use up to ``max_concurrency`` parallel requests.
"""

from __future__ import annotations

import base64
import errno
import io
import os
import shutil
import zlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import structlog
from botocore.exceptions import ClientError

from worker.aws import AWS_ERRORS, S3, error_code, http_status, translate, translated
from worker.errors import (
    AwsUnavailable,
    ObjectChanged,
    ObjectNotFound,
    ScratchFull,
    TooLargeForScratch,
    WorkerError,
)
from worker.keys import ObjectSummary
from worker.observability import BYTES_TRANSFERRED

log = structlog.get_logger(__name__)

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MIB
# S3 rejects multipart parts below 5 MiB (except the last) and allows at most 10,000 parts.
MIN_PART_SIZE = 5 * MIB
MAX_PARTS = 10_000
# Writes to disk are batched to about this size: few syscalls, small buffers.
WRITE_CHUNK = 1 * MIB
# Attempts per ranged GET when the body stream breaks mid-transfer (botocore only retries
# the request itself, not a body that dies half-way).
PART_ATTEMPTS = 3
# Aborting a multipart upload must run even while the job is being cancelled, but not forever.
ABORT_TIMEOUT_SECONDS = 15

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


def _is_not_found(error: BaseException) -> bool:
    return error_code(error) in _NOT_FOUND_CODES or http_status(error) == 404


def _not_found(bucket: str, key: str) -> Callable[[BaseException], BaseException | None]:
    def special(error: BaseException) -> BaseException | None:
        return ObjectNotFound(bucket, key) if _is_not_found(error) else None

    return special


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _is_enospc(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


class ObjectStore:
    """S3 operations the job needs, with bounded memory and typed errors.

    ``scratch_max_bytes`` caps the size of any one object downloaded to scratch: a larger one
    raises :class:`ScratchFull` before a byte is written (as does a disk with less free space
    than the object).
    """

    def __init__(
        self,
        s3_client: Any,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 8,
        scratch_max_bytes: int | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3 minimum)")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._s3 = s3_client
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.scratch_max_bytes = scratch_max_bytes

    # --- listing ---------------------------------------------------------------------------

    async def list_prefix(
        self, bucket: str, prefix: str, *, page_size: int = 1000
    ) -> list[ObjectSummary]:
        """Every object whose key starts with ``prefix`` (all pages), in key order."""
        found: list[ObjectSummary] = []
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
        with translated(service=S3):
            while True:
                page = await self._s3.list_objects_v2(**kwargs)
                for item in page.get("Contents", []):
                    found.append(
                        ObjectSummary(
                            key=item["Key"],
                            size=int(item["Size"]),
                            last_modified=_aware(item["LastModified"]),
                        )
                    )
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    break
                kwargs["ContinuationToken"] = token
        return found

    async def head(self, bucket: str, key: str) -> ObjectSummary:
        """Size and modification time of one object; :class:`ObjectNotFound` if absent."""
        response = await self._head(bucket, key)
        return ObjectSummary(
            key=key,
            size=int(response["ContentLength"]),
            last_modified=_aware(response["LastModified"]),
        )

    async def _head(self, bucket: str, key: str) -> dict[str, Any]:
        with translated(_not_found(bucket, key), service=S3):
            response: dict[str, Any] = await self._s3.head_object(Bucket=bucket, Key=key)
        return response

    # --- download --------------------------------------------------------------------------

    async def download(self, bucket: str, key: str, destination: Path) -> int:
        """Stream ``s3://bucket/key`` to ``destination``; return the number of bytes.

        Objects larger than ``part_size`` are fetched with parallel ranged GETs pinned to the
        ETag seen first (a replaced object fails the transfer instead of mixing versions).
        The file is removed if anything fails or the task is cancelled.
        """
        head = await self._head(bucket, key)
        size = int(head["ContentLength"])
        etag = head.get("ETag")
        self.check_fits(destination.parent, size)
        try:
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as error:
            if _is_enospc(error):
                raise ScratchFull(f"scratch disk full creating {destination.name}") from None
            raise
        try:
            try:
                if size > 0:
                    # A thread: where the filesystem cannot preallocate, glibc writes every
                    # block, which would stall heartbeats for seconds on a multi-GB object.
                    await anyio.to_thread.run_sync(_reserve, fd, size)
                ranges = list(_ranges(size, self.part_size)) if size > self.part_size else []
                if ranges:
                    await self._download_ranges(bucket, key, etag, fd, ranges)
                else:
                    written = await self._download_range(bucket, key, None, fd, etag)
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
            if _is_enospc(error):
                raise ScratchFull(f"scratch disk full writing {destination.name}") from None
            raise
        return size

    def check_fits(self, directory: Path, size: int) -> None:
        """Whether an object of ``size`` bytes can be downloaded into ``directory`` now.

        :class:`TooLargeForScratch` (never fits: above ``SCRATCH_MAX_BYTES`` or the whole
        disk), :class:`ScratchFull` (not enough free space right now).
        """
        if self.scratch_max_bytes is not None and size > self.scratch_max_bytes:
            raise TooLargeForScratch(
                f"object of {size} bytes exceeds SCRATCH_MAX_BYTES={self.scratch_max_bytes}"
            )
        try:
            usage = shutil.disk_usage(directory)
        except OSError:
            return  # the open() of the download reports a missing directory properly
        if size > usage.total:
            raise TooLargeForScratch(
                f"object of {size} bytes is larger than the {usage.total}-byte scratch disk"
            )
        if size > usage.free:
            raise ScratchFull(
                f"object of {size} bytes does not fit in {usage.free} free scratch bytes"
            )

    async def _download_ranges(
        self, bucket: str, key: str, etag: str | None, fd: int, ranges: list[tuple[int, int]]
    ) -> None:
        pending = iter(ranges)

        async def worker() -> None:
            # Workers pull ranges from one iterator: at most max_concurrency requests open,
            # no task per part (a 10 GB object has hundreds of parts).
            for start, end in pending:
                written = await self._download_range(bucket, key, (start, end), fd, etag)
                if written != end - start + 1:
                    raise AwsUnavailable(
                        f"GetObject: s3://{bucket}/{key} range {start}-{end} "
                        f"returned {written} bytes"
                    )

        await _run_workers(worker, min(self.max_concurrency, len(ranges)))

    async def _download_range(
        self,
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
        # Bytes of this range already counted in the transfer metric: a retried range writes
        # the same bytes again, and counts only those beyond what an earlier attempt counted.
        counted = 0

        def count(written: int) -> None:
            nonlocal counted
            if written > counted:
                BYTES_TRANSFERRED.labels(direction="download").inc(written - counted)
                counted = written

        def special(error: BaseException) -> BaseException | None:
            if _is_not_found(error):
                return ObjectNotFound(bucket, key)
            if error_code(error) == "PreconditionFailed" or http_status(error) == 412:
                return ObjectChanged(f"GetObject: s3://{bucket}/{key} changed during the download")
            return None

        for attempt in range(1, PART_ATTEMPTS + 1):
            written = 0
            try:
                with translated(special, service=S3):
                    response = await self._s3.get_object(**kwargs)
                    async with response["Body"] as body:
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

    # --- upload ----------------------------------------------------------------------------

    async def upload(self, source: Path, bucket: str, key: str, *, content_type: str) -> int:
        """Upload ``source`` to ``s3://bucket/key`` with a CRC32 checksum; return its size.

        Files up to ``part_size`` go in one PutObject; larger ones as a multipart upload with
        parallel parts (each read from disk when sent), aborted if anything fails.
        """
        size = _file_size(source)
        if size <= self.part_size:
            data = await anyio.to_thread.run_sync(source.read_bytes)
            with translated(service=S3):
                await self._s3.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=data,
                    ContentType=content_type,
                    ChecksumAlgorithm="CRC32",
                )
            BYTES_TRANSFERRED.labels(direction="upload").inc(size)
            return size
        await self._multipart_upload(source, bucket, key, size, content_type)
        return size

    def _upload_part_size(self, size: int) -> int:
        # Grow parts for huge files so the upload stays within S3's 10,000-part limit.
        part = self.part_size
        while -(-size // part) > MAX_PARTS:
            part *= 2
        return part

    async def _multipart_upload(
        self, source: Path, bucket: str, key: str, size: int, content_type: str
    ) -> None:
        part_size = self._upload_part_size(size)
        with translated(service=S3):
            created = await self._s3.create_multipart_upload(
                Bucket=bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="CRC32"
            )
        upload_id = created["UploadId"]
        ranges = list(_ranges(size, part_size))
        completed: dict[int, dict[str, Any]] = {}
        try:
            with source.open("rb") as handle:
                fd = handle.fileno()
                pending = iter(enumerate(ranges, start=1))

                async def worker() -> None:
                    for number, (start, end) in pending:
                        length = end - start + 1
                        # The part is read from disk twice (checksum, then send) and never
                        # held in memory whole: memory per upload stays at a few buffers.
                        crc = await anyio.to_thread.run_sync(_crc32_of_range, fd, start, length)
                        with translated(service=S3):
                            response = await self._s3.upload_part(
                                Bucket=bucket,
                                Key=key,
                                UploadId=upload_id,
                                PartNumber=number,
                                Body=FileWindow(fd, start, length),
                                ContentLength=length,
                                ChecksumAlgorithm="CRC32",
                                # S3 verifies the part against it (BadDigest otherwise).
                                ChecksumCRC32=crc,
                            )
                        part: dict[str, Any] = {"PartNumber": number, "ETag": response["ETag"]}
                        if response.get("ChecksumCRC32"):
                            part["ChecksumCRC32"] = response["ChecksumCRC32"]
                        completed[number] = part
                        BYTES_TRANSFERRED.labels(direction="upload").inc(length)

                await _run_workers(worker, min(self.max_concurrency, len(ranges)))
            with translated(service=S3):
                await self._s3.complete_multipart_upload(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [completed[n] for n in sorted(completed)]},
                )
        except BaseException:
            await self._abort(bucket, key, upload_id)
            raise

    async def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        # Shielded: an upload abandoned by a cancelled job would otherwise bill its parts
        # until a lifecycle rule cleans them up.
        with anyio.CancelScope(shield=True), anyio.move_on_after(ABORT_TIMEOUT_SECONDS):
            try:
                await self._s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except _ABORT_ERRORS as error:
                log.warning(
                    "s3_abort_failed", bucket=bucket, key=key, error=translate(error, S3).message
                )


_ABORT_ERRORS: tuple[type[BaseException], ...] = (*AWS_ERRORS, WorkerError)


async def _run_workers(worker: Callable[[], Awaitable[None]], count: int) -> None:
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


def _reserve(fd: int, size: int) -> None:
    """Reserve ``size`` bytes on disk so a full scratch disk fails before any transfer.

    Only "no space" matters; a filesystem that cannot preallocate just gets a sparse file.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if _is_enospc(error):
            raise
        os.ftruncate(fd, size)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _file_size(path: Path) -> int:
    return path.stat().st_size


def _ranges(size: int, part_size: int) -> Iterator[tuple[int, int]]:
    """Inclusive byte ranges covering ``size`` bytes in ``part_size`` pieces."""
    for start in range(0, size, part_size):
        yield start, min(start + part_size, size) - 1


async def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    await anyio.to_thread.run_sync(_pwrite_sync, fd, data, offset)


def _pwrite_sync(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class FileWindow(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of ``fd`` from ``start``.

    Used as an upload body: the HTTP layer streams it (and botocore may seek it back to the
    start for signing or a retry) without the part ever being loaded into memory. Reads use
    ``os.pread``, so windows on one descriptor are independent of each other.
    """

    def __init__(self, fd: int, start: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._start = start
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, min(self._length, base + offset))
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._position
        wanted = remaining if size is None or size < 0 else min(size, remaining)
        if wanted <= 0:
            return b""
        data = _pread_all(self._fd, wanted, self._start + self._position)
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _crc32_of_range(fd: int, start: int, length: int) -> str:
    """Base64 CRC32 of a byte range, read in small chunks (S3's ChecksumCRC32 format)."""
    crc = 0
    offset = start
    end = start + length
    while offset < end:
        chunk = _pread_all(fd, min(WRITE_CHUNK, end - offset), offset)
        crc = zlib.crc32(chunk, crc)
        offset += len(chunk)
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    remaining = length
    while remaining:
        chunk = os.pread(fd, remaining, offset)
        if not chunk:
            raise OSError(errno.EIO, "file shrank while being uploaded")
        chunks.append(chunk)
        remaining -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)
