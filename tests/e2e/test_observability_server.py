"""Observability with real processes and sockets: the metrics/health server on 127.0.0.1 and
``promtool`` (the pure part is tests/unit/test_observability.py).

The HTTP server is the real aiohttp server on 127.0.0.1; the exposition is parsed back with
prometheus_client's parser and checked by ``promtool``; the alert rules are unit-tested by
``promtool test rules``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.errors import ConfigError
from worker.observability import (
    REGISTRY,
    HealthState,
    record_job,
    record_merge,
    serve_http,
)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")


def sample(name: str, **labels: str) -> float:
    """Current value of one sample in the worker's registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- HTTP endpoints --------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    health: HealthState
    clock: FakeClock

    def get(self, path: str, accept: str | None = None) -> tuple[int, str, str]:
        """GET from the server: status, content type, body."""
        headers = {"Accept": accept} if accept else {}
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers["Content-Type"], error.read().decode()

    async def aget(self, path: str, accept: str | None = None) -> tuple[int, str, str]:
        return await anyio.to_thread.run_sync(self.get, path, accept)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    clock = FakeClock()
    health = HealthState(stall_after_seconds=90, clock=clock)
    async with anyio.create_task_group() as group:
        port = await group.start(partial(serve_http, 0, health, host="127.0.0.1"))
        yield Server(port, health, clock)
        group.cancel_scope.cancel()


def exposition() -> str:
    from prometheus_client import generate_latest

    return generate_latest(REGISTRY).decode()


@pytest.mark.anyio
async def test_health_endpoints_flip_with_the_state(server: Server) -> None:
    assert (await server.aget("/healthz"))[0] == 200
    status, _, body = await server.aget("/readyz")
    assert (status, body.strip()) == (503, "starting")

    server.health.set_ready(True)
    assert (await server.aget("/readyz"))[:1] == (200,)
    assert (await server.aget("/readyz"))[2].strip() == "ok"

    server.clock.now += 120  # the loop stalls
    status, _, body = await server.aget("/healthz")
    assert status == 503 and "stalled" in body
    server.health.loop_tick()
    assert (await server.aget("/healthz"))[0] == 200

    server.health.set_ready(False, "stopping")
    assert (await server.aget("/readyz"))[:1] == (503,)
    assert (await server.aget("/nope"))[0] == 404


@pytest.mark.anyio
async def test_metrics_exposition_parses_back(server: Server) -> None:
    record_job("success", 12.5)
    record_job("dead_letter", 0.5, reason="invalid_message")
    status, content_type, body = await server.aget("/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {family.name: family for family in text_string_to_metric_families(body)}
    # Counters are exposed as <name>_total; the parser strips the suffix from the family name.
    for name in (
        "komorebi_jobs",
        "komorebi_job_duration_seconds",
        "komorebi_stage_duration_seconds",
        "komorebi_media_processed_seconds",
        "komorebi_processing_speed_ratio",
        "komorebi_jobs_in_flight",
        "komorebi_free_slots",
        "komorebi_worker_concurrency",
        "komorebi_s3_transferred_bytes",
        "komorebi_visibility_extensions",
        "komorebi_retries",
        "komorebi_dlq_sends",
        "komorebi_ffmpeg_failures",
        "komorebi_call_end_clamps",
        "komorebi_duplicates",
        "komorebi_sync",
        "komorebi_last_successful_poll_timestamp_seconds",
        "komorebi_task_protection_enabled",
        "komorebi_worker_ready",
        "komorebi_queue_wait_seconds",
        "komorebi_message_to_done_seconds",
    ):
        assert name in families, name
    assert families["komorebi_jobs"].type == "counter"
    assert families["komorebi_job_duration_seconds"].type == "histogram"
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for s in families["komorebi_dlq_sends"].samples
    }
    assert values[("komorebi_dlq_sends_total", (("reason", "invalid_message"),))] >= 1
    # Histogram buckets reach hours.
    les = {
        s.labels["le"]
        for s in families["komorebi_job_duration_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert "28800.0" in les and "+Inf" in les
    # No per-recording labels anywhere: every label is from a small, fixed set.
    label_names = {key for family in families.values() for s in family.samples for key in s.labels}
    assert label_names <= {
        "outcome",
        "stage",
        "reason",
        "direction",
        "le",
        "method",
        "delivery",
    }


@pytest.mark.anyio
async def test_metrics_offer_openmetrics_to_a_scraper_that_asks(server: Server) -> None:
    status, content_type, body = await server.aget(
        "/metrics", accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


@needs_promtool
@pytest.mark.anyio
async def test_promtool_check_metrics_is_clean(server: Server) -> None:
    record_job("retry", 2.0, reason="connect_audio_not_ready")
    record_merge(100.0, 2.0)
    _, _, body = await server.aget("/metrics")
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool prints lint problems (naming, units) even on some exit-0 paths.
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout


@pytest.mark.anyio
async def test_server_releases_its_port_on_cancel() -> None:
    health = HealthState()
    async with anyio.create_task_group() as group:
        port = await group.start(partial(serve_http, 0, health, host="127.0.0.1"))
        group.cancel_scope.cancel()
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))


@pytest.mark.anyio
async def test_a_busy_port_is_a_one_line_configuration_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"METRICS_PORT {port}: cannot listen"):
            await serve_http(port, HealthState(), host="127.0.0.1")


# --- shipped Prometheus and Grafana configuration --------------------------------------------


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS_DIR
    )


@needs_promtool
def test_promtool_check_config_is_clean() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout  # alerts.yml is loaded by the config


@needs_promtool
def test_promtool_check_rules_is_clean() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_rules_fire_on_the_series_they_are_meant_for() -> None:
    # alerts.test.yml: each alert fires on a failing worker's series and stays quiet otherwise.
    result = _promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
