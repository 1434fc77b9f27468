"""AWS fixtures: a real moto server over HTTP, resources provisioned like production.

``moto_server`` is one ThreadedMotoServer on 127.0.0.1 per test session. ``aws`` gives each
test its own queue, DLQ, buckets and table (unique names), created by the same
``worker.provisioning.provision`` that ``komorebi-worker provision`` uses, and sets the
standard SDK variables (``AWS_ENDPOINT_URL`` etc.) in the test's environment.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer

from worker.aws import AwsClients, open_clients
from worker.config import Settings
from worker.provisioning import provision

REGION = "us-east-1"
CONNECT_ALIAS = "komorebi-test"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of a moto server running for the whole session."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class AwsEnv:
    """One test's provisioned AWS world and the environment a worker needs to use it."""

    endpoint: str
    env: dict[str, str]
    queue_url: str
    dlq_url: str
    ac_audio_bucket: str
    input_bucket: str
    output_bucket: str
    table_name: str
    session: boto3.session.Session = field(repr=False)

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` on the emulator."""
        return self.session.client(service, endpoint_url=self.endpoint)

    def settings(self, **overrides: str) -> Settings:
        """Worker settings for this world (environment overrides as strings)."""
        return Settings.from_env({**self.env, **overrides})


def aws_base_env(endpoint: str) -> dict[str, str]:
    """SDK variables pointing at the emulator with fake credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # the emulator's dummy credentials
    }


def provision_world(endpoint: str, suffix: str | None = None) -> AwsEnv:
    """Create a fresh, uniquely named set of resources on the emulator."""
    suffix = suffix or uuid.uuid4().hex[:10]
    base = aws_base_env(endpoint)
    env = {
        **base,
        "QUEUE_URL": f"{endpoint}/123456789012/jobs-{suffix}",
        "AC_AUDIO_BUCKET_NAME": f"connect-{suffix}",
        "INPUT_BUCKET_NAME": f"input-{suffix}",
        "OUTPUT_BUCKET_NAME": f"output-{suffix}",
        "RECORDING_TABLE_NAME": f"Recording-{suffix}",
        "CONNECT_INSTANCE_ALIAS": CONNECT_ALIAS,
        "LOG_FORMAT": "json",
    }
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        created = provision(Settings.from_env(env), session=session)
    finally:
        if previous is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = previous
    env["QUEUE_URL"] = created.queue_url
    env["DLQ_URL"] = created.dlq_url
    return AwsEnv(
        endpoint=endpoint,
        env=env,
        queue_url=created.queue_url,
        dlq_url=created.dlq_url,
        ac_audio_bucket=env["AC_AUDIO_BUCKET_NAME"],
        input_bucket=env["INPUT_BUCKET_NAME"],
        output_bucket=env["OUTPUT_BUCKET_NAME"],
        table_name=env["RECORDING_TABLE_NAME"],
        session=session,
    )


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> AwsEnv:
    """A fresh provisioned world; the test's environment points the SDKs at it."""
    world = provision_world(moto_server)
    for name, value in aws_base_env(moto_server).items():
        monkeypatch.setenv(name, value)
    return world


@pytest.fixture(scope="module")
def world(moto_server: str) -> Iterator[AwsEnv]:
    """One provisioned world per test module (provisioning dominates a test's set-up);
    tests in it use unique recording ids or their own queues."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in aws_base_env(moto_server).items():
            patch.setenv(name, value)
        yield provision_world(moto_server)


# One aiobotocore session for the test run: loading service models dominates a client's set-up.
AIO_SESSION = get_session()


@pytest.fixture
async def clients(world: AwsEnv) -> AsyncIterator[AwsClients]:
    """The worker's own AWS clients, on the module's world."""
    async with open_clients(world.settings(), session=AIO_SESSION) as opened:
        yield opened


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """An empty SCRATCH_DIR for one test."""
    path = tmp_path / "scratch"
    path.mkdir()
    return path
