"""Gathers the facts ``doctor`` checks (:mod:`worker.doctor`): the thin I/O edge.

Every AWS call is made with the worker's own settings and credentials, and its answer or
error is kept as an :class:`worker.doctor.Outcome` (``Operation: Code: message``), never
raised: a role without a permission gets one clear FAIL line, not a traceback. Probes leave
nothing behind: the input and Connect buckets are only listed and read (HeadObject), the
output bucket gets a small object written and deleted, the table a conditional UpdateItem on
a key that does not exist (its condition fails: the write was allowed, nothing written).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from worker import ffmpeg
from worker.config import Settings
from worker.doctor import (
    BucketFacts,
    Facts,
    Outcome,
    QueueFacts,
    TableFacts,
    ToolFacts,
)
from worker.errors import one_line
from worker.ffmpeg_needs import KINDS
from worker.queue import parse_redrive_policy
from worker.recordings import PARTITION_KEY

PROBE_NAME: Final = "komorebi-doctor-probe"
_TOOL_TIMEOUT_SECONDS: Final = 30
# Codes that say "no such key" for a HeadObject/GetObject: the read itself was allowed.
_NOT_FOUND: Final = frozenset({"404", "NoSuchKey", "NotFound"})
_CONDITION_FAILED: Final = "ConditionalCheckFailedException"


def call(operation: str, function: Callable[..., Any], **kwargs: Any) -> Outcome:
    """Run one SDK call; its answer, or its error as one line."""
    try:
        return Outcome(value=function(**kwargs))
    except ClientError as error:
        info = error.response.get("Error", {})
        code = str(info.get("Code") or "Error")
        message = one_line(str(info.get("Message") or ""), 200)
        text = f"{operation}: {code}" + (f": {message}" if message else "")
        return Outcome(error=text, code=code)
    except (BotoCoreError, OSError) as error:
        return Outcome(error=one_line(f"{operation}: {type(error).__name__}: {error}", 300))


def _attributes(outcome: Outcome) -> Outcome:
    if outcome.ok:
        return Outcome(value=dict(outcome.value.get("Attributes", {})))
    return outcome


def gather_queues(settings: Settings, sqs: Any) -> QueueFacts:
    """The queue's and the DLQ's attributes; the DLQ from DLQ_URL or the RedrivePolicy."""
    queue = _attributes(
        call(
            "GetQueueAttributes",
            sqs.get_queue_attributes,
            QueueUrl=settings.queue_url,
            AttributeNames=["All"],
        )
    )
    dlq_url, source = settings.dlq_url, "DLQ_URL"
    resolved = Outcome()
    if not dlq_url and queue.ok and queue.value.get("RedrivePolicy"):
        source = "RedrivePolicy"
        try:
            policy = parse_redrive_policy(queue.value["RedrivePolicy"])
        except Exception as error:  # noqa: BLE001 - ConfigError: reported as a FAIL line
            resolved = Outcome(error=str(error))
        else:
            resolved = call(
                "GetQueueUrl",
                sqs.get_queue_url,
                QueueName=policy.dlq_name,
                QueueOwnerAWSAccountId=policy.dlq_account,
            )
            dlq_url = str(resolved.value["QueueUrl"]) if resolved.ok else policy.dlq_name
    if not dlq_url:
        resolved = Outcome(error="neither DLQ_URL nor the queue's RedrivePolicy names a DLQ")
    if resolved.ok:
        dlq = _attributes(
            call(
                "GetQueueAttributes",
                sqs.get_queue_attributes,
                QueueUrl=dlq_url,
                AttributeNames=["All"],
            )
        )
    else:
        dlq = resolved
    return QueueFacts(settings.queue_url, queue, dlq_url, source, dlq)


def static_prefix(template: str, instance: str) -> str:
    """The fixed start of a key template (up to its first date/id placeholder) (pure)."""
    return template.replace("{instance}", instance).split("{", 1)[0]


def _read(s3: Any, bucket: str, listing: Outcome, prefix: str) -> tuple[Outcome, bool]:
    """HeadObject of the first listed key, else of a probe key; (outcome, was a probe)."""
    contents = listing.value.get("Contents", []) if listing.ok else []
    key = contents[0]["Key"] if contents else f"{prefix}{PROBE_NAME}-{uuid.uuid4().hex}"
    outcome = call("HeadObject", s3.head_object, Bucket=bucket, Key=key)
    if not outcome.ok and outcome.code in _NOT_FOUND:
        return Outcome(value="allowed (no such key)"), True
    return outcome, not contents


def _write(s3: Any, bucket: str, prefix: str) -> Outcome:
    """A multipart upload of one small part, then aborted: exactly the actions the worker's
    uploads use (s3:PutObject, s3:AbortMultipartUpload; its role has no DeleteObject), and
    nothing is left in the bucket."""
    key = f"{prefix}{PROBE_NAME}/{uuid.uuid4().hex}"
    created = call("CreateMultipartUpload", s3.create_multipart_upload, Bucket=bucket, Key=key)
    if not created.ok:
        return created
    upload_id = created.value["UploadId"]
    part = call(
        "UploadPart",
        s3.upload_part,
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        PartNumber=1,
        Body=b"komorebi doctor probe",
    )
    aborted = call(
        "AbortMultipartUpload",
        s3.abort_multipart_upload,
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
    )
    return part if not part.ok else aborted


def gather_bucket(
    settings: Settings, s3: Any, role: str, bucket: str, template: str
) -> BucketFacts:
    """One bucket's accesses (list + read; write only for ``output``) and protection."""
    prefix = static_prefix(template, settings.connect_instance_alias)
    listing = call("ListObjectsV2", s3.list_objects_v2, Bucket=bucket, Prefix=prefix, MaxKeys=1)
    public = call("GetPublicAccessBlock", s3.get_public_access_block, Bucket=bucket)
    encryption = call("GetBucketEncryption", s3.get_bucket_encryption, Bucket=bucket)
    read, probed = _read(s3, bucket, listing, prefix)
    return BucketFacts(
        role=role,
        name=bucket,
        listing=listing,
        read=read,
        read_probe=probed,
        write=_write(s3, bucket, prefix) if role == "output" else None,
        public_access=Outcome(value=public.value.get("PublicAccessBlockConfiguration"))
        if public.ok
        else public,
        encryption=encryption,
    )


def gather_table(settings: Settings, dynamodb: Any) -> TableFacts:
    """DescribeTable; a GetItem of a probe key (it fails when the key schema is not videoID
    (S) alone, and needs no DescribeTable permission, which the worker's role lacks); and a
    conditional UpdateItem that cannot match (no write happens)."""
    described = call("DescribeTable", dynamodb.describe_table, TableName=settings.table_name)
    if described.ok:
        described = Outcome(value=described.value.get("Table", {}))
    probe_key = {PARTITION_KEY: {"S": f"{PROBE_NAME}-{uuid.uuid4().hex}"}}
    read = call("GetItem", dynamodb.get_item, TableName=settings.table_name, Key=probe_key)
    write = call(
        "UpdateItem",
        dynamodb.update_item,
        TableName=settings.table_name,
        Key=probe_key,
        UpdateExpression="SET #probe = :probe",
        ConditionExpression=f"attribute_exists({PARTITION_KEY})",
        ExpressionAttributeNames={"#probe": PROBE_NAME.replace("-", "_")},
        ExpressionAttributeValues={":probe": {"S": "1"}},
    )
    if (not write.ok and write.code == _CONDITION_FAILED) or write.ok:
        write = Outcome(value="allowed")
    return TableFacts(settings.table_name, described, read, write)


def _listing(tool: str, kind: str) -> Outcome:
    try:
        done = subprocess.run(
            [tool, "-hide_banner", f"-{kind}"],
            capture_output=True,
            text=True,
            timeout=_TOOL_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return Outcome(error=one_line(f"{type(error).__name__}: {error}", 200))
    if done.returncode != 0:
        tail = one_line(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "", 200)
        return Outcome(error=f"exit {done.returncode}: {tail}")
    return Outcome(value=done.stdout)


def gather_tools() -> ToolFacts:
    """Where ffmpeg/ffprobe are (PATH) and what each lists."""
    ffmpeg_path = shutil.which(ffmpeg.FFMPEG)
    ffprobe_path = shutil.which(ffmpeg.FFPROBE)
    listings = {kind: _listing(ffmpeg_path, kind) for kind in KINDS} if ffmpeg_path else {}
    probe = _listing(ffprobe_path, "demuxers") if ffprobe_path else Outcome(error="not found")
    return ToolFacts(ffmpeg_path, ffprobe_path, listings, probe)


def gather_bind(host: str, port: int) -> Outcome:
    """Whether ``host:port`` can be bound now (SO_REUSEADDR, like the metrics server)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1)
    except OSError as error:
        return Outcome(error=one_line(error.strerror or str(error), 200))
    return Outcome(value="free")


def gather(
    settings: Settings, clients: Mapping[str, Any], *, tools: ToolFacts | None = None
) -> Facts:
    """Every fact, with ``clients`` (boto3 ``sqs``, ``s3``, ``dynamodb``); ``tools``: facts
    about ffmpeg already gathered (by default they are gathered here)."""
    s3 = clients["s3"]
    keys = settings.keys
    buckets = (
        gather_bucket(settings, s3, "connect", settings.ac_audio_bucket, keys.connect_audio_prefix),
        gather_bucket(settings, s3, "input", settings.input_bucket, keys.input_key),
        gather_bucket(settings, s3, "output", settings.output_bucket, keys.output_key),
    )
    return Facts(
        queues=gather_queues(settings, clients["sqs"]),
        buckets=buckets,
        table=gather_table(settings, clients["dynamodb"]),
        tools=tools or gather_tools(),
        metrics_bind=gather_bind(settings.metrics_host, settings.metrics_port),
    )
