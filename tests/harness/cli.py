"""The ``komorebi-worker`` console script run as a process, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("komorebi-worker")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``komorebi-worker ARGS`` with only PATH, one AWS attempt and ``env``."""
    full_env = {"PATH": "/usr/bin:/bin", "AWS_MAX_ATTEMPTS": "1", **env}
    return subprocess.run(
        [str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=60
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """Exit ``code`` with exactly one ``komorebi-worker: ...`` line on stderr; that line."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("komorebi-worker: ")
    return lines[0]
