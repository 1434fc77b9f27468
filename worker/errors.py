"""The error hierarchy that decides a job's fate in one place.

Every failure a job can meet is raised as a :class:`JobError` subclass. The consumer looks only
at the class: a :class:`TransientError` makes the message visible again after a backoff (SQS's
redrive policy moves it to the DLQ after ``maxReceiveCount``); a :class:`PermanentError` sends
it to the DLQ at once and marks the row FAILED. Anything else that escapes a job is a bug and is
treated as transient, so a crash never loses a message.

``reason`` is a short, stable, low-cardinality code (a metric label and a DLQ attribute);
``str(error)`` is the one-line human explanation.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error this package raises on purpose."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        # One line, always: these end up in DLQ attributes, DynamoDB and log lines.
        one_line = " ".join(str(message).split())
        super().__init__(one_line)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        """The one-line explanation."""
        return str(self)


class ConfigError(WorkerError):
    """Settings or command-line usage are wrong (exit code 2)."""

    reason = "config"


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
    """The scratch disk cannot hold this job's files."""

    reason = "scratch_full"


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


class MediaTimeout(TransientError):
    """ffmpeg ran past its duration-scaled time limit (the host may be overloaded)."""

    reason = "media_timeout"


class AwsRejected(PermanentError):
    """An AWS service refused this job's request for good (e.g. an item or object it will
    never accept): retrying the same message cannot help."""

    reason = "aws_rejected"


class MediaProcessKilled(TransientError):
    """ffmpeg/ffprobe died from a signal (OOM killer, host pressure): not the media's fault."""

    reason = "ffmpeg_killed"


class ScratchBusy(TransientError):
    """The scratch disk is full while other jobs share it: this job may fit once they end."""

    reason = "scratch_busy"
