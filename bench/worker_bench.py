"""The queue worker end to end: N short jobs through a moto server at a given concurrency.

A moto server runs in its own process; ``tests.harness.fixtures_aws.provision_world`` creates the
queue, DLQ, buckets and table exactly as ``komorebi-worker provision`` does. Each job is a real
contact: a 60-second 720p recording (the cached segment) under its input key, a 45-second
Connect WAV under the Connect prefix with Connect's file name, the backend's row, and the
queue message (no ``connectAudioKey``: the worker searches the prefixes, as in production).

The worker is the real ``komorebi-worker run`` process (``python -m worker.cli run``). The bench
samples its process tree's RSS, polls the table until every row is DONE, then reads the
worker's own metrics (``/metrics``: job and stage duration histograms) and stops it with
SIGTERM. Throughput = jobs / (last DONE - first row seen PROCESSING). Per-job overhead outside
ffmpeg = mean job duration - mean ``probe`` + ``merge`` stage durations (ffprobe of the inputs;
ffmpeg, output probe and thumbnail); the rest is S3, DynamoDB, SQS and the worker's own code.
The same machinery with one long recording gives the peak RSS and scratch of a whole job.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.measure import cpu_pressure_total, disk_usage, tree_rss
from bench.media_gen import segment_file, write_connect_wav
from bench.transfer_bench import free_port, moto_server

AGENT_ID = "bench-agent"
CALL_END_SECONDS = 45.0
TIMEOUT_SECONDS = 900.0


def _metric_samples(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value} (comments dropped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


def _sum(samples: dict[str, float], pattern: str) -> float:
    regex = re.compile(pattern)
    return sum(v for k, v in samples.items() if regex.fullmatch(k))


def _seed(world: Any, jobs: int, recording: Path, connect: Path, call_end: float) -> list[str]:
    from worker.config import KeyTemplates
    from worker.keys import keys_for
    from worker.messages import JobMessage

    s3 = world.client("s3")
    dynamodb = world.client("dynamodb")
    sqs = world.client("sqs")
    created = datetime.now(UTC).replace(microsecond=0)
    ids = []
    bodies = []
    for n in range(jobs):
        recording_id = f"bench-{n:03d}-{os.urandom(4).hex()}"
        keys = keys_for(
            recording_id, AGENT_ID, created, KeyTemplates(), world.env["CONNECT_INSTANCE_ALIAS"]
        )
        connect_key = f"{keys.connect_audio_prefixes[0]}_{created:%Y%m%dT%H:%M}_UTC.wav"
        s3.upload_file(str(recording), world.input_bucket, keys.input_key)
        s3.upload_file(str(connect), world.ac_audio_bucket, connect_key)
        dynamodb.put_item(
            TableName=world.table_name,
            Item={
                "videoID": {"S": recording_id},
                "agentID": {"S": AGENT_ID},
                "creationDate": {"S": f"{created:%Y-%m-%d %H:%M:%S}"},
                "isProcessed": {"BOOL": False},
            },
        )
        ids.append(recording_id)
        bodies.append(JobMessage(recording_id, call_end).to_body())
    for start in range(0, len(bodies), 10):
        sqs.send_message_batch(
            QueueUrl=world.queue_url,
            Entries=[
                {"Id": str(i), "MessageBody": body}
                for i, body in enumerate(bodies[start : start + 10])
            ],
        )
    return ids


def _statuses(world: Any) -> dict[str, str]:
    dynamodb = world.client("dynamodb")
    out: dict[str, str] = {}
    kwargs: dict[str, Any] = {
        "TableName": world.table_name,
        "ProjectionExpression": "videoID, processingStatus",
    }
    while True:
        page = dynamodb.scan(**kwargs)
        for item in page["Items"]:
            out[item["videoID"]["S"]] = item.get("processingStatus", {}).get("S", "")
        if "LastEvaluatedKey" not in page:
            return out
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def run_worker_bench(
    concurrency: int,
    jobs: int,
    workdir: Path,
    *,
    recording: Path | None = None,
    connect: Path | None = None,
    call_end: float = CALL_END_SECONDS,
    tag: str = "",
) -> dict[str, Any]:
    """Run ``jobs`` jobs through a fresh world at ``concurrency``; see the module docstring.

    Default media: the cached 60-second segment and a 45-second Connect WAV; pass
    ``recording``/``connect``/``call_end`` to run (for instance) one long recording.
    """
    from tests.harness.fixtures_aws import provision_world

    workdir.mkdir(parents=True, exist_ok=True)
    if recording is None or connect is None:
        recording = segment_file()
        connect = workdir / "connect-45s.wav"
        if not connect.exists():
            write_connect_wav(connect, CALL_END_SECONDS)
    name = f"c{concurrency}{tag}"
    scratch = workdir / f"scratch-{name}"
    scratch.mkdir(exist_ok=True)
    peak_scratch = 0
    log_path = workdir / f"worker-{name}.log"
    with moto_server() as (endpoint, moto_pid):
        world = provision_world(endpoint)
        ids = _seed(world, jobs, recording, connect, call_end)
        moto = psutil.Process(moto_pid)
        moto_cpu_before = sum(moto.cpu_times()[:2])  # seeding excluded
        pressure_before = cpu_pressure_total()
        metrics_port = free_port()
        env = {
            **os.environ,
            **world.env,
            "WORKER_CONCURRENCY": str(concurrency),
            "METRICS_PORT": str(metrics_port),
            "SCRATCH_DIR": str(scratch),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
        with log_path.open("wb") as log_file:
            worker = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "run"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
            proc = psutil.Process(worker.pid)
            started = time.monotonic()
            first_seen: float | None = None
            finished: float | None = None
            peak_rss = 0
            main_rss: list[int] = []  # the worker's own Python process, over the run
            statuses: dict[str, str] = {}
            metrics_text = ""
            try:
                while time.monotonic() - started < TIMEOUT_SECONDS:
                    if worker.poll() is not None:
                        raise RuntimeError(
                            f"worker exited with {worker.returncode}; log: {log_path}"
                        )
                    peak_rss = max(peak_rss, tree_rss(proc))
                    with contextlib.suppress(psutil.Error):
                        main_rss.append(proc.memory_info().rss)
                    peak_scratch = max(peak_scratch, disk_usage(scratch))
                    statuses = _statuses(world)
                    now = time.monotonic()
                    if first_seen is None and any(statuses.get(i) for i in ids):
                        first_seen = now
                    terminal = [i for i in ids if statuses.get(i) in ("DONE", "FAILED")]
                    if len(terminal) == len(ids):
                        finished = now
                        break
                    time.sleep(0.25)
                else:
                    raise RuntimeError(f"timed out; statuses so far: {statuses}")
                # CPU spent while the jobs ran: the worker with its reaped ffmpeg/ffprobe
                # children, and the emulator serving S3/SQS/DynamoDB.
                times = proc.cpu_times()
                worker_cpu = times.user + times.system + times.children_user
                worker_cpu += times.children_system
                moto_cpu = sum(moto.cpu_times()[:2]) - moto_cpu_before
                pressure_after = cpu_pressure_total()
                # Let the last job's metrics be recorded (acknowledged after the row update).
                time.sleep(1.0)
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/metrics", timeout=10
                ) as response:
                    metrics_text = response.read().decode()
            finally:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
                    try:
                        worker.wait(60)
                    except subprocess.TimeoutExpired:
                        worker.kill()
                        worker.wait()
    assert first_seen is not None and finished is not None
    samples = _metric_samples(metrics_text)
    job_count = _sum(samples, r'komorebi_job_duration_seconds_count\{outcome="success"\}')
    job_sum = _sum(samples, r'komorebi_job_duration_seconds_sum\{outcome="success"\}')
    stages: dict[str, float] = {}
    for key, value in samples.items():
        match = re.fullmatch(r'komorebi_stage_duration_seconds_sum\{stage="([^"]+)"\}', key)
        if match:
            count = samples.get(f'komorebi_stage_duration_seconds_count{{stage="{match[1]}"}}', 0)
            if count:
                stages[match[1]] = value / count
    done = sum(1 for i in ids if statuses.get(i) == "DONE")
    wall = finished - first_seen
    mean_job = job_sum / job_count if job_count else float("nan")
    # ffprobe of the inputs (job stage "probe") and the merge stage (ffmpeg, output probe,
    # thumbnail) are the media tools' time; the rest is the worker's own overhead.
    mean_merge = stages.get("merge", float("nan")) + stages.get("probe", 0.0)
    pressure = None
    if pressure_before is not None and pressure_after is not None:
        pressure = (pressure_after - pressure_before) / 1e6 / (time.monotonic() - started)
    cpu_per_job = (worker_cpu + moto_cpu) / max(done, 1)
    return {
        "worker_cpu_seconds": worker_cpu,
        "moto_cpu_seconds": moto_cpu,
        "cpu_seconds_per_job": cpu_per_job,
        # Jobs/min if the job's CPU (worker + ffmpeg + emulator) were the only limit.
        "cpu_bound_jobs_per_minute": 60 * (os.cpu_count() or 1) / cpu_per_job,
        "cpu_pressure": pressure,
        "concurrency": concurrency,
        "jobs": jobs,
        "done": done,
        "failed": len(ids) - done,
        "wall_seconds": wall,
        "jobs_per_minute": done / wall * 60,
        "mean_job_seconds": mean_job,
        "mean_merge_seconds": mean_merge,
        "mean_overhead_seconds": mean_job - mean_merge,
        "mean_stage_seconds": stages,
        "peak_rss_bytes": peak_rss,
        "peak_scratch_bytes": peak_scratch,
        # Python process alone (no ffmpeg): first and last tenth of the run, to see growth.
        "worker_rss_early_bytes": max(main_rss[: max(1, len(main_rss) // 10)], default=0),
        "worker_rss_late_bytes": max(main_rss[-max(1, len(main_rss) // 10) :], default=0),
        "recording": recording.name,
        "log": str(log_path),
    }
