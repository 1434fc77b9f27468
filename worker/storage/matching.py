"""Which S3 and disk errors mean what for a transfer: a missing object, a full disk."""

from __future__ import annotations

import errno
from collections.abc import Callable

from worker.aws import error_code, http_status
from worker.errors import ObjectNotFound

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


def is_not_found(error: BaseException) -> bool:
    """Whether S3 says the object (or its bucket) does not exist, by code or HTTP status."""
    return error_code(error) in _NOT_FOUND_CODES or http_status(error) == 404


def not_found(bucket: str, key: str) -> Callable[[BaseException], BaseException | None]:
    """A ``translated`` special case: a missing object becomes :class:`ObjectNotFound`."""

    def special(error: BaseException) -> BaseException | None:
        return ObjectNotFound(bucket, key) if is_not_found(error) else None

    return special


def is_enospc(error: BaseException) -> bool:
    """Whether the disk (or the user's quota) is full."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
