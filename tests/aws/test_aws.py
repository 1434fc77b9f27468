"""Client set-up from the SDK's standard environment, and error translation."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from tests.harness.fixtures_aws import AwsEnv
from tests.harness.ports import free_port
from worker.aws import open_clients, translate
from worker.errors import (
    AwsUnavailable,
    ConfigError,
    PermanentError,
    RowNotFound,
    TransientError,
)
from worker.queue import JobQueue

SECRET_URL = "https://bucket.s3.amazonaws.com/key?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"


def _client_error(code: str, message: str, status: int, operation: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            _client_error("ThrottlingException", "Rate exceeded", 400, "UpdateItem"),
            "UpdateItem: ThrottlingException: Rate exceeded",
        ),
        (
            _client_error("SlowDown", "Please reduce your request rate.", 503, "PutObject"),
            "PutObject: SlowDown: Please reduce your request rate.",
        ),
        (
            _client_error("InternalError", f"We hit a snag at {SECRET_URL}", 500, "GetObject"),
            "GetObject: InternalError: We hit a snag at <url>",
        ),
        (
            _client_error("", "", 502, "ReceiveMessage"),
            "ReceiveMessage: 502",
        ),
        (
            EndpointConnectionError(endpoint_url=SECRET_URL),
            "EndpointConnectionError: Could not connect to the endpoint URL: <url>",
        ),
        (
            ReadTimeoutError(endpoint_url=SECRET_URL),
            "ReadTimeoutError: Read timeout on endpoint URL: <url>",
        ),
        (
            ConnectionResetError("Connection reset by peer"),
            "ConnectionResetError: Connection reset by peer",
        ),
        (TimeoutError(), "TimeoutError: no detail"),
    ],
)
def test_translate_gives_one_transient_line_without_urls(
    error: BaseException, expected: str
) -> None:
    translated = translate(error)
    assert isinstance(translated, AwsUnavailable)
    assert isinstance(translated, TransientError)
    assert translated.reason == "aws_unavailable"
    assert str(translated) == expected
    assert "\n" not in str(translated) and "Signature" not in str(translated)


def test_translate_passes_worker_errors_through() -> None:
    error = RowNotFound("no row")
    assert translate(error) is error


def test_translate_flattens_multiline_messages() -> None:
    error = _client_error("InternalError", "line one\nline two\r\n  line three", 500, "GetItem")
    assert str(translate(error)) == "GetItem: InternalError: line one line two line three"


@pytest.mark.anyio
async def test_clients_use_the_standard_sdk_environment(aws: AwsEnv) -> None:
    async with open_clients(aws.settings()) as clients:
        for client in (clients.s3, clients.sqs, clients.dynamodb):
            assert client.meta.endpoint_url == aws.endpoint  # AWS_ENDPOINT_URL honoured
            assert client.meta.region_name == "us-east-1"
        retries = clients.s3.meta.config.retries
        assert retries["mode"] == "standard"
        assert retries["total_max_attempts"] == aws.settings().aws_max_attempts
        # Two transfers per job slot, each with s3_max_concurrency parallel requests.
        settings = aws.settings()
        assert clients.s3.meta.config.max_pool_connections >= (
            settings.worker_concurrency * 2 * settings.s3_max_concurrency
        )
        names = (await clients.dynamodb.list_tables())["TableNames"]
        assert aws.table_name in names


@pytest.mark.anyio
async def test_aws_region_wins_over_aws_default_region(
    aws: AwsEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    async with open_clients(aws.settings()) as clients:
        assert clients.sqs.meta.region_name == "eu-west-1"


@pytest.mark.anyio
async def test_unreachable_endpoint_is_aws_unavailable(
    aws: AwsEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    settings = aws.settings(AWS_MAX_ATTEMPTS="1")
    async with open_clients(settings) as clients:
        queue = JobQueue(clients.sqs, f"{closed}/123456789012/jobs", None)
        with pytest.raises(AwsUnavailable) as caught:
            await queue.receive(1, wait_seconds=0)
    message = str(caught.value)
    assert message.startswith("SQS: EndpointConnectionError:")
    assert "127.0.0.1" not in message and "\n" not in message


@pytest.mark.anyio
async def test_missing_region_is_a_config_error(
    aws: AwsEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    with pytest.raises(ConfigError, match="AWS_REGION"):
        async with open_clients(aws.settings()):
            pass


@pytest.mark.parametrize(
    ("code", "status", "permanent", "reason"),
    [
        ("ThrottlingException", 400, False, "aws_unavailable"),
        ("InternalError", 500, False, "aws_unavailable"),
        ("AccessDenied", 403, False, "aws_access_denied"),
        ("KMS.AccessDeniedException", 400, False, "aws_access_denied"),
        ("NoSuchBucket", 404, False, "aws_resource_missing"),
        ("ResourceNotFoundException", 400, False, "aws_resource_missing"),
        ("ValidationException", 400, True, "aws_rejected"),
        ("InvalidObjectState", 403, True, "aws_rejected"),
    ],
)
def test_translate_tells_outages_misconfiguration_and_rejections_apart(
    code: str, status: int, permanent: bool, reason: str
) -> None:
    translated = translate(_client_error(code, "no", status, "GetObject"))
    assert isinstance(translated, PermanentError) is permanent
    assert isinstance(translated, TransientError) is not permanent
    assert translated.reason == reason


def test_translated_names_the_service_of_a_connection_error() -> None:
    # A connection error names no operation and its endpoint URL is removed: without the
    # service an operator reading "AWS unavailable after 3 attempts: EndpointConnectionError:
    # Could not connect to the endpoint URL: <url>" cannot tell which service was down.
    from worker.aws import DYNAMODB, translated

    with pytest.raises(AwsUnavailable) as caught, translated(service=DYNAMODB):
        raise EndpointConnectionError(endpoint_url=SECRET_URL)
    assert str(caught.value) == (
        "DynamoDB: EndpointConnectionError: Could not connect to the endpoint URL: <url>"
    )
    # Service errors already name their operation; the service adds nothing.
    with pytest.raises(AwsUnavailable) as caught, translated(service=DYNAMODB):
        raise _client_error("InternalError", "boom", 500, "GetItem")
    assert str(caught.value) == "GetItem: InternalError: boom"
