"""Logging: structlog JSON lines (:func:`configure_logging`), the per-job context
(:func:`job_context`) and the timing of each job stage (:func:`stage`).

:func:`worker.redaction.redact` keeps credentials and presigned URLs out of every log line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TextIO

import structlog

from worker.observability.metrics import STAGE_DURATION
from worker.redaction import redact, redact_value

_QUIET_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3", "aiohttp")
_KEY_ORDER = ("timestamp", "level", "logger", "event")


def _expected_errors_one_line(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """An expected error (WorkerError) becomes ``error``/``reason`` fields, not a traceback."""
    exc_info = event_dict.get("exc_info")
    if exc_info is True:
        exc_info = sys.exc_info()
    error = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    # Imported here: worker.errors is tiny, but keeping observability import-light matters.
    from worker.errors import WorkerError

    if isinstance(error, WorkerError):
        event_dict.pop("exc_info", None)
        event_dict.setdefault("error", str(error))
        event_dict.setdefault("reason", error.reason)
        event_dict.setdefault("error_type", type(error).__name__)
    return event_dict


def _redact_event(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    for key, value in event_dict.items():
        if key not in ("timestamp", "level", "logger") and not key.startswith("_"):
            event_dict[key] = redact_value(value, key)
    return event_dict


def _order_keys(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    # Fixed fields first, so lines read well in a terminal tail or CloudWatch.
    ordered = {key: event_dict.pop(key) for key in _KEY_ORDER if key in event_dict}
    ordered.update(event_dict)
    return ordered


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler configure_logging installed, so re-configuring replaces only it."""


def configure_logging(
    level: str = "INFO",
    fmt: Literal["json", "console"] = "json",
    stream: TextIO | None = None,
) -> None:
    """Set up structlog and stdlib logging to write one format to ``stream`` (stderr).

    ``json``: one JSON object per line with ``timestamp`` (ISO 8601, UTC), ``level``,
    ``logger``, ``event`` and every bound context variable. ``console``: structlog's
    ConsoleRenderer (colours on a TTY). Library loggers (botocore, aiobotocore, ...) go
    through the same renderer at WARNING. Every string value is passed through
    :func:`redact`. Safe to call again (tests): it replaces only its own handler.
    """
    target = sys.stderr if stream is None else stream
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}")

    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests (and `dev`) re-configure, and module-level loggers must follow.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _order_keys,
            _renderer(fmt, target),
        ],
    )
    _install_handler(formatter, target, numeric_level)


def _shared_processors() -> list[structlog.typing.Processor]:
    """What every line goes through, structlog's own and the libraries' stdlib records alike."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
        _expected_errors_one_line,
        structlog.processors.format_exc_info,
        _redact_event,
    ]


def _renderer(fmt: Literal["json", "console"], target: TextIO) -> structlog.typing.Processor:
    if fmt == "console":
        isatty = getattr(target, "isatty", None)
        return structlog.dev.ConsoleRenderer(colors=bool(isatty and isatty()))
    return structlog.processors.JSONRenderer()


def _install_handler(formatter: logging.Formatter, target: TextIO, level: int) -> None:
    """Replace the handler an earlier call installed (only ours) and set the levels."""
    handler = _OurHandler(target)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, level))


@contextmanager
def job_context(*, recording_id: str | None, message_id: str, receive_count: int) -> Iterator[None]:
    """Bind ``recording_id``, ``message_id`` and ``receive_count`` to every log line of a job.

    structlog keeps them in contextvars; each anyio task runs in its own copy of the context,
    so concurrent jobs never see each other's values. ``recording_id`` is left out while it
    is unknown (a message that did not parse).
    """
    bound: dict[str, Any] = {"message_id": message_id, "receive_count": receive_count}
    if recording_id is not None:
        bound["recording_id"] = recording_id
    with structlog.contextvars.bound_contextvars(**bound):
        yield


_stage_log = structlog.get_logger("worker.stage")


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time one job stage: binds ``stage``, logs ``stage.finished`` with ``duration_seconds``.

    Successful stages are observed in ``komorebi_stage_duration_seconds{stage}``. On an
    exception it logs ``stage.failed`` with a redacted one-line ``error`` (and ``reason`` for
    a WorkerError) and re-raises; on cancellation it logs ``stage.cancelled`` and re-raises.
    """
    from worker.errors import WorkerError

    started = time.perf_counter()
    with structlog.contextvars.bound_contextvars(stage=name):
        try:
            yield
        except Exception as error:
            elapsed = time.perf_counter() - started
            fields: dict[str, Any] = {
                "duration_seconds": round(elapsed, 3),
                "error": redact(str(error)) or type(error).__name__,
                "error_type": type(error).__name__,
            }
            if isinstance(error, WorkerError):
                _stage_log.warning("stage.failed", reason=error.reason, **fields)
            else:
                _stage_log.error("stage.failed", **fields)
            raise
        except BaseException:
            # Cancellation (shutdown, timeout) or KeyboardInterrupt: not a failure of the stage.
            elapsed = time.perf_counter() - started
            _stage_log.info("stage.cancelled", duration_seconds=round(elapsed, 3))
            raise
        elapsed = time.perf_counter() - started
        STAGE_DURATION.labels(stage=name).observe(elapsed)
        _stage_log.info("stage.finished", duration_seconds=round(elapsed, 3))
