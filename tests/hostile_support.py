"""Shared parts of the hostile-input corpus, fault injection and soak tests.

- media makers: tiny valid recordings and Connect WAVs (real ffmpeg), and hostile files
  (truncated containers, images, playlists and concat scripts disguised as ``.mp4``, headers
  that lie about the duration);
- :class:`World`: seeds rows, objects and messages on the emulator (boto3, synchronous) and
  reads back queue, DLQ, table and output bucket;
- :class:`WorkerProcess`: one ``komorebi-worker run`` subprocess with its logs in a file;
- checks: probing outputs, tone energy by FFT, leak scanning (local file content, credentials,
  URLs, signatures).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tests.fixtures_aws import CONNECT_ALIAS, AwsEnv, free_port

# Copies of ../shared/fixtures kept in the repo, so a checkout anywhere has them.
FIXTURES = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parents[1]
WORKER_BIN = REPO / ".venv" / "bin" / "komorebi-worker"

# Credentials the worker runs with: distinctive, so a leak anywhere is unmistakable.
SECRET_KEY = "hostileSecretKey0000DoNotLog0000AbCdEfGh"
ACCESS_KEY = "AKIAHOSTILETESTKEY01"
PASSWD_MARKERS = ("root:x:0:0", "/bin/bash", "daemon:x:")
SIGNATURE_MARKERS = ("X-Amz-Signature", "Signature=", "AWS4-HMAC-SHA256", "X-Amz-Credential")
_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)

CREATION_DATE = "2026-11-27 10:00:00"
AGENT = "agent-7"


# --- media makers ----------------------------------------------------------------------------


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly; raise on failure."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def make_recording(path: Path, seconds: float = 2.0, tone: int = 1000, audio: bool = True) -> Path:
    """A tiny H.264 (+AAC tone) MP4 with moov at the end (like a non-faststart writer)."""
    args = ["-f", "lavfi", "-i", f"testsrc=size=160x120:rate=10:d={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=f={tone}:d={seconds}:sample_rate=48000"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "10"]
    args += ["-c:a", "aac", "-b:a", "48k"] if audio else ["-an"]
    ffmpeg(*args, "-t", str(seconds), str(path))
    return path


def make_webm(path: Path, seconds: float = 2.0, tone: int = 1000) -> Path:
    """A tiny VP8 + Opus WebM (ffmpeg writes a Duration element in its header)."""
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=size=160x120:rate=10:d={seconds}",
        "-f", "lavfi", "-i", f"sine=f={tone}:d={seconds}:sample_rate=48000",
        "-c:v", "libvpx", "-deadline", "realtime", "-b:v", "200k", "-c:a", "libopus",
        "-t", str(seconds), str(path),
    )  # fmt: skip
    return path


def make_connect_wav(path: Path, seconds: float = 1.5, left: int = 440, right: int = 660) -> Path:
    """A Connect-shaped WAV: pcm_s16le, 8000 Hz, customer left, agent right."""
    ffmpeg(
        "-f", "lavfi", "-i", f"sine=f={left}:d={seconds}:sample_rate=8000",
        "-f", "lavfi", "-i", f"sine=f={right}:d={seconds}:sample_rate=8000",
        "-filter_complex", "[0:a][1:a]join=inputs=2:channel_layout=stereo[a]", "-map", "[a]",
        "-c:a", "pcm_s16le", "-ar", "8000", str(path),
    )  # fmt: skip
    return path


def make_audio_only(path: Path, seconds: float = 2.0) -> Path:
    """An audio-only MP4 (AAC), as a screen recorder without video would never write."""
    ffmpeg("-f", "lavfi", "-i", f"sine=f=1000:d={seconds}", "-c:a", "aac", str(path))
    return path


def make_png(path: Path) -> Path:
    """A small PNG image."""
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64", "-frames:v", "1", str(path))
    return path


def truncate_before_moov(data: bytes) -> bytes:
    """An MP4 cut where its ``moov`` box starts: media data without an index."""
    at = data.find(b"moov")
    assert at > 8, "the MP4 must have moov after mdat"
    return data[: at - 4]


def claim_hours_mp4(data: bytes, hours: float = 3.0) -> bytes:
    """Patch ``mvhd``/``mdhd``/``tkhd`` (version 0) to claim ``hours`` of media."""
    out = bytearray(data)
    for box, timescale_at, duration_at in ((b"mvhd", 12, 16), (b"mdhd", 12, 16)):
        start = 0
        while (at := out.find(box, start)) >= 0:
            base = at + 4
            if out[base] == 0:
                timescale = struct.unpack_from(">I", out, base + timescale_at)[0]
                struct.pack_into(">I", out, base + duration_at, int(timescale * hours * 3600))
            start = at + 4
    at = out.find(b"tkhd")
    if at >= 0 and out[at + 4] == 0:
        struct.pack_into(">I", out, at + 4 + 20, int(1000 * hours * 3600))
    return bytes(out)


def claim_hours_webm(data: bytes, hours: float = 3.0) -> bytes:
    """Patch the Matroska ``Duration`` element (ID 0x4489, 8-byte float, ms) to ``hours``."""
    at = data.find(b"\x44\x89\x88")
    assert at >= 0, "no 8-byte Duration element"
    out = bytearray(data)
    struct.pack_into(">d", out, at + 3, hours * 3600 * 1000.0)
    return bytes(out)


def hls_playlist(target: str) -> bytes:
    """An HLS playlist whose one segment is ``target``."""
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n#EXT-X-ENDLIST\n".encode()


def ffconcat_script(target: str) -> bytes:
    """An ffconcat script listing ``target``."""
    return f"ffconcat version 1.0\nfile '{target}'\nduration 5\n".encode()


class ListeningTrap:
    """A TCP listener on 127.0.0.1 that records every connection it accepts (it must see none)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        """Stop listening."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# --- output checks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Probed:
    """What ffprobe says about an output."""

    duration: float
    video_codec: str | None
    audio_codec: str | None


def probe_file(path: Path) -> Probed:
    """ffprobe a file (format duration, first video and audio codec)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
         str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    data = json.loads(out)
    codecs: dict[str, str] = {}
    for stream in data.get("streams", []):
        codecs.setdefault(stream.get("codec_type", ""), stream.get("codec_name", ""))
    return Probed(float(data["format"]["duration"]), codecs.get("video"), codecs.get("audio"))


def decode_pcm(path: Path, rate: int = 16000) -> np.ndarray:
    """The file's audio as mono float32 samples at ``rate``."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(rate),
         "-f", "f32le", "-"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, dtype=np.float32)


def band_energy(samples: np.ndarray, rate: int, freq: float, width: float = 40.0) -> float:
    """Share of the spectrum's energy within ``freq +- width`` Hz."""
    if len(samples) == 0:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    total = float(spectrum.sum()) or 1.0
    return float(spectrum[(freqs > freq - width) & (freqs < freq + width)].sum()) / total


# --- leak scanning ---------------------------------------------------------------------------


def leaks(text: str, *, urls: bool = True) -> list[str]:
    """What in ``text`` must never leave the worker: local file content, credentials, URLs."""
    found = [m for m in ("root:x:0:0", "daemon:x:") if m in text]
    found += [m for m in (SECRET_KEY, "AWS_SECRET_ACCESS_KEY") if m in text]
    found += [m for m in SIGNATURE_MARKERS if m in text]
    if urls and _URL.search(text):
        found.append(f"url: {_URL.search(text)!r}")
    return found


# --- the emulator world ----------------------------------------------------------------------


def day_path(creation: str = CREATION_DATE) -> str:
    """``yyyy/mm/dd`` of a creation date."""
    return datetime.strptime(creation, "%Y-%m-%d %H:%M:%S").strftime("%Y/%m/%d")


@dataclass
class World:
    """Seeding and inspection of one provisioned world (boto3, synchronous)."""

    aws: AwsEnv
    s3: Any = field(init=False)
    sqs: Any = field(init=False)
    ddb: Any = field(init=False)

    def __post_init__(self) -> None:
        self.s3 = self.aws.client("s3")
        self.sqs = self.aws.client("sqs")
        self.ddb = self.aws.client("dynamodb")

    def set_max_receive_count(self, count: int) -> None:
        """Shorten the redrive (transient failures reach the DLQ after ``count`` receives)."""
        arn = self.sqs.get_queue_attributes(QueueUrl=self.aws.dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": count})
        self.sqs.set_queue_attributes(
            QueueUrl=self.aws.queue_url, Attributes={"RedrivePolicy": policy}
        )

    def set_queue_visibility(self, seconds: int) -> None:
        """The queue's own visibility timeout: how long a received message stays hidden before
        the worker's first heartbeat — and after a receive whose response was lost, or a
        SIGKILLed worker's last extension."""
        self.sqs.set_queue_attributes(
            QueueUrl=self.aws.queue_url, Attributes={"VisibilityTimeout": str(seconds)}
        )

    def put_row(
        self,
        recording_id: str,
        *,
        agent_id: str | None = AGENT,
        creation: str | None = CREATION_DATE,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """A Recording row as the backend writes it."""
        item: dict[str, Any] = {"videoID": {"S": recording_id}, "isProcessed": {"BOOL": False}}
        if agent_id is not None:
            item["agentID"] = {"S": agent_id}
        if creation is not None:
            item["creationDate"] = {"S": creation}
        item.update(extra or {})
        self.ddb.put_item(TableName=self.aws.table_name, Item=item)

    def input_key(self, recording_id: str, agent_id: str = AGENT) -> str:
        """Where the Komorebi recording goes."""
        return f"{day_path()}/{agent_id}/{recording_id}.mp4"

    def connect_key(self, recording_id: str, stamp: str = "20261127T10:05") -> str:
        """A Connect-style key for the recording's call audio."""
        return f"connect/{CONNECT_ALIAS}/CallRecordings/{day_path()}/{recording_id}_{stamp}_UTC.wav"

    def put_recording(self, recording_id: str, data: bytes) -> None:
        """Upload the Komorebi recording."""
        self.s3.put_object(
            Bucket=self.aws.input_bucket, Key=self.input_key(recording_id), Body=data
        )

    def put_connect(self, recording_id: str, data: bytes, stamp: str = "20261127T10:05") -> str:
        """Upload a Connect recording; returns its key."""
        key = self.connect_key(recording_id, stamp)
        self.s3.put_object(Bucket=self.aws.ac_audio_bucket, Key=key, Body=data)
        return key

    def send(self, body: str) -> str:
        """Enqueue a raw body; returns the message id."""
        return str(
            self.sqs.send_message(QueueUrl=self.aws.queue_url, MessageBody=body)["MessageId"]
        )

    def send_batch(self, bodies: Iterable[str]) -> None:
        """Enqueue many bodies, 10 per call."""
        pending = list(bodies)
        for start in range(0, len(pending), 10):
            entries = [
                {"Id": str(i), "MessageBody": body}
                for i, body in enumerate(pending[start : start + 10])
            ]
            result = self.sqs.send_message_batch(QueueUrl=self.aws.queue_url, Entries=entries)
            assert not result.get("Failed"), result.get("Failed")

    def queue_counts(self, url: str | None = None) -> tuple[int, int]:
        """(visible, in flight) of the queue (default: the job queue)."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.aws.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        )

    def drain_dlq(self) -> list[dict[str, Any]]:
        """Every DLQ message (body + attributes); they are deleted as they are read."""
        found: list[dict[str, Any]] = []
        empty_rounds = 0
        while empty_rounds < 2:
            response = self.sqs.receive_message(
                QueueUrl=self.aws.dlq_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
            messages = response.get("Messages", [])
            if not messages:
                empty_rounds += 1
                continue
            for message in messages:
                found.append(message)
                self.sqs.delete_message(
                    QueueUrl=self.aws.dlq_url, ReceiptHandle=message["ReceiptHandle"]
                )
        return found

    def rows(self) -> dict[str, dict[str, Any]]:
        """Every row, by videoID, with plain values."""
        rows: dict[str, dict[str, Any]] = {}
        for page in self.ddb.get_paginator("scan").paginate(TableName=self.aws.table_name):
            for item in page["Items"]:
                rows[item["videoID"]["S"]] = {k: next(iter(v.values())) for k, v in item.items()}
        return rows

    def output_keys(self) -> list[str]:
        """Every key in the output bucket."""
        keys: list[str] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.aws.output_bucket)
        for page in pages:
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        return keys

    def download_output(self, key: str, destination: Path) -> Path:
        """Fetch an output object to a local file."""
        self.s3.download_file(self.aws.output_bucket, key, str(destination))
        return destination


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.25
) -> None:
    """Poll ``condition`` until true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- worker processes ------------------------------------------------------------------------


def worker_env(aws: AwsEnv, scratch: Path, **overrides: str) -> dict[str, str]:
    """Environment of a test worker: fast retries, short visibility, distinctive credentials."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "PYTEST", "COV_"))
    }
    env.update(aws.env)
    env.update(
        {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "WORKER_CONCURRENCY": "2",
            "VISIBILITY_TIMEOUT": "20",
            "SHUTDOWN_GRACE_SECONDS": "10",
            "RETRY_BACKOFF_BASE_SECONDS": "0.2",
            "RETRY_BACKOFF_MAX_SECONDS": "1",
            "METRICS_PORT": str(free_port()),
            "METRICS_HOST": "127.0.0.1",
            "SCRATCH_DIR": str(scratch),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "FFMPEG_TIMEOUT_BASE_SECONDS": "30",
            "AWS_MAX_ATTEMPTS": "5",
        }
    )
    env.update(overrides)
    return env


class WorkerProcess:
    """One ``komorebi-worker run`` subprocess; stdout and stderr go to ``log_path``."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = int(self.env["METRICS_PORT"])

    def start(self) -> WorkerProcess:
        """Start the process (logs appended to ``log_path``)."""
        log = self.log_path.open("ab")
        command = [str(WORKER_BIN), "run"] if WORKER_BIN.exists() else [
            sys.executable, "-m", "worker.cli", "run"
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker (by PID)."""
        if self.alive():
            os.kill(self.pid, signum)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait (SIGKILL after ``timeout``: an idle worker first finishes its long
        poll, up to 35 s); the exit code."""
        assert self.process is not None
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
        return self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL and reap (and any ffmpeg it left in its session)."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process is not None:
            self.process.wait(10)

    def metrics(self) -> str:
        """The text of its /metrics (empty when unreachable)."""
        return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def healthy(self) -> bool:
        """True when /healthz answers 200."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2
            ) as response:
                return int(response.status) == 200
        except OSError:
            return False


def http_get(url: str) -> str:
    """GET a local URL's text ('' on any error)."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` (with at least ``labels``) in a /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
    return total


def log_events(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON log events in a worker log (non-JSON lines are returned as {'raw': line})."""
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            yield {"raw": line}
            continue
        yield event if isinstance(event, dict) else {"raw": line}
