"""What a job's outcome means for its message: one pure decision (SPEC §6).

:func:`decide` looks at the outcome (the :class:`JobResult` :func:`worker.job.process_job`
returns, or the error the job raised), the message's ``ApproximateReceiveCount`` and the
queue's ``maxReceiveCount``, and returns what to do; :mod:`worker.delivery` carries it out. No
I/O here, so the whole rule is tested as a table (``tests/unit/test_outcome.py``)::

    outcome                     before the last receive        on the last receive
    ------------------------    ---------------------------    ----------------------------
    JobResult (done/duplicate)  Delete                         Delete
    PermanentError              DeadLetter(reason)             DeadLetter(reason)
    TransientError              Retry(backoff)                 DeadLetter(retries_exhausted,
    anything else (a bug)       Retry(backoff), "unexpected"     detail = last reason)
    Unexpected (escaped the     DeadLetter(unexpected)         DeadLetter(unexpected)
      handler: see escaped())

"The last receive" is ``receive_count >= max_receive_count``: SQS's redrive would move the
message on its next receive without any reason attached and without the row ever being
marked FAILED, so the worker dead-letters it itself.

A bug inside the job is retried (it may be a rare race); an error that escapes the handler
itself (parsing, settling, bookkeeping around the job) is wrapped by :func:`escaped` into
:class:`~worker.errors.Unexpected` and dead-lettered at once: the handler is the last line, so
retrying would only leave the message in flight until SQS's redrive moves it without reason.

A queue without a redrive policy (``max_receive_count`` None) retries transient failures for
as long as SQS keeps the message (its retention period), as before.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from worker.config import SQS_MAX_VISIBILITY_SECONDS, Settings
from worker.errors import (
    JobError,
    PermanentError,
    RetriesExhausted,
    TransientError,
    Unexpected,
    describe,
    first_error,
)
from worker.redaction import redact


@dataclass(frozen=True)
class JobResult:
    """What a finished job did. ``duplicate``: the row was already done; nothing was done."""

    recording_id: str
    duplicate: bool
    output_key: str | None
    media_duration_seconds: float | None


# Exponent cap of the retry backoff (2**30 x base is far beyond any max anyway).
_MAX_EXPONENT = 30
_RNG = random.Random()  # noqa: S311 - jitter, not cryptography

UNEXPECTED = "unexpected"

# How the row's processingError starts when retries ran out, by the last transient reason;
# True: the last error's own text follows (it says which call, key or code failed).
_GAVE_UP: dict[str, tuple[str, bool]] = {
    "connect_audio_not_ready": ("Connect recording not found", False),
    "lease_held": ("recording kept leased by another worker", False),
    "scratch_busy": ("scratch disk full", True),
    "aws_unavailable": ("AWS unavailable", True),
    "aws_access_denied": ("AWS access denied", True),
    "aws_resource_missing": ("AWS resource missing", True),
    "object_changed": ("object kept changing during the download", True),
    "media_timeout": ("ffmpeg timed out", True),
    "ffmpeg_killed": ("ffmpeg killed by a signal", True),
    UNEXPECTED: ("unexpected error", True),
}


@dataclass(frozen=True)
class Delete:
    """Acknowledge the message: the job is done (or was already done: ``duplicate``)."""

    result: JobResult

    @property
    def duplicate(self) -> bool:
        """True when nothing was done because the row was already DONE."""
        return self.result.duplicate


@dataclass(frozen=True)
class DeadLetter:
    """Send the message to the DLQ with ``error``'s attributes, delete it, mark the row FAILED.

    ``reason`` is the DLQ's ``errorReason`` (and the metric label); ``detail`` the last
    transient reason when ``reason`` is ``retries_exhausted``.
    """

    reason: str
    detail: str | None
    error: PermanentError


@dataclass(frozen=True)
class Retry:
    """Make the message visible again in ``delay`` seconds; ``reason`` is the metric label."""

    delay: int
    reason: str
    error: BaseException


Decision = Delete | DeadLetter | Retry


def backoff_seconds(
    receive_count: int, base: float, maximum: float, rng: random.Random | None = None
) -> int:
    """Visibility delay before a retry: ``min(max, base * 2**(n-1))`` x jitter in [0.5, 1].

    ``n`` is the message's ``ApproximateReceiveCount``. Jitter spreads retries of messages that
    failed together (an outage) so they do not come back as one burst. At least 1 s, at most
    SQS's 12-hour limit.
    """
    exponent = max(0, min(_MAX_EXPONENT, receive_count - 1))
    delay = min(maximum, base * float(2**exponent))
    jitter = (rng or _RNG).uniform(0.5, 1.0)
    return max(1, min(SQS_MAX_VISIBILITY_SECONDS, math.ceil(delay * jitter)))


def is_last_receive(receive_count: int, max_receive_count: int | None) -> bool:
    """Whether SQS's redrive moves the message instead of delivering it again."""
    return max_receive_count is not None and receive_count >= max_receive_count


def retry_reason(error: BaseException) -> str:
    """The reason label of a failure that is retried (``unexpected`` for a bug)."""
    return error.reason if isinstance(error, TransientError) else UNEXPECTED


def retries_exhausted(error: BaseException, attempts: int) -> RetriesExhausted:
    """The permanent error for a transient failure on the last receive, with a one-line
    message such as "Connect recording not found after 3 attempts"."""
    reason = retry_reason(error)
    phrase, with_detail = _GAVE_UP.get(reason, (reason.replace("_", " "), True))
    text = f"{phrase} after {attempts} attempt{'s' if attempts != 1 else ''}"
    if with_detail:
        # A bug's text is not ours: it gets its type and passes redact() like a log line.
        last = describe(error)
        if not isinstance(error, JobError):
            last = redact(f"{type(error).__name__}: {last}")
        text = f"{text}: {last}"
    return RetriesExhausted(text, detail=reason, attempts=attempts)


def escaped(error: BaseException) -> Unexpected:
    """The permanent error for ``error`` escaping the message handler (a bug): its type is the
    DLQ's ``errorClass``; its text, not ours, passes redact() like a log line."""
    error = first_error(error)
    name = type(error).__name__
    return Unexpected(f"unexpected error: {redact(f'{name}: {describe(error)}')}", error_class=name)


def decide(
    outcome: JobResult | BaseException,
    receive_count: int,
    max_receive_count: int | None,
    settings: Settings,
    *,
    rng: random.Random | None = None,
) -> Decision:
    """What to do with a message after its job's ``outcome`` (see the module docstring)."""
    if isinstance(outcome, JobResult):
        return Delete(outcome)
    error = first_error(outcome)
    if isinstance(error, PermanentError):
        return DeadLetter(error.reason, None, error)
    if is_last_receive(receive_count, max_receive_count):
        exhausted = retries_exhausted(error, receive_count)
        return DeadLetter(exhausted.reason, exhausted.detail, exhausted)
    delay = backoff_seconds(
        receive_count,
        settings.retry_backoff_base_seconds,
        settings.retry_backoff_max_seconds,
        rng,
    )
    return Retry(delay, retry_reason(error), error)
