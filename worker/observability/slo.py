"""End-to-end latency as the customer feels it (issue 17), on the one metrics registry.

From the message's send (the call end) to a worker's receive (``komorebi_queue_wait_seconds``)
and to the row being DONE (``komorebi_message_to_done_seconds``). ``SLO_SECONDS`` is one of the
bucket bounds, so "DONE within 30 minutes" is read exactly from the buckets
(infra/prometheus/alerts.yml).
"""

from __future__ import annotations

from prometheus_client import Histogram

from worker.observability.metrics import REGISTRY

# Seconds (an idle fleet) to hours (a backlog, retries while the Connect recording is late).
# SLO_SECONDS is one of the bounds, so "DONE within 30 minutes" is read exactly from the
# buckets (infra/prometheus/alerts.yml).
SLO_SECONDS = 1800
E2E_BUCKETS = (
    0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1200,
    SLO_SECONDS, 2700, 3600, 7200, 14400, 21600,
)  # fmt: skip

QUEUE_WAIT = Histogram(
    "komorebi_queue_wait_seconds",
    "Receive time minus the message's SentTimestamp, on every receive; delivery=first for "
    "the first receive, repeat for a retry (SQS keeps SentTimestamp, so it includes the backoff).",
    ["delivery"],
    buckets=E2E_BUCKETS,
    registry=REGISTRY,
)
MESSAGE_TO_DONE = Histogram(
    "komorebi_message_to_done_seconds",
    "Row DONE time minus the message's first send (SentTimestamp): every retry included.",
    buckets=E2E_BUCKETS,
    registry=REGISTRY,
)
# The `delivery` label of QUEUE_WAIT: the message's first receive, or a later one.
DELIVERY_FIRST = "first"
DELIVERY_REPEAT = "repeat"

# Both deliveries exist from the first scrape (at 0), like every job outcome.
for _delivery in (DELIVERY_FIRST, DELIVERY_REPEAT):
    QUEUE_WAIT.labels(delivery=_delivery)


def seconds_since_sent(sent_timestamp_ms: int | None, now: float) -> float | None:
    """``now`` (Unix seconds) minus SQS's ``SentTimestamp`` (Unix ms); None without one.

    Never negative: SQS stamps with its clock, the task reads its own (both NTP-synced, but a
    few ms apart), and a histogram cannot take a negative observation.
    """
    if sent_timestamp_ms is None:
        return None
    return max(0.0, now - sent_timestamp_ms / 1000.0)


def record_receive(sent_timestamp_ms: int | None, receive_count: int, now: float) -> None:
    """Observe one received message's queue wait (``komorebi_queue_wait_seconds``).

    Called by the consumer for every message a receive returns, with the wall time of that
    receive. ``receive_count`` > 1 is a ``repeat`` delivery (a retry, a released or lost
    delivery): its wait counts from the first send, so it includes the backoff.
    """
    waited = seconds_since_sent(sent_timestamp_ms, now)
    if waited is None:
        return
    delivery = DELIVERY_FIRST if receive_count <= 1 else DELIVERY_REPEAT
    QUEUE_WAIT.labels(delivery=delivery).observe(waited)


def record_done(sent_timestamp_ms: int | None, now: float) -> None:
    """Observe a message whose recording is DONE (``komorebi_message_to_done_seconds``).

    ``now`` is the wall time the row became DONE. SQS keeps a message's ``SentTimestamp``
    through every receive and visibility change, so this counts from the first send and
    includes every retry; a redriven or re-enqueued message is a new send (docs/operating.md).
    """
    elapsed = seconds_since_sent(sent_timestamp_ms, now)
    if elapsed is not None:
        MESSAGE_TO_DONE.observe(elapsed)
