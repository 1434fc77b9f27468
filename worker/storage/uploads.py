"""Uploads with a CRC32 checksum: one PutObject, or a parallel multipart upload read from disk
one part at a time (memory stays at a few buffers whatever the file size)."""

from __future__ import annotations

import base64
import errno
import io
import os
import zlib
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog

from worker.aws import AWS_ERRORS, S3, translate, translated
from worker.errors import WorkerError
from worker.observability import BYTES_TRANSFERRED
from worker.storage.parts import MAX_PARTS, WRITE_CHUNK, byte_ranges, run_workers

# The module's events keep the logger name they had before storage became a package.
log = structlog.get_logger("worker.storage")

# Aborting a multipart upload must run even while the job is being cancelled, but not forever.
ABORT_TIMEOUT_SECONDS = 15
_ABORT_ERRORS: tuple[type[BaseException], ...] = (*AWS_ERRORS, WorkerError)


async def upload_file(
    s3: Any,
    source: Path,
    bucket: str,
    key: str,
    *,
    content_type: str,
    part_size: int,
    max_concurrency: int,
) -> int:
    """Upload ``source`` to ``s3://bucket/key`` with a CRC32 checksum; return its size.

    Files up to ``part_size`` go in one PutObject; larger ones as a multipart upload with
    up to ``max_concurrency`` parallel parts, aborted if anything fails.
    """
    size = _file_size(source)
    if size <= part_size:
        data = await anyio.to_thread.run_sync(source.read_bytes)
        with translated(service=S3):
            await s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ChecksumAlgorithm="CRC32",
            )
        BYTES_TRANSFERRED.labels(direction="upload").inc(size)
        return size
    await _multipart_upload(
        s3,
        source,
        bucket,
        key,
        size,
        content_type,
        upload_part_size(size, part_size),
        max_concurrency,
    )
    return size


def _file_size(path: Path) -> int:
    return path.stat().st_size


def upload_part_size(size: int, part_size: int) -> int:
    """``part_size``, doubled until a file of ``size`` bytes fits in S3's 10,000 parts."""
    part = part_size
    while -(-size // part) > MAX_PARTS:
        part *= 2
    return part


async def _multipart_upload(
    s3: Any,
    source: Path,
    bucket: str,
    key: str,
    size: int,
    content_type: str,
    part_size: int,
    max_concurrency: int,
) -> None:
    with translated(service=S3):
        created = await s3.create_multipart_upload(
            Bucket=bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="CRC32"
        )
    upload_id = created["UploadId"]
    ranges = list(byte_ranges(size, part_size))
    completed: dict[int, dict[str, Any]] = {}
    try:
        with source.open("rb") as handle:
            fd = handle.fileno()
            pending = iter(enumerate(ranges, start=1))

            async def worker() -> None:
                for number, (start, end) in pending:
                    target = (bucket, key, upload_id)
                    completed[number] = await _upload_part(s3, target, fd, number, start, end)

            await run_workers(worker, min(max_concurrency, len(ranges)))
        with translated(service=S3):
            await s3.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [completed[n] for n in sorted(completed)]},
            )
    except BaseException:
        await _abort(s3, bucket, key, upload_id)
        raise


async def _upload_part(
    s3: Any, target: tuple[str, str, str], fd: int, number: int, start: int, end: int
) -> dict[str, Any]:
    """Send bytes ``start``..``end`` of ``fd`` as part ``number`` of the upload ``target``
    (bucket, key, upload id); the part's entry for CompleteMultipartUpload."""
    bucket, key, upload_id = target
    length = end - start + 1
    # The part is read from disk twice (checksum, then send) and never held in memory
    # whole: memory per upload stays at a few buffers.
    crc = await anyio.to_thread.run_sync(_crc32_of_range, fd, start, length)
    with translated(service=S3):
        response = await s3.upload_part(
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
    BYTES_TRANSFERRED.labels(direction="upload").inc(length)
    return part


async def _abort(s3: Any, bucket: str, key: str, upload_id: str) -> None:
    # Shielded: an upload abandoned by a cancelled job would otherwise bill its parts
    # until a lifecycle rule cleans them up.
    with anyio.CancelScope(shield=True), anyio.move_on_after(ABORT_TIMEOUT_SECONDS):
        try:
            await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except _ABORT_ERRORS as error:
            log.warning(
                "s3_abort_failed", bucket=bucket, key=key, error=translate(error, S3).message
            )


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
