"""AWS clients (aiobotocore) and the one place that turns SDK errors into worker errors.

Endpoint, region and credentials come from the SDK's standard configuration (SPEC §3):
``AWS_ENDPOINT_URL`` is honoured by botocore itself (>= 1.31), credentials by its chain.
``AWS_REGION`` is read here because botocore only looks at ``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from worker.config import Settings
from worker.errors import AwsRejected, AwsUnavailable, ConfigError, WorkerError, one_line
from worker.redaction import redact

# Generous per-request timeouts: a read timeout is per socket read, not per transfer, so long
# streaming downloads are not cut; a silent connection still fails within a minute.
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 60


@dataclass
class AwsClients:
    """The service clients one worker process shares (``ecs`` only on ECS: see
    :func:`open_clients`)."""

    s3: Any
    sqs: Any
    dynamodb: Any
    ecs: Any = None


def pool_size(settings: Settings, service: str) -> int:
    """Connections a client may open at once, sized so no request waits for a free one.

    S3: every job can run two transfers at once (Connect audio + recording, or recording +
    thumbnail), each with up to ``s3_max_concurrency`` parallel requests. SQS and DynamoDB:
    per job a heartbeat and a row update, plus the poll and slack for shutdown clean-up.
    """
    if service == "s3":
        return max(10, settings.worker_concurrency * 2 * settings.s3_max_concurrency)
    return max(10, 2 * settings.worker_concurrency + 4)


def client_config(settings: Settings, service: str = "s3") -> AioConfig:
    """The botocore configuration of the client for ``service``."""
    return AioConfig(
        # total_max_attempts counts the first try (botocore's "max_attempts" would not), which
        # is what AWS_MAX_ATTEMPTS means in every SDK.
        retries={"total_max_attempts": settings.aws_max_attempts, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        max_pool_connections=pool_size(settings, service),
    )


def region_name(session: AioSession) -> str | None:
    """The region from ``AWS_REGION`` (SPEC §3), else the SDK's own resolution."""
    region = os.environ.get("AWS_REGION", "").strip()
    if region:
        return region
    configured = session.get_config_variable("region")
    return str(configured) if configured else None


@asynccontextmanager
async def open_clients(
    settings: Settings, *, session: AioSession | None = None, ecs: bool = False
) -> AsyncIterator[AwsClients]:
    """Open S3, SQS and DynamoDB clients (and ECS with ``ecs``: the deployment check of
    worker.deployment, on ECS only) on one session; closed when the context exits.

    Raises :class:`ConfigError` when no region is configured (botocore would fail later with
    a less helpful message). ``session`` reuses an existing session (its loaded service models
    and credentials); by default a new one is made.
    """
    session = session or get_session()
    region = region_name(session)
    if region is None:
        raise ConfigError("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION)")
    services = ("s3", "sqs", "dynamodb", "ecs") if ecs else ("s3", "sqs", "dynamodb")
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                session.create_client(
                    service, region_name=region, config=client_config(settings, service)
                )
            )
            for service in services
        ]
        yield AwsClients(*clients)


# --- errors ----------------------------------------------------------------------------------

# Everything the SDK or its HTTP layer raises for "the service could not be reached / answered
# badly". TimeoutError covers anyio/asyncio timeouts; ConnectionError covers resets.
AWS_ERRORS: tuple[type[BaseException], ...] = (
    BotoCoreError,
    ClientError,
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
)

# Requests AWS will never accept for this job (not the fleet's fault): permanent.
_REJECTED_CODES = frozenset({"ValidationException", "InvalidObjectState", "EntityTooLarge"})
# Misconfiguration of the fleet (policy, credentials, keys): transient, with its own reason.
_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
    }
)
_MISSING_RESOURCE_CODES = frozenset(
    {
        "NoSuchBucket",
        "ResourceNotFoundException",
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
    }
)
# Service names for connection errors (see translate): one per adapter module.
DYNAMODB = "DynamoDB"
S3 = "S3"
SQS = "SQS"
_URL = re.compile(r"""["']?\b[a-z][a-z0-9+.-]*://[^\s"']+["']?""", re.IGNORECASE)
_MAX_MESSAGE = 300


def error_code(error: BaseException) -> str:
    """The AWS error code of a ``ClientError`` ("" for anything else)."""
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "") or "")
    return ""


def http_status(error: BaseException) -> int | None:
    """The HTTP status of a ``ClientError`` response, when known."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def _scrub(text: str) -> str:
    # URLs can carry presigned query strings or internal endpoints, error messages receipt
    # handles (this text reaches logs, DLQ attributes and the row): never let them out.
    return one_line(_URL.sub("<url>", redact(text)), _MAX_MESSAGE)


def translate(error: BaseException, service: str | None = None) -> WorkerError:
    """Turn an SDK/network error into :class:`AwsUnavailable` (transient) with one line.

    The message is ``"<Operation>: <Code>: <Message>"`` for service errors, and
    ``"<service>: <ErrorType>: <detail>"`` for connection problems (their text names no
    operation, and the endpoint URL is removed, so without ``service`` a DLQ copy saying
    "Could not connect to the endpoint URL: <url>" would not tell which of S3, SQS or DynamoDB
    was down); URLs and signatures are removed.
    Worker errors pass through unchanged. Missing objects/rows are not special-cased here:
    the adapters check for them before calling this.
    """
    if isinstance(error, WorkerError):
        return error
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code") or http_status(error) or "Unknown")
        message = str(info.get("Message") or "").strip()
        operation = getattr(error, "operation_name", None) or "AWS"
        text = _scrub(f"{operation}: {code}: {message}" if message else f"{operation}: {code}")
        if code in _REJECTED_CODES:
            return AwsRejected(text)
        if code in _ACCESS_CODES or code.startswith("KMS."):
            # Still retried (a fixed policy lets the job through), but told apart from an
            # outage on dashboards and in the DLQ.
            return AwsUnavailable(text, reason="aws_access_denied")
        if code in _MISSING_RESOURCE_CODES:
            return AwsUnavailable(text, reason="aws_resource_missing")
        return AwsUnavailable(text)
    detail = str(error).strip() or "no detail"
    prefix = f"{service}: " if service else ""
    return AwsUnavailable(_scrub(f"{prefix}{type(error).__name__}: {detail}"))


def _no_special_case(error: BaseException) -> BaseException | None:
    return None


@contextmanager
def translated(
    special: Callable[[BaseException], BaseException | None] = _no_special_case,
    *,
    service: str | None = None,
) -> Iterator[None]:
    """Re-raise SDK/network errors inside the block as worker errors (:func:`translate`).

    ``special`` sees each SDK error first; an exception it returns is raised instead, without
    the SDK error as its cause (e.g. :class:`worker.errors.ObjectNotFound` for a 404, or
    :class:`worker.errors.ReceiptHandleInvalid`). Worker errors pass through unchanged.
    ``service`` (``DYNAMODB``, ``S3``, ``SQS``) names the service in connection errors.
    """
    try:
        yield
    except WorkerError:
        raise
    except AWS_ERRORS as error:
        mapped = special(error)
        if mapped is not None:
            raise mapped from None
        raise translate(error, service) from error
