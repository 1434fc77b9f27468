"""The outcome decision (worker.outcome.decide) as a table: every error type of worker.errors x
first / middle / last receive, with and without a redrive policy. Pure: no AWS, no ffmpeg."""

from __future__ import annotations

import asyncio
import inspect
import random
from typing import Any

import pytest

from worker import errors
from worker.config import Settings
from worker.errors import JobError, PermanentError, RetriesExhausted, TransientError
from worker.outcome import (
    UNEXPECTED,
    DeadLetter,
    Delete,
    JobResult,
    Retry,
    backoff_seconds,
    decide,
    escaped,
)

SETTINGS = Settings(
    ac_audio_bucket="a",
    input_bucket="i",
    output_bucket="o",
    connect_instance_alias="x",
    retry_backoff_base_seconds=1.0,
    retry_backoff_max_seconds=2.0,
)
MAX_RECEIVES = 3
FIRST, MIDDLE, LAST = 1, 2, 3

# Every JobError class with the reason the DLQ / the retry metric must show. A new class in
# worker/errors.py without a row here fails test_the_table_covers_every_error_type.
PERMANENT: dict[type[PermanentError], str] = {
    errors.PermanentError: "permanent",
    errors.InvalidMessage: "invalid_message",
    errors.RowNotFound: "row_not_found",
    errors.InvalidRow: "invalid_row",
    errors.RecordingNotFound: "recording_not_found",
    errors.MediaError: "media_invalid",
    errors.UnsupportedMedia: "media_unsupported",
    errors.NoVideoStream: "media_no_video",
    errors.NoAudioStream: "media_no_audio",
    errors.OutputRejected: "output_rejected",
    errors.ScratchFull: "scratch_full",
    errors.TooLargeForScratch: "scratch_full",
    errors.AwsRejected: "aws_rejected",
    errors.JobTooLong: "max_duration",
    errors.RetriesExhausted: "retries_exhausted",
    errors.Unexpected: "unexpected",
}
TRANSIENT: dict[type[TransientError], str] = {
    errors.TransientError: "transient",
    errors.ConnectAudioNotReady: "connect_audio_not_ready",
    errors.LeaseHeld: "lease_held",
    errors.AwsUnavailable: "aws_unavailable",
    errors.ObjectChanged: "object_changed",
    errors.MediaTimeout: "media_timeout",
    errors.MediaProcessKilled: "ffmpeg_killed",
    errors.ScratchBusy: "scratch_busy",
    errors.ReceiptHandleInvalid: "receipt_handle_invalid",
    errors.VisibilityLimitReached: "visibility_limit",
}


def _make(kind: type[JobError]) -> JobError:
    if kind is RetriesExhausted:
        return RetriesExhausted("gave up", detail="connect_audio_not_ready", attempts=3)
    if kind is errors.Unexpected:
        return errors.Unexpected("unexpected error: KeyError: 'x'", error_class="KeyError")
    return kind(f"{kind.__name__} happened\nsecond line")


def _decide(outcome: Any, receive: int, max_receives: int | None = MAX_RECEIVES) -> Any:
    return decide(outcome, receive, max_receives, SETTINGS, rng=random.Random(receive))


def test_the_table_covers_every_error_type() -> None:
    job_errors = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, JobError) and cls is not JobError
    }
    assert job_errors == set(PERMANENT) | set(TRANSIENT)


@pytest.mark.parametrize("receive", [FIRST, MIDDLE, LAST])
@pytest.mark.parametrize("kind", list(PERMANENT), ids=lambda k: k.__name__)
def test_permanent_errors_are_dead_lettered_at_once(
    kind: type[PermanentError], receive: int
) -> None:
    error = _make(kind)
    for max_receives in (MAX_RECEIVES, None):
        decision = _decide(error, receive, max_receives)
        assert decision == DeadLetter(PERMANENT[kind], None, error)


@pytest.mark.parametrize("receive", [FIRST, MIDDLE])
@pytest.mark.parametrize("kind", list(TRANSIENT), ids=lambda k: k.__name__)
def test_transient_errors_before_the_last_receive_are_retried_with_backoff(
    kind: type[TransientError], receive: int
) -> None:
    error = _make(kind)
    decision = _decide(error, receive)
    assert isinstance(decision, Retry)
    assert decision.reason == TRANSIENT[kind] and decision.error is error
    # base 1 s, max 2 s: 1 s on the first receive, 1-2 s (jittered) after.
    assert decision.delay == backoff_seconds(receive, 1.0, 2.0, random.Random(receive))
    assert 1 <= decision.delay <= 2


@pytest.mark.parametrize("kind", list(TRANSIENT), ids=lambda k: k.__name__)
def test_transient_errors_on_the_last_receive_are_dead_lettered_as_retries_exhausted(
    kind: type[TransientError],
) -> None:
    error = _make(kind)
    for receive in (LAST, LAST + 1):  # moto and a lowered maxReceiveCount can go past it
        decision = _decide(error, receive)
        assert isinstance(decision, DeadLetter)
        assert (decision.reason, decision.detail) == ("retries_exhausted", TRANSIENT[kind])
        exhausted = decision.error
        assert isinstance(exhausted, RetriesExhausted) and exhausted.attempts == receive
        assert f"after {receive} attempts" in exhausted.message
        assert "\n" not in exhausted.message


@pytest.mark.parametrize("receive", [FIRST, MIDDLE, LAST, 50])
@pytest.mark.parametrize("kind", list(TRANSIENT), ids=lambda k: k.__name__)
def test_without_a_redrive_policy_transient_errors_are_always_retried(
    kind: type[TransientError], receive: int
) -> None:
    decision = _decide(_make(kind), receive, None)
    assert isinstance(decision, Retry) and decision.reason == TRANSIENT[kind]


@pytest.mark.parametrize("receive", [FIRST, MIDDLE, LAST])
def test_a_bug_is_retried_as_unexpected_until_the_last_receive(receive: int) -> None:
    bug = KeyError("boom")
    decision = _decide(bug, receive)
    if receive < LAST:
        assert isinstance(decision, Retry) and decision.reason == "unexpected"
    else:
        assert isinstance(decision, DeadLetter)
        assert (decision.reason, decision.detail) == ("retries_exhausted", "unexpected")
        assert decision.error.message == "unexpected error after 3 attempts: KeyError: 'boom'"


@pytest.mark.parametrize("receive", [FIRST, MIDDLE, LAST])
@pytest.mark.parametrize("duplicate", [False, True])
def test_a_result_deletes_the_message(receive: int, duplicate: bool) -> None:
    result = JobResult("rec", duplicate, None if duplicate else "out.mp4", None)
    decision = _decide(result, receive)
    assert decision == Delete(result) and decision.duplicate is duplicate


@pytest.mark.parametrize("receive", [FIRST, LAST])
def test_in_a_group_permanent_wins_and_cancellation_is_ignored(receive: int) -> None:
    permanent = errors.RecordingNotFound("no recording")
    transient = errors.ConnectAudioNotReady("no audio")
    group = BaseExceptionGroup("both", [transient, asyncio.CancelledError(), permanent])
    assert _decide(group, receive) == DeadLetter("recording_not_found", None, permanent)
    only_transient = _decide(ExceptionGroup("one", [transient]), receive)
    expected = Retry if receive < LAST else DeadLetter
    assert isinstance(only_transient, expected)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.ConnectAudioNotReady("x"), "Connect recording not found after 3 attempts"),
        (errors.LeaseHeld("x"), "recording kept leased by another worker after 3 attempts"),
        (
            errors.AwsUnavailable("GetItem: ThrottlingException: slow down"),
            "AWS unavailable after 3 attempts: GetItem: ThrottlingException: slow down",
        ),
        (errors.MediaTimeout("merge: 130 s"), "ffmpeg timed out after 3 attempts: merge: 130 s"),
    ],
)
def test_the_row_says_in_one_line_why_retries_ran_out(error: JobError, expected: str) -> None:
    decision = _decide(error, LAST)
    assert isinstance(decision, DeadLetter) and decision.error.message == expected


@pytest.mark.parametrize("receive", [FIRST, MIDDLE, LAST])
def test_what_escapes_the_handler_is_dead_lettered_at_once_as_unexpected(receive: int) -> None:
    """Unlike a bug inside the job (retried), an error escaping the handler is settled at once:
    reason ``unexpected``, errorClass the escaped type, its text one redacted line."""
    bug = UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
    wrapped = escaped(ExceptionGroup("job", [bug]))
    assert wrapped.reason == UNEXPECTED == "unexpected"
    assert wrapped.error_class == "UnicodeEncodeError"
    assert wrapped.message.startswith("unexpected error: UnicodeEncodeError: 'utf-8' codec")
    for max_receives in (MAX_RECEIVES, None):
        assert _decide(wrapped, receive, max_receives) == DeadLetter("unexpected", None, wrapped)
    secret = escaped(RuntimeError("GET https://b/k?X-Amz-Signature=abc\nline two \udc80"))
    assert "X-Amz-Signature" not in secret.message and "\n" not in secret.message
    secret.message.encode()  # no lone surrogate left: SQS, DynamoDB and logs take it
