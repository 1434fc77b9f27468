"""Every error this package raises on purpose, in one hierarchy that decides a job's fate.

The consumer looks only at the class (:func:`worker.outcome.decide`): a
:class:`TransientError` makes the message visible again after a backoff, until the last
receive the queue's redrive policy allows, where the worker dead-letters it itself as
:class:`RetriesExhausted`; a :class:`PermanentError` sends it to the DLQ at once and marks the
row FAILED. Anything else that escapes a job is a bug and is treated as transient, so a crash
never loses a message.

``reason`` is a short, stable, low-cardinality code (a metric label and a DLQ attribute);
``str(error)`` is the one-line human explanation.

The tree::

    WorkerError
    ├── ConfigError                  settings or usage wrong: exit code 2
    │   └── SettingsError            several settings at once, one line each
    └── JobError                     a job could not complete
        ├── PermanentError           dead-letter at once, row FAILED
        │   ├── InvalidMessage       invalid_message
        │   ├── RowNotFound          row_not_found
        │   ├── InvalidRow           invalid_row
        │   ├── RecordingNotFound    recording_not_found
        │   ├── MediaError           media_invalid
        │   │   ├── UnsupportedMedia media_unsupported
        │   │   ├── NoVideoStream    media_no_video
        │   │   ├── NoAudioStream    media_no_audio
        │   │   └── OutputRejected   output_rejected
        │   ├── ScratchFull          scratch_full (the job alone does not fit the disk)
        │   │   └── TooLargeForScratch  scratch_full (an object can never fit: cap or disk size)
        │   ├── AwsRejected          aws_rejected
        │   ├── JobTooLong           max_duration (SQS's 12-hour visibility limit)
        │   ├── RetriesExhausted     retries_exhausted (transient on the last receive)
        │   └── Unexpected           unexpected (escaped the handler: errorClass = its type)
        └── TransientError           visible again after a backoff
            ├── ConnectAudioNotReady connect_audio_not_ready
            ├── LeaseHeld            lease_held
            ├── AwsUnavailable       aws_unavailable (also aws_access_denied,
            │   │                    aws_resource_missing)
            │   └── ObjectChanged    object_changed
            ├── MediaTimeout         media_timeout
            ├── MediaProcessKilled   ffmpeg_killed
            ├── ScratchBusy          scratch_busy (the disk is full right now)
            ├── ReceiptHandleInvalid receipt_handle_invalid (the delivery is not ours)
            └── VisibilityLimitReached  visibility_limit

    Internal signals (plain exceptions, never a job's outcome):
    ObjectNotFound      an S3 key is absent; the job maps it to a typed error
    AlreadyDone         the row became DONE for this call end while we were claiming it
    ConditionFailed     a DynamoDB condition expression did not hold
"""

from __future__ import annotations

MAX_ONE_LINE_CHARS = 300


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` with all whitespace (newlines included) collapsed to single spaces, cut to
    ``limit`` characters (with an ellipsis) when given."""
    collapsed = printable(" ".join(str(text).split()))
    if limit is None or len(collapsed) <= limit:
        return collapsed
    return collapsed[: max(0, limit - 1)] + "…"


def printable(text: str) -> str:
    """``text`` with lone surrogates (which no UTF-8 sink, SQS, DynamoDB or a log stream,
    accepts) replaced by ``?``; anything else unchanged."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode()
    return text


def describe(error: BaseException, limit: int | None = MAX_ONE_LINE_CHARS) -> str:
    """One line saying what ``error`` is: its text, or its class name when it has none."""
    return one_line(str(error), limit) or type(error).__name__


class WorkerError(Exception):
    """Base of every error this package raises on purpose."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        # One line, always: these end up in DLQ attributes, DynamoDB and log lines.
        super().__init__(one_line(message))
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        """The one-line explanation."""
        return str(self)

    @property
    def error_class(self) -> str:
        """What the DLQ's ``errorClass`` attribute and logs' ``error_type`` say."""
        return type(self).__name__


class ConfigError(WorkerError):
    """Settings or command-line usage are wrong (exit code 2)."""

    reason = "config"


class SettingsError(ConfigError):
    """One or more settings are invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class JobError(WorkerError):
    """A job could not complete."""


class TransientError(JobError):
    """Retry later: the cause may go away (network, throttling, data not uploaded yet)."""

    reason = "transient"


class PermanentError(JobError):
    """Retrying cannot help: dead-letter the message and mark the row FAILED."""

    reason = "permanent"


# --- permanent -------------------------------------------------------------------------------


class InvalidMessage(PermanentError):
    """The queue message is not a valid job (SPEC §2)."""

    reason = "invalid_message"


class RowNotFound(PermanentError):
    """No row for the recording in the table, or the row lacks what the job needs."""

    reason = "row_not_found"


class InvalidRow(PermanentError):
    """The row exists but is unusable (no agentID, malformed creationDate)."""

    reason = "invalid_row"


class RecordingNotFound(PermanentError):
    """The Komorebi recording object is not in the input bucket."""

    reason = "recording_not_found"


class MediaError(PermanentError):
    """Input media is unusable: undecodable, unsupported, hostile, or produces a bad output."""

    reason = "media_invalid"


class UnsupportedMedia(MediaError):
    """A codec or container outside what the merge supports."""

    reason = "media_unsupported"


class NoVideoStream(MediaError):
    """The recording has no video stream."""

    reason = "media_no_video"


class NoAudioStream(MediaError):
    """The Connect recording has no audio stream."""

    reason = "media_no_audio"


class OutputRejected(MediaError):
    """The merged output failed its post-write probe (wrong duration, missing stream)."""

    reason = "output_rejected"


class ScratchFull(PermanentError):
    """The scratch disk cannot hold this job's files (the job converts it to
    :class:`ScratchBusy` when other jobs share the disk and it could fit once they end)."""

    reason = "scratch_full"


class TooLargeForScratch(ScratchFull):
    """An object can never fit: larger than ``SCRATCH_MAX_BYTES`` or the whole scratch disk.
    Permanent whatever else runs: waiting for other jobs cannot make room for it."""


class AwsRejected(PermanentError):
    """An AWS service refused this job's request for good (e.g. an item or object it will
    never accept): retrying the same message cannot help."""

    reason = "aws_rejected"


class JobTooLong(PermanentError):
    """The job reached SQS's 12-hour visibility limit: a retry would meet the same limit on
    the same media, so retrying would only burn ``maxReceiveCount`` x 12 hours."""

    reason = "max_duration"


class RetriesExhausted(PermanentError):
    """A transient failure on the last receive the queue's redrive policy allows: the worker
    dead-letters the message itself, with the last transient reason as ``detail``, instead of
    letting SQS's redrive move it silently (no reason, row never FAILED)."""

    reason = "retries_exhausted"

    def __init__(self, message: str, *, detail: str, attempts: int) -> None:
        super().__init__(message)
        self.detail = detail
        self.attempts = attempts


class Unexpected(PermanentError):
    """Something escaped the handler (a bug outside the job, or in settling its outcome): the
    message is still settled, dead-lettered with reason ``unexpected``, ``errorClass`` the
    escaped exception's type, and the row FAILED where the recording id is known. A bug
    *inside* the job is not this: it is retried like a transient error (see outcome.py)."""

    reason = "unexpected"

    def __init__(self, message: str, *, error_class: str) -> None:
        super().__init__(message)
        self._error_class = error_class

    @property
    def error_class(self) -> str:
        """The escaped exception's type name, not ``Unexpected``."""
        return self._error_class


# --- transient -------------------------------------------------------------------------------


class ConnectAudioNotReady(TransientError):
    """No Connect recording under the expected prefixes yet: it may not be uploaded."""

    reason = "connect_audio_not_ready"


class LeaseHeld(TransientError):
    """Another live worker holds the recording's lease."""

    reason = "lease_held"


class AwsUnavailable(TransientError):
    """Network errors, throttling or 5xx from an AWS service."""

    reason = "aws_unavailable"


class ObjectChanged(AwsUnavailable):
    """The object was replaced while it was being downloaded (retry gets the new one)."""

    reason = "object_changed"


class MediaTimeout(TransientError):
    """ffmpeg ran past its duration-scaled time limit (the host may be overloaded)."""

    reason = "media_timeout"


class MediaProcessKilled(TransientError):
    """ffmpeg/ffprobe died from a signal (OOM killer, host pressure): not the media's fault."""

    reason = "ffmpeg_killed"


class ScratchBusy(TransientError):
    """The scratch disk is full while other jobs share it: this job may fit once they end."""

    reason = "scratch_busy"


class ReceiptHandleInvalid(TransientError):
    """The message is no longer ours: its receipt handle expired or it was redelivered."""

    reason = "receipt_handle_invalid"


class VisibilityLimitReached(TransientError):
    """SQS refuses to extend visibility past 12 hours after the message was received."""

    reason = "visibility_limit"


# --- internal signals ------------------------------------------------------------------------


class ObjectNotFound(Exception):
    """The key (or its bucket) does not exist; the job maps it to a typed job error."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"s3://{bucket}/{key} not found")
        self.bucket = bucket
        self.key = key


class AlreadyDone(Exception):
    """The row became DONE for this call end between reading it and claiming its lease."""


class ConditionFailed(Exception):
    """A DynamoDB condition expression did not hold (the caller decides what that means)."""


# --- exception groups ------------------------------------------------------------------------


def first_error(error: BaseException) -> BaseException:
    """The most meaningful leaf of a (possibly nested) exception group.

    Cancellations are skipped; a permanent error wins over a transient one (retrying cannot
    help if any part failed for good), a known error over an unknown one.
    """
    if not isinstance(error, BaseExceptionGroup):
        return error
    leaves: list[BaseException] = []
    pending: list[BaseException] = [error]
    while pending:
        item = pending.pop(0)
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            leaves.append(item)
    # Cancellation (asyncio.CancelledError, trio.Cancelled) is a BaseException, not an
    # Exception: it says why a task stopped, not why a job failed.
    real = [leaf for leaf in leaves if isinstance(leaf, Exception)] or leaves
    for kind in (PermanentError, TransientError, Exception):
        for leaf in real:
            if isinstance(leaf, kind):
                return leaf
    return real[0]
