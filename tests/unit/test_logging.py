"""Structured logs: JSON lines with bound context, redaction, no secrets (in-process; a real
job's logs on moto are in tests/aws/test_logging_jobs.py).

The end-to-end tests run the real consumer in-process on the moto server at DEBUG level with
recognisable fake credentials, capture what ``configure_logging`` writes and parse every line.
"""

from __future__ import annotations

import io
import logging

import anyio
import pytest
import structlog

from tests.harness.logs import (
    ACCESS_KEY_ID,
    SECRET_KEY,
    SIGNATURE,
    assert_no_secrets,
    json_log_buffer,
    lines,
)
from worker.errors import MediaError
from worker.observability import REGISTRY, configure_logging, job_context, stage

PRESIGNED = (
    "https://input.s3.amazonaws.com/2024/01/02/agent/rec.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    f"&X-Amz-Credential={ACCESS_KEY_ID}%2F20240102%2Fus-east-1%2Fs3%2Faws4_request"
    f"&X-Amz-Signature={SIGNATURE}"
)


captured = pytest.fixture(name="captured")(json_log_buffer)


# --- the pieces ------------------------------------------------------------------------------


def test_a_simulated_job_logs_bound_context_and_one_event_per_stage(
    captured: io.StringIO,
) -> None:
    log = structlog.get_logger("worker.job")
    merge_count = REGISTRY.get_sample_value(
        "komorebi_stage_duration_seconds_count", {"stage": "merge"}
    )
    with job_context(recording_id="rec-1", message_id="msg-1", receive_count=3):
        with stage("read_row"):
            log.debug("row.read", agent_id="agent-7")
        with stage("download"):
            pass
        with pytest.raises(MediaError), stage("merge"):
            raise MediaError(
                f"ffmpeg could not open {PRESIGNED} (aws_secret_access_key={SECRET_KEY})"
            )
        log.warning("job.dead_lettered", reason="media_invalid")
    log.info("after.job")

    records = lines(captured)
    job_lines = [r for r in records if r["event"] != "after.job"]
    assert len(job_lines) == 5
    for record in job_lines:
        assert record["recording_id"] == "rec-1"
        assert record["message_id"] == "msg-1"
        assert record["receive_count"] == 3
        assert record["timestamp"].endswith("Z")  # ISO 8601, UTC
        assert record["level"] in ("debug", "info", "warning", "error")
        assert record["logger"]
    # Context does not outlive the job.
    (after,) = [r for r in records if r["event"] == "after.job"]
    assert not {"recording_id", "message_id", "receive_count", "stage"} & after.keys()

    finished = [r for r in records if r["event"] == "stage.finished"]
    assert [r["stage"] for r in finished] == ["read_row", "download"]
    assert all(
        isinstance(r["duration_seconds"], float) and r["duration_seconds"] >= 0 for r in finished
    )
    (failed,) = [r for r in records if r["event"] == "stage.failed"]
    assert failed["stage"] == "merge" and failed["reason"] == "media_invalid"
    assert failed["error_type"] == "MediaError" and "ffmpeg could not open" in failed["error"]
    assert "\n" not in failed["error"] and "Traceback" not in captured.getvalue()
    # The row.read event happened inside its stage.
    (row_read,) = [r for r in records if r["event"] == "row.read"]
    assert row_read["stage"] == "read_row"
    # A failed stage is not a duration sample (it would mix failures into the latencies).
    assert (
        REGISTRY.get_sample_value("komorebi_stage_duration_seconds_count", {"stage": "merge"})
        == merge_count
    )
    assert_no_secrets(captured)


@pytest.mark.anyio
async def test_concurrent_jobs_keep_their_own_context(captured: io.StringIO) -> None:
    log = structlog.get_logger("worker.job")
    both_bound = anyio.Event()
    bound = 0

    async def job(recording_id: str) -> None:
        nonlocal bound
        with job_context(
            recording_id=recording_id, message_id=f"m-{recording_id}", receive_count=1
        ):
            bound += 1
            if bound == 2:
                both_bound.set()
            await both_bound.wait()  # both jobs are bound at the same time
            with stage("merge"):
                await anyio.sleep(0)
                log.info("job.step", expected=recording_id)

    async with anyio.create_task_group() as group:
        group.start_soon(job, "a")
        group.start_soon(job, "b")
    log.info("outside")

    records = lines(captured)
    steps = [r for r in records if r["event"] == "job.step"]
    assert sorted(r["recording_id"] for r in steps) == ["a", "b"]
    for record in steps:
        assert record["recording_id"] == record["expected"]
        assert record["message_id"] == f"m-{record['expected']}"
    (outside,) = [r for r in records if r["event"] == "outside"]
    assert "recording_id" not in outside


def test_library_loggers_go_through_the_same_renderer_at_warning(captured: io.StringIO) -> None:
    logging.getLogger("botocore.endpoint").debug("Making request with %s", ACCESS_KEY_ID)
    logging.getLogger("aiobotocore.client").info("chatty")
    logging.getLogger("botocore.retryhandler").warning("Retry needed for %s", PRESIGNED)
    records = lines(captured)
    assert [r["event"] for r in records if r["logger"].startswith(("botocore", "aiobotocore"))] == [
        "Retry needed for https://input.s3.amazonaws.com/2024/01/02/agent/rec.mp4?[REDACTED]"
    ]
    assert_no_secrets(captured)


def test_expected_errors_are_one_line_unexpected_ones_keep_their_traceback(
    captured: io.StringIO,
) -> None:
    log = structlog.get_logger("worker.consumer")
    try:
        raise MediaError("input is not a video")
    except MediaError:
        log.warning("job.failed", exc_info=True)
    try:
        raise KeyError("bug")
    except KeyError:
        log.exception("job.crashed")
    expected, unexpected = lines(captured)
    assert expected["error"] == "input is not a video" and expected["reason"] == "media_invalid"
    assert "exception" not in expected
    assert "Traceback" in unexpected["exception"] and "KeyError" in unexpected["exception"]


RECEIPT_HANDLE = (
    "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a+FmdhBNTWpSUxhCWQpT4E0YL3qHWqkqJ0R3UQ/Z4mHSkTBSv"
    "Vt4KfGv8pYsH2lULcYZsZ0lWjnU8ojTPF2VaHR1Dl0CPmV7wbXFdbpHs7DnQk3U8bvIBlmDE="
)


def test_receipt_handles_never_reach_a_log_line(captured: io.StringIO) -> None:
    # Whoever holds a receipt handle can delete or hide the message: a field named after it,
    # an SDK error quoting it (AWS and LocalStack do) and a parameter dump are all redacted,
    # by the log pipeline itself, whoever logs them.
    log = structlog.get_logger("test")
    log.warning("heartbeat.lost", receipt_handle=RECEIPT_HANDLE)
    log.warning(
        "heartbeat.failed",
        error=f"ChangeMessageVisibility: InvalidParameterValue: Value {RECEIPT_HANDLE} for "
        "parameter ReceiptHandle is invalid. Reason: Message does not exist.",
    )
    log.info("sent", params={"QueueUrl": "q", "ReceiptHandle": RECEIPT_HANDLE})
    logging.getLogger("botocore.hooks").warning(
        "params: {'ReceiptHandle': '%s', 'VisibilityTimeout': 30}", RECEIPT_HANDLE
    )
    records = lines(captured)
    assert [r["event"] for r in records][:3] == ["heartbeat.lost", "heartbeat.failed", "sent"]
    text = captured.getvalue()
    assert RECEIPT_HANDLE not in text
    assert RECEIPT_HANDLE[:20] not in text
    assert text.count("[REDACTED]") == 4
    # What is not a handle stays readable.
    assert "for parameter ReceiptHandle is invalid" in text and '"QueueUrl": "q"' in text


def test_errors_translated_for_the_dlq_carry_no_receipt_handle() -> None:
    from botocore.exceptions import ClientError

    from worker.aws import translate

    error = ClientError(
        {"Error": {"Code": "InternalError", "Message": f"boom for ReceiptHandle={RECEIPT_HANDLE}"}},
        "DeleteMessage",
    )
    text = translate(error).message
    assert RECEIPT_HANDLE not in text and text.startswith("DeleteMessage: InternalError: boom")


def test_console_format_is_readable_text() -> None:
    buffer = io.StringIO()
    configure_logging("INFO", "console", buffer)
    with job_context(recording_id="rec-9", message_id="m", receive_count=1):
        structlog.get_logger("worker").info("job.succeeded", output_key="out/recording.webm")
    structlog.get_logger("worker").debug("hidden at INFO")
    text = buffer.getvalue()
    assert "job.succeeded" in text and "recording_id=rec-9" in text
    assert "hidden at INFO" not in text
    assert not text.lstrip().startswith("{")


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD", "json", io.StringIO())


# --- a real job ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_lone_surrogate_cannot_make_a_line_unwritable(fmt: str) -> None:
    """A field holding a lone surrogate (a message's "\\ud800") is written as "?": the line
    reaches a UTF-8 stream instead of failing in the handler."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    configure_logging("INFO", fmt, stream)
    structlog.get_logger("test").warning("job.dead_lettered", error="key \ud800 bad")
    text = raw.getvalue().decode("utf-8")
    assert "job.dead_lettered" in text and "key ? bad" in text
