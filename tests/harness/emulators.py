"""A second, independent AWS implementation for the end-to-end tests: LocalStack for SQS and
S3, dynalite for DynamoDB, both as host processes on 127.0.0.1 (no Docker).

``make setup`` installs them into ``.cache/emulators`` (``.ci/emulators/install``):
LocalStack (``localstack-core``, pinned as docker-compose.yml pins the image) in its own
Python 3.13 virtualenv, dynalite with npm from ``.ci/emulators/package-lock.json``.
LocalStack's own DynamoDB needs Java and a download, so DynamoDB is dynalite — an
implementation that, unlike moto, serialises conditional writes as DynamoDB does.

Each server gets a free port, is started by :func:`start_localstack` / :func:`start_dynalite`
and stopped by its PID (:meth:`EmulatorProcess.stop`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.polling import wait_until
from tests.harness.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
EMULATORS = Path(os.environ.get("KOMOREBI_EMULATORS_DIR", ROOT / ".cache" / "emulators"))
LOCALSTACK_PYTHON = EMULATORS / "localstack" / "bin" / "python"
DYNALITE = EMULATORS / "npm" / "node_modules" / "dynalite" / "cli.js"
STARTUP_SECONDS = 90.0


class EmulatorMissing(RuntimeError):
    """An emulator is not installed (``make setup`` installs it)."""


@dataclass
class EmulatorProcess:
    """One emulator server: its endpoint, process and log file."""

    name: str
    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it does not go within 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()

    def tail(self, lines: int = 20) -> str:
        """The end of the server's log (for failure messages)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _wait_until(ready: EmulatorProcess, probe: str, check: str) -> None:
    """Until ``probe`` answers with ``check`` in its body (stops the server on a failure)."""

    def answered() -> bool:
        if ready.process.poll() is not None:
            raise RuntimeError(f"{ready.name} exited ({ready.process.returncode}): {ready.tail()}")
        with urllib.request.urlopen(probe, timeout=2) as response:
            return check in response.read().decode(errors="replace")

    try:
        wait_until(answered, timeout=STARTUP_SECONDS, interval=0.25, ignore=(OSError,))
    except AssertionError:
        ready.stop()
        raise RuntimeError(
            f"{ready.name} not ready in {STARTUP_SECONDS:.0f} s: {ready.tail()}"
        ) from None


def start_localstack(services: tuple[str, ...] = ("sqs", "s3")) -> EmulatorProcess:
    """LocalStack in host mode on a free 127.0.0.1 port, ready for ``services``."""
    if not LOCALSTACK_PYTHON.exists():
        raise EmulatorMissing(f"LocalStack is not installed in {EMULATORS} (run `make setup`)")
    port = free_port()
    workdir = tempfile.TemporaryDirectory(prefix="localstack-")
    log_path = Path(workdir.name) / "localstack.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": workdir.name,
        # hypercorn on 127.0.0.1 only: LocalStack's default server binds 0.0.0.0.
        "GATEWAY_SERVER": "hypercorn",
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "LOCALSTACK_HOST": f"127.0.0.1:{port}",
        "SERVICES": ",".join(services),
        "EAGER_SERVICE_LOADING": "1",
        "SQS_ENDPOINT_STRATEGY": "path",
        # Host mode with every file under a temporary root; no DNS server (it binds 0.0.0.0),
        # no certificate download, no analytics: the tests run offline.
        "OVERRIDE_IN_DOCKER": "0",
        "FILESYSTEM_ROOT": str(Path(workdir.name) / "filesystem"),
        "DNS_ADDRESS": "0",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
        "LOCALSTACK_CLI": "0",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(LOCALSTACK_PYTHON), "-m", "localstack.runtime.main"],
            cwd=workdir.name,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = EmulatorProcess(
        "LocalStack", f"http://127.0.0.1:{port}", process, log_path, _workdir=workdir
    )
    deadline = time.monotonic() + STARTUP_SECONDS
    _wait_until(server, f"{server.endpoint}/_localstack/health", '"services"')
    # Ready = every requested service loaded (EAGER_SERVICE_LOADING), not just the gateway.
    while True:
        with urllib.request.urlopen(f"{server.endpoint}/_localstack/health", timeout=2) as response:
            states = json.loads(response.read())["services"]
        if all(states.get(name) in ("running", "available") for name in services):
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"LocalStack services not ready: {states}")
        time.sleep(0.25)


def start_dynalite() -> EmulatorProcess:
    """dynalite (in-memory) on a free 127.0.0.1 port; tables are ACTIVE at once."""
    if not DYNALITE.exists():
        raise EmulatorMissing(f"dynalite is not installed in {EMULATORS} (run `make setup`)")
    port = free_port()
    workdir = tempfile.TemporaryDirectory(prefix="dynalite-")
    log_path = Path(workdir.name) / "dynalite.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["node", str(DYNALITE), "--host", "127.0.0.1", "--port", str(port),
             "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"],
            cwd=workdir.name,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = EmulatorProcess(
        "dynalite", f"http://127.0.0.1:{port}", process, log_path, _workdir=workdir
    )
    # Any HTTP answer means it listens (a GET without a target is a 400 with a JSON body).
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"dynalite exited ({process.returncode}): {server.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"dynalite not listening: {server.tail()}") from None
            time.sleep(0.1)
