"""AWS fixtures: real emulators over HTTP, resources provisioned like production.

``moto_server`` is one ThreadedMotoServer on 127.0.0.1 per test session. ``aws`` gives each
test its own queue, DLQ, buckets and table (unique names), created by the same
``worker.provisioning.provision`` that ``komorebi-worker provision`` uses, and sets the
standard SDK variables (``AWS_ENDPOINT_URL`` etc.) in the test's environment.

Backends: moto by default. A test marked ``@pytest.mark.backends("moto", "localstack")``
that uses ``aws``, ``backend_world`` (or a fixture built on them) runs once per backend;
``localstack`` is a second, independent implementation — LocalStack for SQS and S3 and
dynalite for DynamoDB (:mod:`tests.harness.emulators`), each service on its own endpoint, given to
the worker the way the SDKs define it (``AWS_ENDPOINT_URL_SQS``, ``_S3``, ``_DYNAMODB``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer

from tests.harness.emulators import start_dynalite, start_localstack
from tests.harness.ports import free_port
from worker.aws import AwsClients, open_clients
from worker.config import Settings
from worker.provisioning import provision

REGION = "us-east-1"
CONNECT_ALIAS = "komorebi-test"
BACKENDS = ("moto", "localstack")
SERVICES = ("sqs", "s3", "dynamodb")
# Every variable the SDKs read an endpoint from (the global one, then one per service).
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", *(f"AWS_ENDPOINT_URL_{s.upper()}" for s in SERVICES))


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


@dataclass(frozen=True)
class Endpoints:
    """Where each service answers: one emulator for all (moto) or one per service."""

    sqs: str
    s3: str
    dynamodb: str
    backend: str = "moto"

    @classmethod
    def single(cls, url: str, backend: str = "moto") -> Endpoints:
        """Every service on ``url``."""
        return cls(url, url, url, backend)

    def url(self, service: str) -> str:
        """The endpoint of ``service`` (sqs, s3 or dynamodb)."""
        return str(getattr(self, service))

    def sdk_env(self) -> dict[str, str]:
        """The SDKs' standard endpoint variables for these endpoints."""
        if self.sqs == self.s3 == self.dynamodb:
            return {"AWS_ENDPOINT_URL": self.sqs}
        return {f"AWS_ENDPOINT_URL_{s.upper()}": self.url(s) for s in SERVICES}


def _as_endpoints(endpoint: str | Endpoints) -> Endpoints:
    return endpoint if isinstance(endpoint, Endpoints) else Endpoints.single(endpoint)


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
    endpoints: Endpoints | None = None

    @property
    def backend(self) -> str:
        """``moto`` or ``localstack`` (LocalStack + dynalite)."""
        return self.endpoints.backend if self.endpoints else "moto"

    def url(self, service: str) -> str:
        """The endpoint of ``service`` (sqs, s3 or dynamodb) on the emulator."""
        return self.endpoints.url(service) if self.endpoints else self.endpoint

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` on the emulator."""
        return self.session.client(service, endpoint_url=self.url(service))

    def settings(self, **overrides: str) -> Settings:
        """Worker settings for this world (environment overrides as strings)."""
        return Settings.from_env({**self.env, **overrides})


def aws_base_env(endpoint: str | Endpoints) -> dict[str, str]:
    """SDK variables pointing at the emulator with fake credentials."""
    return {
        **_as_endpoints(endpoint).sdk_env(),
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # the emulator's dummy credentials
    }


@contextmanager
def sdk_environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``env``'s endpoint variables (and no other endpoint variable)."""
    previous = {name: os.environ.get(name) for name in ENDPOINT_VARIABLES}
    for name in ENDPOINT_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update({k: v for k, v in env.items() if k in ENDPOINT_VARIABLES})
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def use_backend(monkeypatch: pytest.MonkeyPatch, endpoint: str | Endpoints) -> None:
    """Point the test's SDK variables at ``endpoint`` (other endpoint variables removed)."""
    for name in ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_base_env(endpoint).items():
        monkeypatch.setenv(name, value)


def provision_world(endpoint: str | Endpoints, suffix: str | None = None) -> AwsEnv:
    """Create a fresh, uniquely named set of resources on the emulator."""
    suffix = suffix or uuid.uuid4().hex[:10]
    endpoints = _as_endpoints(endpoint)
    base = aws_base_env(endpoints)
    env = {
        **base,
        "QUEUE_URL": f"{endpoints.sqs}/123456789012/jobs-{suffix}",
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
    with sdk_environment(base):
        created = provision(Settings.from_env(env), session=session)
    env["QUEUE_URL"] = created.queue_url
    env["DLQ_URL"] = created.dlq_url
    return AwsEnv(
        endpoint=endpoints.sqs,
        env=env,
        queue_url=created.queue_url,
        dlq_url=created.dlq_url,
        ac_audio_bucket=env["AC_AUDIO_BUCKET_NAME"],
        input_bucket=env["INPUT_BUCKET_NAME"],
        output_bucket=env["OUTPUT_BUCKET_NAME"],
        table_name=env["RECORDING_TABLE_NAME"],
        session=session,
        endpoints=endpoints,
    )


def create_table(world: AwsEnv, key: str = "videoID", *, wait: bool = True) -> str:
    """A new, empty table named ``Recording-<random>`` with partition key ``key`` (S)."""
    name = f"Recording-{uuid.uuid4().hex[:10]}"
    db = world.client("dynamodb")
    db.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    if wait:
        db.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
    return name


# --- backends --------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``backends`` marker."""
    config.addinivalue_line(
        "markers",
        "backends(*names): run the test on each AWS implementation named "
        "(moto; localstack = LocalStack for SQS/S3 + dynalite for DynamoDB)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``backend`` for tests marked ``backends``."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "backend" in metafunc.fixturenames:
        names = marker.args or BACKENDS
        unknown = set(names) - set(BACKENDS)
        if unknown:
            raise ValueError(f"unknown backends {sorted(unknown)}; known: {BACKENDS}")
        metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture(scope="session")
def localstack_endpoints() -> Iterator[Endpoints]:
    """LocalStack (SQS, S3) and dynalite (DynamoDB), started once per session when needed."""
    localstack = start_localstack(("sqs", "s3"))
    try:
        dynalite = start_dynalite()
    except BaseException:
        localstack.stop()
        raise
    try:
        yield Endpoints(
            sqs=localstack.endpoint,
            s3=localstack.endpoint,
            dynamodb=dynalite.endpoint,
            backend="localstack",
        )
    finally:
        dynalite.stop()
        localstack.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The AWS implementation of this test run (``moto`` unless marked ``backends``)."""
    return str(getattr(request, "param", "moto"))


@pytest.fixture
def backend_endpoints(request: pytest.FixtureRequest, backend: str) -> Endpoints:
    """The endpoints of ``backend``; its servers are started on first use."""
    if backend == "moto":
        return Endpoints.single(request.getfixturevalue("moto_server"))
    return request.getfixturevalue("localstack_endpoints")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def module_worlds() -> dict[str, AwsEnv]:
    """Provisioned worlds of this module, one per backend, made on first use."""
    return {}


@pytest.fixture
def backend_world(
    backend_endpoints: Endpoints, module_worlds: dict[str, AwsEnv], monkeypatch: pytest.MonkeyPatch
) -> AwsEnv:
    """The module's world on this test's backend; the SDK variables point at it."""
    name = backend_endpoints.backend
    if name not in module_worlds:
        module_worlds[name] = provision_world(backend_endpoints)
    use_backend(monkeypatch, backend_endpoints)
    return module_worlds[name]


@pytest.fixture
def aws(backend_endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch) -> AwsEnv:
    """A fresh provisioned world; the test's environment points the SDKs at it."""
    world = provision_world(backend_endpoints)
    use_backend(monkeypatch, backend_endpoints)
    return world


@pytest.fixture(scope="module")
def world(moto_server: str, module_worlds: dict[str, AwsEnv]) -> Iterator[AwsEnv]:
    """One provisioned world per test module (provisioning dominates a test's set-up);
    tests in it use unique recording ids or their own queues."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in aws_base_env(moto_server).items():
            patch.setenv(name, value)
        if "moto" not in module_worlds:
            module_worlds["moto"] = provision_world(moto_server)
        yield module_worlds["moto"]


# One aiobotocore session for the test run: loading service models dominates a client's set-up.
AIO_SESSION = get_session()


@pytest.fixture
async def clients(world: AwsEnv) -> AsyncIterator[AwsClients]:
    """The worker's own AWS clients, on the module's world."""
    async with open_clients(world.settings(), session=AIO_SESSION) as opened:
        yield opened


@pytest.fixture
async def backend_clients(backend_world: AwsEnv) -> AsyncIterator[AwsClients]:
    """The worker's own AWS clients, on the module's world of this test's backend."""
    async with open_clients(backend_world.settings(), session=AIO_SESSION) as opened:
        yield opened


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """An empty SCRATCH_DIR for one test."""
    path = tmp_path / "scratch"
    path.mkdir()
    return path
