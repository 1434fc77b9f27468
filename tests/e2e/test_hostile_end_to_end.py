"""After the whole hostile corpus: the worker still serves, leaked nothing, left nothing behind.

Also the security hygiene of issue 7: no secret defaults in the settings, error messages and
log lines scrubbed of presigned URLs and credentials, a non-root user in the image.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.harness import hostile_support as hs
from tests.harness.hostile_corpus import CANARY, CASES, MAX_RECEIVE_COUNT, CorpusRun, check_case
from worker import aws as worker_aws
from worker.config import Settings
from worker.redaction import redact

REPO = Path(__file__).resolve().parents[2]


def test_worker_still_serves_after_the_corpus(hostile_run: CorpusRun) -> None:
    """A valid job sent after every hostile one succeeded (its output checked by content);
    /healthz ok; SIGTERM exits 0."""
    assert hostile_run.canary_done, "the valid job after the hostile ones did not finish"
    check_case(hostile_run, CANARY)
    assert hostile_run.healthy_at_end
    assert hostile_run.exit_code == 0


def test_no_connection_to_urls_in_hostile_files(hostile_run: CorpusRun) -> None:
    """Playlists and concat scripts pointing at a listening socket: it saw nothing."""
    assert hostile_run.trap_connections == 0


def test_scratch_dir_left_empty(hostile_run: CorpusRun) -> None:
    """Every job, failed or not, removed its scratch files."""
    assert hostile_run.scratch_left == []


def test_dead_letter_queue_holds_exactly_the_failures(hostile_run: CorpusRun) -> None:
    """One DLQ message per failing case (none twice, no valid job among them)."""
    failing = {case.body for case in CASES if case.outcome in ("dlq", "exhausted")}
    assert set(hostile_run.dlq) == failing


def test_no_lease_left_on_any_row(hostile_run: CorpusRun) -> None:
    """Leases are released on success and on failure."""
    leased = {rid: row for rid, row in hostile_run.rows.items() if row.get("leaseOwner")}
    assert leased == {}


def test_log_leaks_nothing(hostile_run: CorpusRun) -> None:
    """The whole log: no local file content, credential, signature, traceback spam."""
    text = hostile_run.log_path.read_text(errors="replace")
    assert hs.leaks(text, urls=False) == []
    assert hs.ACCESS_KEY not in text
    assert "Traceback" not in text, "hostile input must not produce tracebacks"
    raw = [event["raw"] for event in hostile_run.events if "raw" in event]
    assert raw == [], f"non-JSON output from the worker: {raw[:3]}"


def test_every_failure_logged_with_reason(hostile_run: CorpusRun) -> None:
    """Each failing case has a log event with its reason, bound to its message."""
    for case in CASES:
        if case.outcome == "done":
            continue
        reasons = {event.get("reason") for event in hostile_run.events_for(case)}
        assert reasons & set(case.reasons), (case.name, reasons)


def test_metrics_count_dead_letters_and_retries(hostile_run: CorpusRun) -> None:
    """komorebi_dlq_sends_total by reason and komorebi_retries_total match the corpus."""
    expected: dict[str, int] = {}
    for case in CASES:
        if case.outcome == "dlq":
            reason = hostile_run.dlq[case.body]["MessageAttributes"]["errorReason"]["StringValue"]
            expected[reason] = expected.get(reason, 0) + 1
    for reason, count in expected.items():
        sent = hs.metric_value(hostile_run.metrics, "komorebi_dlq_sends_total", {"reason": reason})
        assert sent == count, (reason, sent, count)
    transient = sum(case.outcome == "exhausted" for case in CASES)
    retries = hs.metric_value(
        hostile_run.metrics, "komorebi_retries_total", {"reason": "connect_audio_not_ready"}
    )
    # Retried on every receive but the last, where the worker dead-letters it.
    assert retries >= transient * (MAX_RECEIVE_COUNT - 1)
    exhausted = hs.metric_value(
        hostile_run.metrics, "komorebi_dlq_sends_total", {"reason": "retries_exhausted"}
    )
    assert exhausted == transient


# --- security hygiene ------------------------------------------------------------------------

_SECRETISH = re.compile(r"(secret|password|passwd|token|credential|access_key|api_key)", re.I)


def test_settings_have_no_secret_defaults() -> None:
    """No setting is a credential, and no default looks like one (the SDK chain provides them)."""
    names = [field.name for field in fields(Settings)]
    assert not [name for name in names if _SECRETISH.search(name)]
    source = (REPO / "worker" / "config.py").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{12,}", source)
    assert "AWS_SECRET_ACCESS_KEY" not in source and "AWS_ACCESS_KEY_ID" not in source
    settings = Settings.from_env(
        {
            "AC_AUDIO_BUCKET_NAME": "a",
            "INPUT_BUCKET_NAME": "b",
            "OUTPUT_BUCKET_NAME": "c",
            "CONNECT_INSTANCE_ALIAS": "d",
        }
    )
    text = json.dumps({f.name: str(getattr(settings, f.name)) for f in fields(settings)})
    assert not _SECRETISH.search(text)


def test_aws_errors_are_scrubbed_of_presigned_urls() -> None:
    """An SDK error carrying a presigned URL becomes one line without it."""
    url = (
        "https://bucket.s3.amazonaws.com/key.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={hs.ACCESS_KEY}%2F20261127%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Signature=0123456789abcdef"
    )
    error = ClientError(
        {"Error": {"Code": "AccessDenied", "Message": f"denied for {url}\nsecond line"}},
        "GetObject",
    )
    text = str(worker_aws.translate(error))
    assert "\n" not in text
    assert hs.leaks(text) == [], text
    assert hs.ACCESS_KEY not in text


@pytest.mark.parametrize(
    "line",
    [
        "GET https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&X-Amz-Credential=AKIAHOSTILETESTKEY01",
        f"aws_secret_access_key={hs.SECRET_KEY}",
        f"AWS_SECRET_ACCESS_KEY: {hs.SECRET_KEY}",
    ],
)
def test_log_redaction(line: str) -> None:
    """The log pipeline's redaction removes signatures, key ids and secret assignments."""
    cleaned = redact(line)
    assert hs.SECRET_KEY not in cleaned and hs.ACCESS_KEY not in cleaned
    assert "X-Amz-Signature=abc" not in cleaned


def test_image_runs_as_non_root() -> None:
    """The Dockerfile's final USER is numeric and not 0 (skipped when there is no Dockerfile)."""
    dockerfile = REPO / "Dockerfile"
    if not dockerfile.exists():
        pytest.skip("no Dockerfile")
    users = re.findall(r"(?im)^\s*USER\s+(\S+)", dockerfile.read_text())
    assert users, "the image must set USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]} must be a numeric non-root uid"
