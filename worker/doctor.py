"""``doctor``: does this environment give a job what it needs? (issue 16)

Pure checks over gathered facts (:mod:`worker.doctor_facts` gathers them with the worker's
own settings and credentials). Each check is one line, ``ok``, ``warn`` or ``FAIL``, a name
and a detail; any FAIL makes the command exit 1. Warnings are things a job survives but an
operator should know: a bucket without Block Public Access or default encryption, a queue
without SSE, a queue visibility different from ``VISIBILITY_TIMEOUT``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from worker import ffmpeg_needs
from worker.config import Settings
from worker.provisioning import TABLE_PARTITION_KEY

Status = Literal["ok", "warn", "FAIL"]
# A maxReceiveCount above this keeps a failing message retrying for days (with backoff).
MAX_SANE_RECEIVE_COUNT: Final = 50
# Error codes of a refused call.
_DENIED: Final = frozenset({"AccessDenied", "AccessDeniedException", "403"})
_PUBLIC_ACCESS_FLAGS: Final = (
    "BlockPublicAcls",
    "IgnorePublicAcls",
    "BlockPublicPolicy",
    "RestrictPublicBuckets",
)


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    status: Status
    name: str
    detail: str

    def line(self) -> str:
        """``ok    name: detail``."""
        return f"{self.status:<4}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class Outcome:
    """One AWS call's answer (``value``) or its one-line error (``error``, ``code``)."""

    value: Any = None
    error: str | None = None
    code: str | None = None

    @property
    def ok(self) -> bool:
        """The call succeeded."""
        return self.error is None


@dataclass(frozen=True)
class QueueFacts:
    """The job queue and the DLQ as the worker would find them."""

    queue_url: str | None
    queue: Outcome  # GetQueueAttributes(All).Attributes
    dlq_url: str | None
    dlq_from: str  # "DLQ_URL" or "RedrivePolicy"
    dlq: Outcome  # GetQueueAttributes(All).Attributes, or how resolving the DLQ failed


@dataclass(frozen=True)
class BucketFacts:
    """One bucket: the accesses its role needs, and its protection."""

    role: str  # connect, input, output
    name: str
    listing: Outcome  # ListObjectsV2 under the role's prefix
    read: Outcome  # HeadObject of a listed key or a probe key (404 = allowed)
    write: Outcome | None  # a one-part multipart upload, aborted (output bucket only)
    public_access: Outcome  # GetPublicAccessBlock configuration
    encryption: Outcome  # GetBucketEncryption configuration
    read_probe: bool = False  # ``read`` was on a probe key (nothing listed to read)


@dataclass(frozen=True)
class TableFacts:
    """The Recording table: its description and a harmless conditional write."""

    name: str
    describe: Outcome  # DescribeTable.Table
    read: Outcome  # GetItem of a probe key {videoID: S}: refused when the key schema differs
    write: Outcome  # UpdateItem on a probe key that fails its condition (= allowed)


@dataclass(frozen=True)
class ToolFacts:
    """ffmpeg/ffprobe: where they are and what they list."""

    ffmpeg: str | None
    ffprobe: str | None
    listings: Mapping[str, Outcome] = field(default_factory=dict)  # kind -> text
    ffprobe_demuxers: Outcome = field(default_factory=Outcome)


@dataclass(frozen=True)
class Facts:
    """Everything the checks look at."""

    queues: QueueFacts
    buckets: tuple[BucketFacts, ...]
    table: TableFacts
    tools: ToolFacts
    metrics_bind: Outcome  # binding METRICS_HOST:METRICS_PORT


def _int(attributes: Mapping[str, Any], name: str) -> int | None:
    try:
        return int(attributes[name])
    except (KeyError, TypeError, ValueError):
        return None


def _encrypted(attributes: Mapping[str, Any]) -> bool:
    return str(attributes.get("SqsManagedSseEnabled", "")).lower() == "true" or bool(
        attributes.get("KmsMasterKeyId")
    )


def check_queues(settings: Settings, facts: QueueFacts) -> list[Check]:
    """Queue and DLQ exist; the redrive policy targets the DLQ; visibility, retention and
    maxReceiveCount are consistent; SSE (warn)."""
    if not facts.queue.ok:
        return [Check("FAIL", "queue", f"{facts.queue_url}: {facts.queue.error}")]
    queue: Mapping[str, Any] = facts.queue.value
    checks = [
        Check("ok", "queue", f"{facts.queue_url} exists"),
        _sse("queue", queue),
        _visibility_check(settings, queue),
    ]
    policy, policy_checks = _redrive_policy(settings, queue)
    checks += policy_checks
    if not facts.dlq.ok:
        checks.append(Check("FAIL", "dlq", f"{facts.dlq_url or '?'}: {facts.dlq.error}"))
        return checks
    dlq: Mapping[str, Any] = facts.dlq.value
    checks.append(Check("ok", "dlq", f"{facts.dlq_url} exists (from {facts.dlq_from})"))
    checks.append(_sse("dlq", dlq))
    if policy is not None:
        checks += _redrive_checks(policy, dlq)
    return checks + _retention_checks(queue, dlq)


def _visibility_check(settings: Settings, queue: Mapping[str, Any]) -> Check:
    visibility = _int(queue, "VisibilityTimeout")
    if visibility == settings.visibility_timeout:
        return Check("ok", "queue.visibility", f"{visibility} s = VISIBILITY_TIMEOUT")
    return Check(
        "warn",
        "queue.visibility",
        f"queue default {visibility} s, VISIBILITY_TIMEOUT {settings.visibility_timeout}"
        " s (the worker asks for its own on every receive; other consumers do not)",
    )


def _redrive_policy(
    settings: Settings, queue: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, list[Check]]:
    """The queue's parsed RedrivePolicy (None when absent or malformed) and what is wrong
    with it here (the DLQ side is checked by :func:`_redrive_checks`)."""
    policy_text = queue.get("RedrivePolicy")
    if policy_text:
        try:
            return json.loads(policy_text), []
        except ValueError:
            return None, [Check("FAIL", "queue.redrive", "RedrivePolicy is not valid JSON")]
    status: Status = "warn" if settings.dlq_url else "FAIL"
    return None, [
        Check(
            status,
            "queue.redrive",
            "no RedrivePolicy: transient failures retry until the retention period ends"
            + ("" if settings.dlq_url else "; and DLQ_URL is not set: no DLQ at all"),
        )
    ]


def _retention_checks(queue: Mapping[str, Any], dlq: Mapping[str, Any]) -> list[Check]:
    queue_retention = _int(queue, "MessageRetentionPeriod")
    dlq_retention = _int(dlq, "MessageRetentionPeriod")
    if queue_retention is None or dlq_retention is None:
        return []
    if dlq_retention > queue_retention:
        return [Check("ok", "dlq.retention", f"{dlq_retention} s > queue's {queue_retention} s")]
    return [
        Check(
            "FAIL",
            "dlq.retention",
            f"{dlq_retention} s <= queue's {queue_retention} s: a dead letter expires by "
            "its first send time, so it can vanish from the DLQ soon after it arrives",
        )
    ]


def _redrive_checks(policy: Mapping[str, Any], dlq: Mapping[str, Any]) -> list[Check]:
    checks = []
    target = str(policy.get("deadLetterTargetArn", ""))
    dlq_arn = str(dlq.get("QueueArn", ""))
    if target and target == dlq_arn:
        checks.append(Check("ok", "queue.redrive", f"RedrivePolicy targets the DLQ {dlq_arn}"))
    else:
        checks.append(
            Check(
                "FAIL",
                "queue.redrive",
                f"RedrivePolicy targets {target or 'nothing'}, not the DLQ {dlq_arn}",
            )
        )
    try:
        count = int(policy.get("maxReceiveCount", 0))
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        checks.append(Check("FAIL", "queue.max_receive_count", "maxReceiveCount is not >= 1"))
    elif count == 1:
        checks.append(
            Check(
                "warn",
                "queue.max_receive_count",
                "1: every transient failure (Connect audio not uploaded yet) dead-letters at once",
            )
        )
    elif count > MAX_SANE_RECEIVE_COUNT:
        checks.append(
            Check("warn", "queue.max_receive_count", f"{count}: a failing job retries for days")
        )
    else:
        checks.append(Check("ok", "queue.max_receive_count", str(count)))
    return checks


def _sse(name: str, attributes: Mapping[str, Any]) -> Check:
    if _encrypted(attributes):
        return Check("ok", f"{name}.encryption", "server-side encryption on")
    return Check("warn", f"{name}.encryption", "no server-side encryption (SSE-SQS or KMS)")


def check_bucket(facts: BucketFacts) -> list[Check]:
    """Reachable with the role's accesses; Block Public Access and default encryption (warn)."""
    name = f"bucket.{facts.role}"
    needed = [("list", facts.listing), ("get", facts.read)]
    if facts.write is not None:
        needed.append(("put", facts.write))
    unsure = (
        facts.read_probe and facts.listing.ok and facts.read.code in _DENIED and facts.write is None
    )
    failed = [
        f"{what}: {outcome.error}"
        for what, outcome in needed
        if not outcome.ok and not (unsure and outcome is facts.read)
    ]
    if failed:
        checks = [Check("FAIL", name, f"{facts.name}: " + "; ".join(failed))]
    elif unsure:
        # A missing key answers 403 unless ListBucket is allowed without a prefix condition
        # (the template's Connect grant has one): with nothing listed, GetObject is unknown.
        detail = f"{facts.name}: list; get not verified (nothing under the prefix to read)"
        checks = [Check("warn", name, detail)]
    else:
        allowed = ", ".join(what for what, _ in needed)
        checks = [Check("ok", name, f"{facts.name}: {allowed}")]
    block = facts.public_access
    if block.ok and all(dict(block.value or {}).get(flag) for flag in _PUBLIC_ACCESS_FLAGS):
        checks.append(Check("ok", f"{name}.public_access", "Block Public Access on"))
    else:
        why = block.error or "not every Block Public Access setting is on"
        checks.append(Check("warn", f"{name}.public_access", why))
    if facts.encryption.ok:
        checks.append(Check("ok", f"{name}.encryption", "default encryption on"))
    else:
        checks.append(Check("warn", f"{name}.encryption", f"{facts.encryption.error}"))
    return checks


def check_table(facts: TableFacts) -> list[Check]:
    """The table exists with partition key videoID (S) and no sort key; the worker may write."""
    if not facts.describe.ok and facts.describe.code in _DENIED:
        # The worker's role may read and update items but not describe the table: the
        # GetItem probe tells whether the key is videoID (S) alone.
        if not facts.read.ok:
            return [Check("FAIL", "table", f"{facts.name}: {facts.read.error}")]
        ok = Check("ok", "table", f"{facts.name}: GetItem by {TABLE_PARTITION_KEY} (S)")
        return [ok, _table_write(facts)]
    if not facts.describe.ok:
        return [Check("FAIL", "table", f"{facts.name}: {facts.describe.error}")]
    table: Mapping[str, Any] = facts.describe.value
    keys = [(k.get("AttributeName"), k.get("KeyType")) for k in table.get("KeySchema", [])]
    types = {
        d.get("AttributeName"): d.get("AttributeType")
        for d in table.get("AttributeDefinitions", [])
    }
    expected = [(TABLE_PARTITION_KEY, "HASH")]
    if keys != expected or types.get(TABLE_PARTITION_KEY) != "S":
        shown = ", ".join(f"{name} ({types.get(name)}, {kind})" for name, kind in keys)
        return [
            Check(
                "FAIL",
                "table",
                f"{facts.name}: key {shown}; expected {TABLE_PARTITION_KEY} (S, HASH)",
            )
        ]
    if not facts.read.ok:
        return [Check("FAIL", "table", f"{facts.name}: {facts.read.error}")]
    ok = Check("ok", "table", f"{facts.name}: key {TABLE_PARTITION_KEY} (S), GetItem")
    return [ok, _table_write(facts)]


def _table_write(facts: TableFacts) -> Check:
    if facts.write.ok:
        return Check("ok", "table.write", "UpdateItem allowed")
    return Check("FAIL", "table.write", f"{facts.write.error}")


def check_tools(facts: ToolFacts, needs: ffmpeg_needs.FfmpegNeeds) -> list[Check]:
    """ffmpeg and ffprobe present, with every component a job uses."""
    checks = []
    for tool, path in (("ffmpeg", facts.ffmpeg), ("ffprobe", facts.ffprobe)):
        if path is None:
            checks.append(Check("FAIL", tool, "not found on PATH"))
        else:
            checks.append(Check("ok", tool, path))
    if facts.ffmpeg is not None:
        for kind in ffmpeg_needs.KINDS:
            listing = facts.listings.get(kind, Outcome(error="not listed"))
            checks.append(_components(f"ffmpeg.{kind}", needs.of(kind), kind, listing))
    if facts.ffprobe is not None:
        checks.append(
            _components("ffprobe.demuxers", needs.demuxers, "demuxers", facts.ffprobe_demuxers)
        )
    return checks


def _components(name: str, needed: frozenset[str], kind: str, listing: Outcome) -> Check:
    if not listing.ok:
        return Check("FAIL", name, f"cannot list: {listing.error}")
    lacking = ffmpeg_needs.missing(needed, ffmpeg_needs.parse_listing(kind, str(listing.value)))
    if lacking:
        return Check("FAIL", name, f"missing {', '.join(lacking)}")
    return Check("ok", name, ", ".join(sorted(needed)))


def check_metrics_port(settings: Settings, bind: Outcome) -> Check:
    """METRICS_PORT can be bound (the service's /metrics, /healthz, /readyz)."""
    where = f"{settings.metrics_host}:{settings.metrics_port}"
    if bind.ok:
        return Check("ok", "metrics_port", f"{where} free")
    return Check("FAIL", "metrics_port", f"{where}: {bind.error}")


def run_checks(settings: Settings, facts: Facts, needs: ffmpeg_needs.FfmpegNeeds) -> list[Check]:
    """Every check, in report order (pure)."""
    checks = check_queues(settings, facts.queues)
    for bucket in facts.buckets:
        checks += check_bucket(bucket)
    checks += check_table(facts.table)
    checks += check_tools(facts.tools, needs)
    checks.append(check_metrics_port(settings, facts.metrics_bind))
    return checks


def failed(checks: list[Check]) -> bool:
    """Whether any check failed (exit 1)."""
    return any(check.status == "FAIL" for check in checks)
