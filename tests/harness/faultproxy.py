"""A fault-injecting TCP proxy for the AWS emulator (tests and the soak).

The worker's ``AWS_ENDPOINT_URL`` points at the proxy; the proxy forwards to the moto server
and, for a seeded random share of HTTP requests, injects one of:

- ``reset``: the request is swallowed and the connection is reset (RST, not FIN), as a load
  balancer or a crashed peer does;
- ``delay``: the request is held for ``delay_seconds`` before it is forwarded;
- ``drop``: a black hole — the request is swallowed and nothing is ever answered; the
  connection stays open until the client gives up (its read timeout fires) or, when
  ``drop_hold_seconds`` is set, until the proxy resets it after that long;
- ``cut``: the request is forwarded, the response is cut half-way through the body of its
  first chunk (reset after the headers), as when a download dies half-way.

Decisions are made per HTTP request (a keep-alive connection carries many), classified by
service (``s3``, ``sqs``, ``dynamodb``) and operation from the request's first bytes, so a plan
can target services and spare operations (an SQS long poll is never black-holed: that would
only test the read timeout's length). Decisions come from ``random.Random(seed)``, so a run is
reproducible up to thread scheduling. :attr:`FaultProxy.counts` says what was injected.

Threaded (two threads per connection): simple, and fast enough for the small objects the
tests move. Binds 127.0.0.1 on a free port; :meth:`FaultProxy.stop` closes everything.
"""

from __future__ import annotations

import collections
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

MODES = ("reset", "delay", "drop", "cut")
_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ")
_TARGET = re.compile(rb"(?im)^x-amz-target:\s*([A-Za-z0-9_]+)\.([A-Za-z0-9]+)")
_QUERY_ACTION = re.compile(rb"Action=([A-Za-z]+)")


@dataclass
class FaultPlan:
    """Probabilities per request of each fault, and which requests are eligible."""

    reset: float = 0.0
    delay: float = 0.0
    drop: float = 0.0
    cut: float = 0.0
    delay_seconds: float = 0.3
    drop_hold_seconds: float | None = None
    services: frozenset[str] = frozenset({"s3", "sqs", "dynamodb"})
    # Operations never faulted (e.g. DeleteMessage, to keep a test about something else).
    spared_operations: frozenset[str] = frozenset()
    # Operations never black-holed: a long poll that hangs only measures the read timeout.
    undroppable_operations: frozenset[str] = frozenset({"ReceiveMessage"})
    max_faults: int | None = None

    def __post_init__(self) -> None:
        total = self.reset + self.delay + self.drop + self.cut
        if not 0.0 <= total <= 1.0:
            raise ValueError("fault probabilities must add up to at most 1")


@dataclass(frozen=True)
class RequestInfo:
    """What the proxy could tell about one HTTP request from its first bytes."""

    service: str
    operation: str
    method: str


def classify(head: bytes) -> RequestInfo:
    """Service and operation of an HTTP request, from its first chunk (headers)."""
    method = head.split(b" ", 1)[0].decode("ascii", "replace")
    target = _TARGET.search(head)
    if target:
        prefix, operation = target.group(1).decode(), target.group(2).decode()
        if prefix.startswith("AmazonSQS"):
            return RequestInfo("sqs", operation, method)
        if prefix.startswith("DynamoDB"):
            return RequestInfo("dynamodb", operation, method)
        return RequestInfo(prefix.lower(), operation, method)
    action = _QUERY_ACTION.search(head)
    if action and b"x-www-form-urlencoded" in head.lower():
        return RequestInfo("sqs", action.group(1).decode(), method)
    return RequestInfo("s3", method, method)


@dataclass(eq=False)
class _Connection:
    client: socket.socket
    upstream: socket.socket
    # True when the next client bytes start a new request (nothing forwarded yet, or the
    # upstream has answered since the last request).
    at_request_start: bool = True
    cut_after: int | None = None
    dropped: bool = False
    closed: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (``host:port`` or ``http://...``)."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None, *, seed: int = 0) -> None:
        hostport = upstream.split("://", 1)[-1].rstrip("/")
        host, _, port = hostport.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port))
        self.plan = plan or FaultPlan()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.by_service: collections.Counter[tuple[str, str]] = collections.Counter()
        self.requests: collections.Counter[str] = collections.Counter()
        # Requests by (service, operation): a test can wait for one to be under way.
        self.operations: collections.Counter[tuple[str, str]] = collections.Counter()
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: set[_Connection] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)

    @property
    def endpoint(self) -> str:
        """The URL to give the worker as ``AWS_ENDPOINT_URL``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults(self) -> int:
        """Total faults injected so far."""
        with self._lock:
            return sum(self.counts.values())

    def start(self) -> FaultProxy:
        """Start accepting connections (returns self)."""
        self._thread.start()
        return self

    def set_plan(self, plan: FaultPlan) -> None:
        """Change the faults for the requests that follow (e.g. none while seeding data)."""
        with self._lock:
            self.plan = plan

    def seen(self, service: str, operation: str) -> int:
        """How many ``operation`` requests to ``service`` have started through the proxy."""
        with self._lock:
            return self.operations[(service, operation)]

    def summary(self) -> dict[str, object]:
        """Counts for reports: faults by mode and by (service, mode), requests by service."""
        with self._lock:
            return {
                "faults": dict(self.counts),
                "faults_by_service": {f"{s}:{m}": n for (s, m), n in self.by_service.items()},
                "requests": dict(self.requests),
                "connections": self.connections,
            }

    def stop(self) -> None:
        """Stop accepting, close every open connection, join the accept thread."""
        self._stopping.set()
        _close(self._listener)  # shutdown() wakes the thread blocked in accept()
        with self._lock:
            open_now = list(self._open)
        for conn in open_now:
            _close(conn.client)
            _close(conn.upstream)
            conn.closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(client, upstream)
            with self._lock:
                self.connections += 1
                self._open.add(conn)
            threading.Thread(target=self._client_to_upstream, args=(conn,), daemon=True).start()
            threading.Thread(target=self._upstream_to_client, args=(conn,), daemon=True).start()

    def _decide(self, info: RequestInfo) -> str | None:
        with self._lock:
            self.requests[info.service] += 1
            self.operations[(info.service, info.operation)] += 1
            plan = self.plan
            roll = self._random.random()
            if info.service not in plan.services or info.operation in plan.spared_operations:
                return None
            if plan.max_faults is not None and sum(self.counts.values()) >= plan.max_faults:
                return None
            edge = 0.0
            chosen: str | None = None
            for mode in MODES:
                edge += getattr(plan, mode)
                if roll < edge:
                    chosen = mode
                    break
            if chosen == "drop" and info.operation in plan.undroppable_operations:
                chosen = "reset"
            if chosen is not None:
                self.counts[chosen] += 1
                self.by_service[(info.service, chosen)] += 1
            return chosen

    def _finish(self, conn: _Connection, *, reset: bool) -> None:
        if reset:
            _reset(conn.client)
        else:
            _close(conn.client)
        _close(conn.upstream)
        conn.closed.set()
        with self._lock:
            self._open.discard(conn)

    def _client_to_upstream(self, conn: _Connection) -> None:
        try:
            while True:
                data = conn.client.recv(65536)
                if not data:
                    break
                if conn.dropped:
                    continue  # the black hole swallows everything
                if conn.at_request_start and data.startswith(_METHODS):
                    conn.at_request_start = False
                    fault = self._decide(classify(data))
                    if fault == "reset":
                        self._finish(conn, reset=True)
                        return
                    if fault == "drop":
                        conn.dropped = True
                        hold = self.plan.drop_hold_seconds
                        if hold is not None:
                            threading.Thread(
                                target=self._reset_later, args=(conn, hold), daemon=True
                            ).start()
                        continue
                    if fault == "delay":
                        time.sleep(self.plan.delay_seconds)
                    if fault == "cut":
                        conn.cut_after = 0
                conn.upstream.sendall(data)
        except OSError:
            pass
        self._finish(conn, reset=False)

    def _upstream_to_client(self, conn: _Connection) -> None:
        try:
            while True:
                data = conn.upstream.recv(65536)
                if not data:
                    break
                if conn.dropped:
                    continue
                conn.at_request_start = True
                if conn.cut_after is not None:
                    # Cut inside the body, never inside the headers: a response cut before its
                    # Content-Length arrived would look complete to any HTTP client.
                    head_end = data.find(b"\r\n\r\n")
                    if head_end < 0:
                        conn.client.sendall(data)
                        continue
                    body = len(data) - head_end - 4
                    conn.client.sendall(data[: head_end + 4 + body // 2])
                    self._finish(conn, reset=True)
                    return
                conn.client.sendall(data)
        except OSError:
            pass
        if conn.dropped:
            conn.closed.wait()  # the black hole keeps the client's socket open
            return
        self._finish(conn, reset=False)

    def _reset_later(self, conn: _Connection, seconds: float) -> None:
        if not conn.closed.wait(seconds):
            self._finish(conn, reset=True)


def _reset(sock: socket.socket) -> None:
    """Close with RST: SO_LINGER on with a zero timeout.

    ``shutdown(SHUT_RD)`` first wakes a thread blocked in ``recv`` on this socket (a bare
    ``close`` from another thread would not, and the RST would wait for that ``recv``).
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    """Close with FIN, waking any thread blocked on the socket."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


@contextmanager
def running_proxy(
    upstream: str, plan: FaultPlan | None = None, *, seed: int = 0
) -> Iterator[FaultProxy]:
    """A started proxy, stopped on exit."""
    proxy = FaultProxy(upstream, plan, seed=seed).start()
    try:
        yield proxy
    finally:
        proxy.stop()
