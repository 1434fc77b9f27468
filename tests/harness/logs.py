"""The worker's structured logs, captured in-process: a JSON buffer, its lines, and the fake
credentials whose appearance anywhere in a log is a leak."""

from __future__ import annotations

import io
import json
from typing import Any

from worker.observability import configure_logging

# Recognisable fake credentials: a log that holds any of SECRETS leaked one.
ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
SECRETS = (ACCESS_KEY_ID, SECRET_KEY, SIGNATURE, "wJalrXUtnFEMI")


def json_log_buffer() -> io.StringIO:
    """configure_logging (JSON, DEBUG) into a fresh buffer (use as a fixture)."""
    buffer = io.StringIO()
    configure_logging("DEBUG", "json", buffer)
    return buffer


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    """Every line is one JSON object (a non-JSON line fails the test)."""
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def assert_no_secrets(buffer: io.StringIO) -> None:
    """None of :data:`SECRETS` in what was logged."""
    text = buffer.getvalue()
    for secret in SECRETS:
        assert secret not in text, f"{secret} leaked into the logs"
