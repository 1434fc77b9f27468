"""Structured logs of a real job: the consumer in-process on moto (the pure part is
tests/unit/test_logging.py).

The end-to-end tests run the real consumer in-process on the moto server at DEBUG level with
recognisable fake credentials, capture what ``configure_logging`` writes and parse every line.
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from tests.harness.fixtures_aws import AwsEnv
from tests.harness.logs import (
    ACCESS_KEY_ID,
    SECRET_KEY,
    SIGNATURE,
    assert_no_secrets,
    json_log_buffer,
    lines,
)
from worker.config import Settings
from worker.devenv import seed_demo_contact
from worker.observability import REGISTRY

captured = pytest.fixture(name="captured")(json_log_buffer)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- a real job ------------------------------------------------------------------------------


async def run_consumer_once(settings: Settings) -> None:
    """The real consumer, in-process, until the queue is empty."""
    from worker.aws import open_clients
    from worker.consumer import Consumer
    from worker.observability import HealthState
    from worker.protection import TaskProtector

    async with open_clients(settings) as clients:
        consumer = Consumer(
            settings, clients, HealthState(), TaskProtector(None, 1), poll_wait_seconds=1
        )
        await consumer.run(once=True)


@pytest.mark.anyio
async def test_a_real_job_logs_its_context_and_stages_without_secrets(
    aws: AwsEnv, captured: io.StringIO, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    # Recognisable fake credentials: the emulator accepts any, the logs must show none.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    settings = aws.settings(SCRATCH_DIR=str(tmp_path), LOG_LEVEL="DEBUG")
    contact = seed_demo_contact(settings, aws.session)
    before = {
        "success": sample("komorebi_jobs_total", outcome="success"),
        "merge": sample("komorebi_stage_duration_seconds_count", stage="merge"),
        "speed": sample("komorebi_processing_speed_ratio_count"),
        "media": sample("komorebi_media_processed_seconds_total"),
    }

    await run_consumer_once(settings)

    # The job's metrics moved with it (the consumer records through worker.observability).
    assert sample("komorebi_jobs_total", outcome="success") == before["success"] + 1
    assert sample("komorebi_stage_duration_seconds_count", stage="merge") == before["merge"] + 1
    assert sample("komorebi_processing_speed_ratio_count") == before["speed"] + 1
    assert sample("komorebi_media_processed_seconds_total") > before["media"] + 5

    records = lines(captured)
    job_lines = [r for r in records if r.get("message_id") == contact.message_id]
    assert job_lines, records[-10:]
    for record in job_lines:
        assert record["recording_id"] == contact.recording_id
        assert record["receive_count"] == 1
    (succeeded,) = [r for r in job_lines if r["event"] == "job.succeeded"]
    assert succeeded["level"] == "info"

    stages = [r["stage"] for r in job_lines if r["event"] == "stage.finished"]
    for name in ("read_row", "download", "merge", "upload", "update_row"):
        assert stages.count(name) == 1, stages
    assert all(
        isinstance(r["duration_seconds"], float)
        for r in job_lines
        if r["event"] == "stage.finished"
    )
    assert not [r for r in job_lines if r["event"] == "stage.failed"]
    # Nothing from the job is logged outside its context, and the message body never is.
    assert contact.message_body not in captured.getvalue()
    assert_no_secrets(captured)


@pytest.mark.anyio
async def test_a_failing_job_logs_a_redacted_one_line_error(
    aws: AwsEnv, captured: io.StringIO, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    contact = seed_demo_contact(aws.settings(), aws.session)
    # An input key template that carries presigned-URL parameters: the job cannot find the
    # object and its error message (which names the key) holds a signature and a key id.
    template = (
        "{yyyy}/{mm}/{dd}/{agent_id}/{recording_id}.mp4"
        f"?X-Amz-Credential={ACCESS_KEY_ID}&X-Amz-Signature={SIGNATURE}"
    )
    settings = aws.settings(SCRATCH_DIR=str(tmp_path), INPUT_KEY_TEMPLATE=template)
    dlq_before = sample("komorebi_dlq_sends_total", reason="recording_not_found")
    dead_before = sample("komorebi_jobs_total", outcome="dead_letter")

    await run_consumer_once(settings)

    assert sample("komorebi_dlq_sends_total", reason="recording_not_found") == dlq_before + 1
    assert sample("komorebi_jobs_total", outcome="dead_letter") == dead_before + 1

    records = lines(captured)
    job_lines = [r for r in records if r.get("message_id") == contact.message_id]
    (dead,) = [r for r in job_lines if r["event"] == "job.dead_lettered"]
    assert dead["reason"] == "recording_not_found"
    assert dead["recording_id"] == contact.recording_id
    assert "[REDACTED]" in dead["error"] and "\n" not in dead["error"]
    (failed,) = [r for r in job_lines if r["event"] == "stage.failed"]
    assert failed["reason"] == "recording_not_found" and "[REDACTED]" in failed["error"]
    assert "Traceback" not in captured.getvalue()
    assert_no_secrets(captured)
