"""The one small HTTP server: ``/metrics``, ``/healthz`` and ``/readyz`` on ``METRICS_PORT``.

aiohttp inside the anyio loop. The only module of the worker that serves HTTP, and the only
one of :mod:`worker.observability` that imports aiohttp, inside the two functions that serve:
`komorebi-worker merge` and every module that counts a metric never pay its start-up time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import structlog
from prometheus_client.exposition import choose_encoder

from worker.limits import SHUTDOWN
from worker.observability.health import HealthState
from worker.observability.metrics import REGISTRY

if TYPE_CHECKING:  # aiohttp is imported by the two functions that serve HTTP
    from aiohttp import web


def _build_app(health: HealthState) -> web.Application:
    from aiohttp import web

    async def metrics(request: web.Request) -> web.Response:
        # Content negotiation: OpenMetrics for a Prometheus that asks for it, text otherwise.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(REGISTRY), headers={"Content-Type": content_type})

    def check(probe: Callable[[], tuple[bool, str]]) -> Any:
        async def handler(request: web.Request) -> web.Response:
            ok, reason = probe()
            return web.Response(text=f"{reason}\n", status=200 if ok else 503)

        return handler

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", check(health.healthz))
    app.router.add_get("/readyz", check(health.readyz))
    return app


async def serve_http(
    port: int,
    health: HealthState,
    *,
    host: str = "0.0.0.0",  # noqa: S104 - the metrics port must be reachable from the scraper
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` until cancelled.

    Reports the bound port through ``task_status`` (so ``port=0`` picks a free one:
    ``port = await group.start(serve_http, 0, health)``). On cancellation the listener is
    closed inside a shielded scope, so the port is free when this returns.
    """
    from aiohttp import web

    from worker.errors import ConfigError

    # No access log: a scrape every few seconds would drown the job events. A short shutdown
    # timeout: a scrape in progress must not hold up the worker's exit.
    runner = web.AppRunner(
        _build_app(health),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN.http_stop,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            # One clear line (exit 2), not a traceback: usually another process on the port.
            raise ConfigError(
                f"METRICS_PORT {port}: cannot listen on {host}:{port} ({error.strerror or error})"
            ) from None
        bound = runner.addresses[0][1] if runner.addresses else port
        structlog.get_logger(__name__).info("http.listening", host=host, port=bound)
        task_status.started(int(bound))
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
