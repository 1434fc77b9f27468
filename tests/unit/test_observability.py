"""Metrics, redaction and the shipped Prometheus/Grafana configuration, read in-process (the
server, promtool and the alert-rule tests are in tests/e2e/test_observability_server.py).

The HTTP server is the real aiohttp server on 127.0.0.1; the exposition is parsed back with
prometheus_client's parser and checked by ``promtool``; the alert rules are unit-tested by
``promtool test rules``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from worker.observability import (
    E2E_BUCKETS,
    JOBS_IN_FLIGHT,
    LAST_POLL,
    OUTCOMES,
    REGISTRY,
    SLO_SECONDS,
    HealthState,
    job_in_flight,
    record_done,
    record_job,
    record_merge,
    record_receive,
    seconds_since_sent,
    set_slots,
)
from worker.redaction import redact

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "komorebi-worker.json"
PROMTOOL = shutil.which("promtool")


def sample(name: str, **labels: str) -> float:
    """Current value of one sample in the worker's registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- metric helpers --------------------------------------------------------------------------


def test_record_job_counts_outcomes_and_their_side_counters() -> None:
    before = {
        "success": sample("komorebi_jobs_total", outcome="success"),
        "retry": sample("komorebi_jobs_total", outcome="retry"),
        "dead_letter": sample("komorebi_jobs_total", outcome="dead_letter"),
        "duplicate": sample("komorebi_jobs_total", outcome="duplicate"),
        "retries": sample("komorebi_retries_total", reason="aws_unavailable"),
        "dlq": sample("komorebi_dlq_sends_total", reason="media_invalid"),
        "dups": sample("komorebi_duplicates_total"),
        "success_count": sample("komorebi_job_duration_seconds_count", outcome="success"),
        "success_sum": sample("komorebi_job_duration_seconds_sum", outcome="success"),
        "slow_bucket": sample(
            "komorebi_job_duration_seconds_bucket", outcome="success", le="3600.0"
        ),
        "fast_bucket": sample("komorebi_job_duration_seconds_bucket", outcome="success", le="60.0"),
    }
    record_job("success", 42.0)
    record_job("success", 1800.0)  # a half-hour recording lands in an hour-scale bucket
    record_job("retry", 3.0, reason="aws_unavailable")
    record_job("dead_letter", 1.0, reason="media_invalid")
    record_job("duplicate", 0.2)

    assert sample("komorebi_jobs_total", outcome="success") == before["success"] + 2
    assert sample("komorebi_jobs_total", outcome="retry") == before["retry"] + 1
    assert sample("komorebi_jobs_total", outcome="dead_letter") == before["dead_letter"] + 1
    assert sample("komorebi_jobs_total", outcome="duplicate") == before["duplicate"] + 1
    assert sample("komorebi_retries_total", reason="aws_unavailable") == before["retries"] + 1
    assert sample("komorebi_dlq_sends_total", reason="media_invalid") == before["dlq"] + 1
    assert sample("komorebi_duplicates_total") == before["dups"] + 1
    count = sample("komorebi_job_duration_seconds_count", outcome="success")
    assert count == before["success_count"] + 2
    total = sample("komorebi_job_duration_seconds_sum", outcome="success")
    assert total == pytest.approx(before["success_sum"] + 1842.0)
    fast = sample("komorebi_job_duration_seconds_bucket", outcome="success", le="60.0")
    slow = sample("komorebi_job_duration_seconds_bucket", outcome="success", le="3600.0")
    assert fast == before["fast_bucket"] + 1
    assert slow == before["slow_bucket"] + 2


def test_record_job_refuses_unknown_outcomes() -> None:
    with pytest.raises(ValueError, match="unknown job outcome"):
        record_job("exploded", 1.0)  # type: ignore[arg-type]


def test_every_outcome_is_exposed_before_its_first_job() -> None:
    # Ratios and "increase > 0" alerts need the series to exist at 0.
    text = exposition()
    for outcome in OUTCOMES:
        assert f'komorebi_jobs_total{{outcome="{outcome}"}}' in text


def test_seconds_since_sent_is_never_negative_and_needs_a_timestamp() -> None:
    assert seconds_since_sent(1_700_000_000_000, 1_700_000_090.5) == 90.5
    # SQS's clock a little ahead of the task's: 0, not a negative observation.
    assert seconds_since_sent(1_700_000_000_500, 1_700_000_000.0) == 0.0
    assert seconds_since_sent(None, 1_700_000_000.0) is None


def test_record_receive_labels_first_and_repeat_deliveries() -> None:
    name = "komorebi_queue_wait_seconds"
    first = sample(f"{name}_sum", delivery="first")
    repeat = sample(f"{name}_count", delivery="repeat")
    under_a_minute = sample(f"{name}_bucket", delivery="first", le="60.0")
    record_receive(1_700_000_000_000, 1, 1_700_000_042.0)
    record_receive(1_700_000_000_000, 3, 1_700_000_900.0)
    record_receive(None, 1, 1_700_000_900.0)  # no SentTimestamp: nothing to observe
    assert sample(f"{name}_sum", delivery="first") == first + 42.0
    assert sample(f"{name}_bucket", delivery="first", le="60.0") == under_a_minute + 1
    assert sample(f"{name}_count", delivery="repeat") == repeat + 1


def test_record_done_observes_from_the_send() -> None:
    name = "komorebi_message_to_done_seconds"
    total, within = sample(f"{name}_count"), sample(f"{name}_bucket", le=f"{SLO_SECONDS:.1f}")
    record_done(1_700_000_000_000, 1_700_000_000.0 + SLO_SECONDS + 1)  # just late
    record_done(1_700_000_000_000, 1_700_000_000.0 + SLO_SECONDS)  # just in time
    assert sample(f"{name}_count") == total + 2
    assert sample(f"{name}_bucket", le=f"{SLO_SECONDS:.1f}") == within + 1


def test_end_to_end_buckets_reach_hours_and_hold_the_slo_bound() -> None:
    assert SLO_SECONDS in E2E_BUCKETS and E2E_BUCKETS[-1] >= 6 * 3600
    assert list(E2E_BUCKETS) == sorted(E2E_BUCKETS)
    # Both series exist from the first scrape, so ratios and rates work before any message.
    for delivery in ("first", "repeat"):
        assert (
            REGISTRY.get_sample_value("komorebi_queue_wait_seconds_count", {"delivery": delivery})
            is not None
        )


def test_record_merge_counts_media_seconds_and_speed() -> None:
    media_before = sample("komorebi_media_processed_seconds_total")
    count_before = sample("komorebi_processing_speed_ratio_count")
    sum_before = sample("komorebi_processing_speed_ratio_sum")
    slow_before = sample("komorebi_processing_speed_ratio_bucket", le="1.0")

    record_merge(600.0, 12.0)  # 10 minutes merged in 12 s: 50x real time
    record_merge(30.0, 60.0)  # slower than real time
    record_merge(0.0, 5.0)  # nothing merged: nothing counted

    assert sample("komorebi_media_processed_seconds_total") == media_before + 630.0
    assert sample("komorebi_processing_speed_ratio_count") == count_before + 2
    assert sample("komorebi_processing_speed_ratio_sum") == pytest.approx(sum_before + 50.5)
    assert sample("komorebi_processing_speed_ratio_bucket", le="1.0") == slow_before + 1


def test_in_flight_gauge_follows_jobs_even_when_they_fail() -> None:
    start = JOBS_IN_FLIGHT._value.get()
    with job_in_flight():
        assert JOBS_IN_FLIGHT._value.get() == start + 1
        with pytest.raises(RuntimeError), job_in_flight():
            assert JOBS_IN_FLIGHT._value.get() == start + 2
            raise RuntimeError("job failed")
        assert JOBS_IN_FLIGHT._value.get() == start + 1
    assert JOBS_IN_FLIGHT._value.get() == start


def test_set_slots_publishes_concurrency_and_free_slots() -> None:
    set_slots(4, 1)
    assert sample("komorebi_worker_concurrency") == 4
    assert sample("komorebi_free_slots") == 1


# --- health ----------------------------------------------------------------------------------


def test_healthz_fails_when_the_poll_loop_stalls_and_recovers_on_a_tick() -> None:
    clock = FakeClock()
    health = HealthState(stall_after_seconds=90, clock=clock)
    assert health.healthz() == (True, "ok")  # start-up counts as an iteration
    clock.now += 60
    health.loop_tick()
    clock.now += 89
    assert health.healthz()[0] is True
    clock.now += 2  # 91 s since the last iteration
    ok, reason = health.healthz()
    assert not ok
    assert "stalled" in reason and "91" in reason
    health.loop_tick()
    assert health.healthz() == (True, "ok")


def test_a_worker_that_never_reaches_its_loop_is_unhealthy() -> None:
    clock = FakeClock()
    health = HealthState(stall_after_seconds=30, clock=clock)
    clock.now += 31
    assert health.healthz()[0] is False


def test_poll_success_counts_as_progress_and_sets_the_last_poll_time() -> None:
    clock = FakeClock()
    health = HealthState(stall_after_seconds=10, clock=clock)
    # Earlier tests may have set the gauge already: start from a value no poll can leave.
    LAST_POLL.set(0)
    clock.now += 9
    started = time.time()
    health.poll_succeeded()
    finished = time.time()
    clock.now += 9
    assert health.healthz()[0] is True
    # A Unix time of this very call (not a monotonic one, not an earlier test's).
    assert started <= sample("komorebi_last_successful_poll_timestamp_seconds") <= finished


def test_a_stopped_loop_is_not_a_stall() -> None:
    # During the shutdown grace period nothing polls; liveness must not kill the draining task.
    clock = FakeClock()
    health = HealthState(stall_after_seconds=10, clock=clock)
    health.loop_stopped()
    clock.now += 1000
    assert health.healthz()[0] is True


def test_readyz_is_false_until_ready_and_again_while_stopping() -> None:
    health = HealthState()
    assert health.readyz() == (False, "starting")
    assert sample("komorebi_worker_ready") == 0
    health.set_ready(True)
    assert health.readyz() == (True, "ok")
    assert sample("komorebi_worker_ready") == 1
    health.set_ready(False, "stopping")
    assert health.readyz() == (False, "stopping")
    assert sample("komorebi_worker_ready") == 0
    health.set_ready(False)
    assert health.readyz() == (False, "not ready")


# --- HTTP endpoints --------------------------------------------------------------------------


def exposition() -> str:
    from prometheus_client import generate_latest

    return generate_latest(REGISTRY).decode()


# --- redaction -------------------------------------------------------------------------------

PRESIGNED = (
    "https://input-bucket.s3.us-east-1.amazonaws.com/2024/01/02/agent/rec.mp4"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240102"
    "&X-Amz-Date=20240102T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
)


def test_redact_strips_presigned_url_query_strings() -> None:
    text = f"[https @ 0x55] HTTP error 403 Forbidden\n{PRESIGNED}: Server returned 403"
    cleaned = redact(text)
    assert "5d672d79c15b" not in cleaned
    assert "AKIAIOSFODNN7EXAMPLE" not in cleaned
    assert "X-Amz-Credential" not in cleaned
    # What helps an operator stays: the object's URL without its query, the error.
    assert "https://input-bucket.s3.us-east-1.amazonaws.com/2024/01/02/agent/rec.mp4?" in cleaned
    assert "Server returned 403" in cleaned


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
        ("AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
        ('{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG"}', "wJalrXUtnFEMI"),
        ("aws_session_token = IQoJb3JpZ2luX2VjEBcaCXVz", "IQoJb3JpZ2luX2VjEBcaCXVz"),
        ("key id ASIAY34FZKBOKMUTVV7A expired", "ASIAY34FZKBOKMUTVV7A"),
        (
            "Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240102/us-east-1"
            "/s3/aws4_request, SignedHeaders=host, Signature=fe5f80f77d5fa3beca038a248ff027",
            "fe5f80f77d5fa3beca038a248ff027",
        ),
        ("partial ...&X-Amz-Signature=abcdef0123456789 in stderr", "abcdef0123456789"),
        ("X-Amz-Security-Token=FwoGZXIvYXdzEJr%2F in url", "FwoGZXIvYXdzEJr"),
        # URL-encoded inside another URL or a logged request dict.
        (
            "auth_path: /b/k.mp4%3FX-Amz-Credential%3DAKIAIOSFODNN7EXAMPLE%26X-Amz-Signature"
            "%3D5d672d79c15b13162d9279b0855cf",
            "5d672d79c15b",
        ),
        ("k.mp4%3FX-Amz-Credential%3DAKIAIOSFODNN7EXAMPLE%2F2024", "AKIAIOSFODNN7EXAMPLE"),
    ],
)
def test_redact_removes_credentials(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert "[REDACTED]" in cleaned


def test_redact_leaves_ordinary_text_alone() -> None:
    text = (
        "file:/scratch/job-1/recording.mp4: Invalid data found when processing input; "
        "recording 0f8e6c1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b, key 2024/01/02/agent-7/rec.mp4"
    )
    assert redact(text) == text
    assert redact("") == ""


# --- shipped Prometheus and Grafana configuration --------------------------------------------


def test_compose_config_scrapes_the_worker_every_5_seconds() -> None:
    import yaml

    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "komorebi-worker"]
    assert job["scrape_interval"] == "5s"
    assert job["static_configs"][0]["targets"] == ["worker:9657"]


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def test_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "komorebi-worker"
    titles = {panel["title"] for panel in dashboard["panels"]}
    for wanted in (
        "Throughput by outcome",
        "Job duration p50 / p90 / p99 (success)",
        "In flight vs slots",
        "Failures by reason",
        "DLQ sends",
        "Processing speed (media s per merge wall s)",
        "Bytes transferred",
        "Visibility extensions",
        "Retries",
        "Queue wait p50 / p95 / p99 (first delivery)",
        "Message to DONE p50 / p95 / p99",
        "SLO error budget burn rate",
        "Messages DONE within 30 min (range)",
    ):
        assert wanted in titles, wanted
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_use_only_metrics_the_worker_exposes() -> None:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exposed = {
        f"{family.name}{suffix}"
        for family in REGISTRY.collect()
        for suffix in suffixes[family.type]
    }
    used = {name for expr in dashboard_queries() for name in re.findall(r"komorebi_\w+", expr)}
    assert len(used) >= 15, used
    assert used <= exposed, used - exposed


def test_slo_rules_read_the_slo_bound_and_define_every_window_they_use() -> None:
    import yaml

    rules = [
        rule
        for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    text = json.dumps(rules) + DASHBOARD.read_text()
    # Every "within the SLO" selector is the bucket bound the worker has (SLO_SECONDS).
    bounds = set(re.findall(r'le=~\\"(\d+)\(', text))
    assert bounds == {str(SLO_SECONDS)}, bounds
    recorded = {rule["record"] for rule in rules if "record" in rule}
    used = set(re.findall(r"komorebi:slo_errors:ratio_rate\w+", text))
    assert used == recorded and len(recorded) == 5, (used, recorded)
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    fast = alerts["KomorebiErrorBudgetFastBurn"]["expr"]
    assert "ratio_rate1h > (14.4 * 0.01)" in fast and "ratio_rate5m > (14.4 * 0.01)" in fast
    assert "ratio_rate6h > (6 * 0.01)" in fast and "ratio_rate30m > (6 * 0.01)" in fast
