"""A real Prometheus scrapes a real ``komorebi-worker run`` processing jobs on the moto server.

The worker runs as the operator runs it (the console script, configured by environment),
processes two good contacts, one invalid message (dead letter) and one contact whose Connect
audio is missing (retry). Debian's ``prometheus`` binary scrapes it every second on 127.0.0.1
with the shipped alert rules loaded; the test asks Prometheus's HTTP API, not the worker, so
it proves what an operator's Prometheus would see. Every dashboard query is run there too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.fixtures_aws import AwsEnv
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.worker_harness import worker_env
from worker.devenv import seed_demo_contact

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "infra" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "komorebi-worker.json"
SCRIPT = Path(sys.executable).with_name("komorebi-worker")
PROMETHEUS = shutil.which("prometheus")
DEADLINE_SECONDS = 120.0

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed")


def wait_for(what: str, check: Callable[[], Any], deadline: float = DEADLINE_SECONDS) -> Any:
    """:func:`wait_until` with this module's defaults: a server still starting is "not yet"."""
    return wait_until(
        check, timeout=deadline, interval=0.25, what=what, ignore=(OSError, ValueError)
    )


def http_get(url: str) -> tuple[int, str]:
    """Status and body of a GET (non-2xx included)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@dataclass
class Prometheus:
    """A running Prometheus server and its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}")
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise ValueError(f"{path} {params}: {status} {body[:500]}")
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant-vector result of ``expr``."""
        data = self.api("query", query=expr)
        return list(data["result"]) if data["resultType"] == "vector" else [data]

    def value(self, expr: str) -> float | None:
        """The single value of ``expr``, or None when it has no result yet."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])


@contextmanager
def run_prometheus(tmp_path: Path, target: str) -> Iterator[Prometheus]:
    """Debian's Prometheus on 127.0.0.1 scraping ``target`` every second, alert rules loaded."""
    assert PROMETHEUS is not None
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML: no templating pitfalls
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "komorebi-worker",
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "static_configs": [{"targets": [target]}],
                    }
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.console.templates=/dev/null",
                "--web.console.libraries=/dev/null",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_for(
            "prometheus to be ready",
            lambda: process.poll() is None and http_get(f"{server.url}/-/ready")[0] == 200,
            deadline=30,
        )
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Worker:
    """A ``komorebi-worker run`` process and where its logs go."""

    process: subprocess.Popen[bytes]
    metrics_url: str
    log: Path

    def log_lines(self) -> list[dict[str, Any]]:
        """The worker's JSON log lines so far."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


def prometheus_worker_env(
    aws: AwsEnv, tmp_path: Path, metrics_port: int, **extra: str
) -> dict[str, str]:
    """:func:`worker_env` on ``metrics_port``, with only PATH inherited; a retried message
    stays away for the whole test (its retry is counted once)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **worker_env(
            aws,
            scratch,
            backoff=(600.0, 900.0),
            METRICS_PORT=str(metrics_port),
            SHUTDOWN_GRACE_SECONDS="20",
            **extra,
        ),
    }


@contextmanager
def run_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Worker]:
    """Start ``komorebi-worker run``; stop it with SIGTERM (graceful) on exit."""
    log = tmp_path / "worker.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(SCRIPT), "run"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    worker = Worker(process, f"http://127.0.0.1:{env['METRICS_PORT']}", log)
    try:
        yield worker
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Seeded:
    """What was put on the queue."""

    good: list[str]
    missing_audio: str


def seed_jobs(aws: AwsEnv) -> Seeded:
    """Two good contacts, one invalid message, one contact without its Connect audio yet."""
    settings = aws.settings()
    good = [seed_demo_contact(settings, aws.session).recording_id for _ in range(2)]
    aws.client("sqs").send_message(QueueUrl=aws.queue_url, MessageBody="{not json")
    pending = seed_demo_contact(settings, aws.session)
    aws.client("s3").delete_object(Bucket=aws.ac_audio_bucket, Key=pending.connect_audio_key)
    return Seeded(good=good, missing_audio=pending.recording_id)


def dashboard_queries() -> list[str]:
    """The dashboard's PromQL with Grafana's variables filled in as Grafana would."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = str(target["expr"])
            expr = expr.replace("$__rate_interval", "1m").replace("$__range", "5m")
            queries.append(expr.replace("$job", ".*"))
    return queries


def test_prometheus_scrapes_job_metrics_from_a_running_worker(aws: AwsEnv, tmp_path: Path) -> None:
    seeded = seed_jobs(aws)
    metrics_port = free_port()
    env = prometheus_worker_env(aws, tmp_path, metrics_port)
    with (
        run_worker(env, tmp_path) as worker,
        run_prometheus(tmp_path, f"127.0.0.1:{metrics_port}") as prom,
    ):

        def jobs(outcome: str) -> float:
            return prom.value(f'sum(komorebi_jobs_total{{outcome="{outcome}"}})') or 0.0

        def all_jobs_seen() -> bool:
            if worker.process.poll() is not None:
                pytest.fail(f"worker exited early:\n{worker.log.read_text()[-3000:]}")
            return jobs("success") >= 2 and jobs("dead_letter") >= 1 and jobs("retry") >= 1

        wait_for("the four jobs in Prometheus", all_jobs_seen)

        # Counters by outcome and reason, exactly what the worker did.
        assert jobs("success") == 2
        assert jobs("dead_letter") == 1
        assert jobs("retry") == 1
        assert jobs("duplicate") == 0
        dlq = prom.query("komorebi_dlq_sends_total")
        assert [(s["metric"]["reason"], s["value"][1]) for s in dlq] == [("invalid_message", "1")]
        retries = prom.query("komorebi_retries_total")
        assert [(s["metric"]["reason"], s["value"][1]) for s in retries] == [
            ("connect_audio_not_ready", "1")
        ]

        # Histograms arrived with their buckets: job durations, stages, processing speed.
        success_le = {
            float(s["metric"]["le"]): float(s["value"][1])
            for s in prom.query('komorebi_job_duration_seconds_bucket{outcome="success"}')
        }
        assert success_le[float("inf")] == 2 and 28800.0 in success_le  # buckets up to hours
        assert prom.value('komorebi_job_duration_seconds_count{outcome="success"}') == 2
        p90 = prom.value(
            "histogram_quantile(0.9, sum by (le) "
            '(komorebi_job_duration_seconds_bucket{outcome="success"}))'
        )
        assert p90 is not None and 0 < p90 <= 28800
        stages = {
            s["metric"]["stage"]: float(s["value"][1])
            for s in prom.query("komorebi_stage_duration_seconds_count")
        }
        for name in ("read_row", "download", "merge", "upload", "update_row"):
            assert stages.get(name, 0) >= 2, stages
        assert prom.value("komorebi_processing_speed_ratio_count") == 2
        speed = prom.value(
            "komorebi_processing_speed_ratio_sum / komorebi_processing_speed_ratio_count"
        )
        assert speed is not None and speed > 0
        media = prom.value("komorebi_media_processed_seconds_total")
        assert media is not None and media > 5  # two merges of the bundled sample
        for direction in ("download", "upload"):
            moved = prom.value(f'komorebi_s3_transferred_bytes_total{{direction="{direction}"}}')
            assert moved is not None and moved > 10_000, direction
        assert (prom.value("komorebi_visibility_extensions_total") or 0) >= 2

        # Gauges: ready, slots, last poll; Prometheus sees the target up.
        assert prom.value('up{job="komorebi-worker"}') == 1
        assert prom.value("komorebi_worker_ready") == 1
        assert prom.value("komorebi_worker_concurrency") == 2
        wait_for("idle slots", lambda: prom.value("komorebi_free_slots") == 2)
        assert prom.value("komorebi_jobs_in_flight") == 0
        poll_age = prom.value("time() - komorebi_last_successful_poll_timestamp_seconds")
        assert poll_age is not None and 0 <= poll_age < 3600  # a Unix time, recent

        # The shipped alert rules evaluate cleanly, and the DLQ alert fires with its reason.
        groups = prom.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        shipped = yaml.safe_load(ALERTS.read_text())["groups"]
        assert len(rules) == sum(len(group["rules"]) for group in shipped) >= 13
        assert all(rule["health"] == "ok" for rule in rules), rules

        def dead_letter_alert() -> list[dict[str, Any]]:
            return [
                alert
                for alert in prom.api("alerts")["alerts"]
                if alert["labels"]["alertname"] == "KomorebiDeadLetters"
            ]

        (alert,) = wait_for("the dead-letter alert", dead_letter_alert, deadline=30)
        assert alert["labels"]["reason"] == "invalid_message"
        assert alert["state"] == "firing"
        assert not [
            a
            for a in prom.api("alerts")["alerts"]
            if a["labels"]["alertname"] in ("KomorebiWorkerDown", "KomorebiPollStalled")
        ]

        # Every dashboard query is valid PromQL (a PromQL error raises) that returns data from
        # this worker. Series that only exist after rare events (ffmpeg failures, duplicates,
        # clamps, task protection off ECS) may be empty. rate() needs two samples of a series
        # born late (the retry), so wait for data rather than asking once.
        rare = ("ffmpeg_failures", "duplicates", "call_end_clamps", "task_protection")
        for expr in dashboard_queries():
            if any(name in expr for name in rare):
                prom.query(expr)
            else:
                wait_for(f"data for {expr}", lambda expr=expr: prom.query(expr), deadline=30)

        # The real process's exposition, every family populated by real jobs, is lint-clean.
        status, exposition = http_get(f"{worker.metrics_url}/metrics")
        assert status == 200 and "komorebi_stage_duration_seconds_bucket" in exposition
        promtool = shutil.which("promtool")
        if promtool is not None:
            lint = subprocess.run(
                [promtool, "check", "metrics"],
                input=exposition,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr

        # The health endpoints of the real process.
        assert http_get(f"{worker.metrics_url}/healthz") == (200, "ok\n")
        assert http_get(f"{worker.metrics_url}/readyz") == (200, "ok\n")

        # Graceful stop: exit 0.
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=60) == 0, worker.log.read_text()[-3000:]

    # The two good contacts were really merged (outputs in S3), so the counts mean something.
    table = aws.client("dynamodb")
    for recording_id in seeded.good:
        item = table.get_item(TableName=aws.table_name, Key={"videoID": {"S": recording_id}})
        assert item["Item"]["processingStatus"]["S"] == "DONE", item
