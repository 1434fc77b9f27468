"""Operator commands' shared plumbing (SPEC §7) and ``enqueue``: sessions, SDK errors as
one-line errors, the queue and DLQ URLs. ``redrive``, ``dlq list``, ``backfill`` and ``doctor``
live in their own modules and build on these.

Synchronous boto3: these are one-shot command-line tools, not the service. Endpoint, region
and credentials come from the SDK's standard configuration (``AWS_ENDPOINT_URL`` etc.).
Only ``QUEUE_URL`` (and optionally ``DLQ_URL``) are needed, so an operator does not have to
set the bucket variables just to send a message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from worker.errors import AwsUnavailable, ConfigError, InvalidMessage
from worker.messages import JobMessage, parse_message, parse_timestamp, validate_recording_id
from worker.queue import parse_redrive_policy


def queue_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """``QUEUE_URL`` or a :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    url = (env.get("QUEUE_URL") or "").strip()
    if not url:
        raise ConfigError("configuration: QUEUE_URL is required but not set")
    return url


def dlq_url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``DLQ_URL`` if set (else the queue's RedrivePolicy decides)."""
    env = os.environ if environ is None else environ
    return (env.get("DLQ_URL") or "").strip() or None


def build_job(recording_id: str, call_end: str, connect_audio_key: str | None) -> JobMessage:
    """Validate command-line input into the job the worker will accept (ConfigError if not)."""
    try:
        validate_recording_id(recording_id)
    except ValueError as error:
        raise ConfigError(f"invalid RECORDING_ID: {error}") from None
    try:
        seconds = parse_timestamp(call_end)
    except ValueError as error:
        raise ConfigError(f"invalid CALL_END: {error}") from None
    job = JobMessage(recording_id, seconds, connect_audio_key)
    try:
        # Round trip through the worker's own parser: what we send is what it accepts.
        return parse_message(job.to_body())
    except InvalidMessage as error:
        raise ConfigError(f"invalid message: {error}") from None


def boto3_session(environ: Mapping[str, str] | None = None) -> boto3.session.Session:
    """A boto3 session honouring ``AWS_REGION`` (SPEC §3; botocore reads only
    ``AWS_DEFAULT_REGION``)."""
    env = os.environ if environ is None else environ
    region = (env.get("AWS_REGION") or "").strip() or None
    return boto3.session.Session(region_name=region)


def sqs_client() -> Any:
    """An SQS client from the standard SDK configuration (ConfigError if unusable)."""
    return client("sqs")


def client(service: str) -> Any:
    """A boto3 client for ``service`` from the standard SDK configuration (ConfigError if
    unusable)."""
    with aws_errors(f"{service} client"):
        return boto3_session().client(service)


@contextmanager
def aws_errors(operation: str) -> Iterator[None]:
    """SDK errors as one-line typed errors: setup problems exit 2, the rest exit 1."""
    try:
        yield
    except (NoRegionError, NoCredentialsError, PartialCredentialsError) as error:
        raise ConfigError(f"{operation}: {error}") from None
    except ClientError as error:
        info = error.response.get("Error", {})
        code = info.get("Code", "Error")
        message = info.get("Message", "")
        raise AwsUnavailable(f"{operation}: {code}: {message}") from None
    except BotoCoreError as error:
        raise AwsUnavailable(f"{operation}: {type(error).__name__}: {error}") from None


def enqueue(job: JobMessage, queue_url: str, *, sqs: Any | None = None) -> str:
    """Send ``job`` to the queue; returns the SQS message id."""
    client = sqs or sqs_client()
    with aws_errors("SendMessage"):
        response = client.send_message(QueueUrl=queue_url, MessageBody=job.to_body())
    return str(response["MessageId"])


def resolve_dlq_url(queue_url: str, dlq_url: str | None, *, sqs: Any) -> str:
    """``DLQ_URL`` if given, else the target of the queue's RedrivePolicy.

    A missing or malformed RedrivePolicy is a :class:`ConfigError` (one line, exit 2).
    """
    if dlq_url:
        return dlq_url
    with aws_errors("GetQueueAttributes"):
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["RedrivePolicy"]
        ).get("Attributes", {})
    text = attributes.get("RedrivePolicy")
    if not text:
        raise ConfigError("DLQ_URL is not set and the queue has no RedrivePolicy")
    policy = parse_redrive_policy(text)
    with aws_errors("GetQueueUrl"):
        return str(
            sqs.get_queue_url(QueueName=policy.dlq_name, QueueOwnerAWSAccountId=policy.dlq_account)[
                "QueueUrl"
            ]
        )
