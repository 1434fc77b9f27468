"""S3 object operations the job needs (:class:`ObjectStore`): listing, head, the scratch-space
check, and the transfers of :mod:`worker.storage.downloads` and :mod:`worker.storage.uploads`.

Memory stays bounded whatever the object size: downloads are written to disk chunk by chunk,
uploads read one part from disk at a time. Large objects use up to ``max_concurrency``
parallel requests.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.aws import S3, translated
from worker.errors import ScratchFull, TooLargeForScratch
from worker.keys import ObjectSummary
from worker.storage.downloads import download_object
from worker.storage.matching import not_found
from worker.storage.parts import DEFAULT_PART_SIZE, MIN_PART_SIZE
from worker.storage.uploads import upload_file


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


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
        with translated(not_found(bucket, key), service=S3):
            response: dict[str, Any] = await self._s3.head_object(Bucket=bucket, Key=key)
        return response

    # --- transfers -------------------------------------------------------------------------

    async def download(self, bucket: str, key: str, destination: Path) -> int:
        """Stream ``s3://bucket/key`` to ``destination``; return the number of bytes.

        Objects larger than ``part_size`` are fetched with parallel ranged GETs pinned to the
        ETag seen first (a replaced object fails the transfer instead of mixing versions).
        The file is removed if anything fails or the task is cancelled.
        """
        head = await self._head(bucket, key)
        size = int(head["ContentLength"])
        self.check_fits(destination.parent, size)
        await download_object(
            self._s3,
            bucket,
            key,
            destination,
            size=size,
            etag=head.get("ETag"),
            part_size=self.part_size,
            max_concurrency=self.max_concurrency,
        )
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

    async def upload(self, source: Path, bucket: str, key: str, *, content_type: str) -> int:
        """Upload ``source`` to ``s3://bucket/key`` with a CRC32 checksum; return its size.

        Files up to ``part_size`` go in one PutObject; larger ones as a multipart upload with
        parallel parts (each read from disk when sent), aborted if anything fails.
        """
        return await upload_file(
            self._s3,
            source,
            bucket,
            key,
            content_type=content_type,
            part_size=self.part_size,
            max_concurrency=self.max_concurrency,
        )
