"""Shared parts of the hostile-input corpus, fault injection and soak tests.

- media makers: tiny valid recordings and Connect WAVs (real ffmpeg), and hostile files
  (truncated containers, images, playlists and concat scripts disguised as ``.mp4``, headers
  that lie about the duration);
- :class:`World`: seeds rows, objects and messages on the emulator (boto3, synchronous) and
  reads back queue, DLQ, table and output bucket;
- :func:`hostile_env`: the worker environment of these runs (the process is
  :class:`tests.harness.worker_harness.WorkerProcess`);
- checks: the small contact's output by content (:func:`small_contact_problems`: decoded
  frames and tones, :mod:`tests.harness.media_tools`), leak scanning (local file content,
  credentials, URLs, signatures).
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.harness import media_tools
from tests.harness.fixtures_aws import CONNECT_ALIAS, AwsEnv
from tests.harness.worker_harness import worker_env

# Copies of ../shared/fixtures kept in the repo, so a checkout anywhere has them.
FIXTURES = Path(__file__).resolve().parents[1] / "data"

# Credentials the worker runs with: distinctive, so a leak anywhere is unmistakable.
SECRET_KEY = "hostileSecretKey0000DoNotLog0000AbCdEfGh"
ACCESS_KEY = "AKIAHOSTILETESTKEY01"
PASSWD_MARKERS = ("root:x:0:0", "/bin/bash", "daemon:x:")
SIGNATURE_MARKERS = ("X-Amz-Signature", "Signature=", "AWS4-HMAC-SHA256", "X-Amz-Credential")
_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)

CREATION_DATE = "2026-11-27 10:00:00"
AGENT = "agent-7"

# The small contact of the hostile, fault and soak runs: a 2 s recording with a 1 kHz tone and
# a 1.5 s Connect WAV (440 Hz customer, 660 Hz agent) whose call ends 1 s into the recording.
SMALL_RECORDING_SECONDS = 2.0
SMALL_RECORDING_TONE = 1000
SMALL_CONNECT_SECONDS = 1.5
SMALL_CONNECT_TONES = (440, 660)
SMALL_CALL_END = 1.0


# --- media makers ----------------------------------------------------------------------------


def make_recording(
    path: Path,
    seconds: float = SMALL_RECORDING_SECONDS,
    tone: int = SMALL_RECORDING_TONE,
    audio: bool = True,
) -> Path:
    """A tiny H.264 (+AAC tone) MP4 with moov at the end (like a non-faststart writer)."""
    return media_tools.make_recording(
        path,
        duration=seconds,
        tone=tone,
        audio_codec="aac" if audio else None,
        fps=10,
        video_args=("-preset", "ultrafast", "-g", "10"),
    )


def make_webm(
    path: Path, seconds: float = SMALL_RECORDING_SECONDS, tone: int = SMALL_RECORDING_TONE
) -> Path:
    """A tiny VP8 + Opus WebM (ffmpeg writes a Duration element in its header)."""
    media_tools.ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=size=160x120:rate=10:d={seconds}",
        "-f", "lavfi", "-i", f"sine=f={tone}:d={seconds}:sample_rate=48000",
        "-c:v", "libvpx", "-deadline", "realtime", "-b:v", "200k", "-c:a", "libopus",
        "-t", str(seconds), str(path),
    )  # fmt: skip
    return path


def make_connect_wav(
    path: Path,
    seconds: float = SMALL_CONNECT_SECONDS,
    left: int = SMALL_CONNECT_TONES[0],
    right: int = SMALL_CONNECT_TONES[1],
) -> Path:
    """A Connect-shaped WAV: pcm_s16le, 8000 Hz, customer left, agent right."""
    return media_tools.make_tone_wav(path, [(seconds, [left, right])])


def make_small_contact(folder: Path) -> dict[str, Path]:
    """The small contact's files in ``folder``: ``recording`` (MP4) and ``connect`` (WAV)."""
    return {
        "recording": make_recording(folder / "small.mp4"),
        "connect": make_connect_wav(folder / "small.wav"),
    }


def make_audio_only(path: Path, seconds: float = 2.0) -> Path:
    """An audio-only MP4 (AAC), as a screen recorder without video would never write."""
    media_tools.ffmpeg("-f", "lavfi", "-i", f"sine=f=1000:d={seconds}", "-c:a", "aac", str(path))
    return path


def make_png(path: Path) -> Path:
    """A small PNG image."""
    media_tools.ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64", "-frames:v", "1", str(path))
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
    data = media_tools.ffprobe_json(path)
    codecs: dict[str, str] = {}
    for stream in data.get("streams", []):  # type: ignore[attr-defined]
        codecs.setdefault(stream.get("codec_type", ""), stream.get("codec_name", ""))
    return Probed(media_tools.probe_duration(path), codecs.get("video"), codecs.get("audio"))


def small_contact_problems(output: Path, recording: Path) -> list[str]:
    """:func:`~tests.harness.media_tools.unified_output_problems` for the small contact:
    what is wrong with ``output`` as the merge of ``recording`` (or a file with its frames and
    tone) with the small Connect WAV, its call ending at :data:`SMALL_CALL_END`."""
    return media_tools.unified_output_problems(
        output,
        recording,
        call_end=SMALL_CALL_END,
        connect_seconds=SMALL_CONNECT_SECONDS,
        connect_tones=SMALL_CONNECT_TONES,
        recording_tone=SMALL_RECORDING_TONE,
    )


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


# --- worker processes ------------------------------------------------------------------------


def hostile_env(aws: AwsEnv, scratch: Path, **overrides: str) -> dict[str, str]:
    """:func:`worker_env` for the hostile, fault and soak runs: fast retries, short visibility
    and shutdown, bounded ffmpeg and AWS retries, distinctive credentials (a leak anywhere is
    unmistakable)."""
    return worker_env(
        aws,
        scratch,
        backoff=(0.2, 1.0),
        **{
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "VISIBILITY_TIMEOUT": "20",
            "SHUTDOWN_GRACE_SECONDS": "10",
            "FFMPEG_TIMEOUT_BASE_SECONDS": "30",
            "AWS_MAX_ATTEMPTS": "5",
            **overrides,
        },
    )


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
