"""Keeping credentials out of text: presigned URLs, access keys, secrets, receipt handles (pure).

Used by the log pipeline (:mod:`worker.observability.logs`) on every string, and on the texts that
reach a row or a dead-letter reason (:mod:`worker.outcome`, :mod:`worker.aws`).
"""

from __future__ import annotations

import re
from typing import Any

from worker.errors import printable

_REDACTED = "[REDACTED]"
# Query strings of URLs: presigned S3 URLs carry their signature and credential there.
_URL_QUERY = re.compile(r"""(?i)\b((?:https?|s3)://[^\s?#"'<>]+)\?[^\s"'<>]*""")
# Signature parameters outside a full URL (ffmpeg and SDKs print fragments), also URL-encoded
# inside another URL (`%3D` for `=`, `%26` for `&`). No `\b`: `%26X-Amz-...` has no boundary.
_SIGNING_PARAM = re.compile(
    r"(?i)(?<![A-Za-z])(X-Amz-(?:Signature|Credential|Security-Token|SignedHeaders|Date"
    r"|Expires|Algorithm)|Signature|Credential|AWSAccessKeyId|Expires)(=|%3D)"
    r"(?:(?!%26)[^&\s\"',;])+"
)
# Access key ids (long-term AKIA, temporary ASIA, ...): 4-letter prefix + 16 characters.
_ACCESS_KEY_ID = re.compile(
    r"(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])"
)
# key=value / key: value / "key": "value" for secret-bearing names.
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(aws_secret_access_key|aws_session_token|aws_security_token|secret_?access_?key"
    r"|session_?token|security_?token|x-amz-security-token|authorization|password)"
    r"""(["']?\s*(?:[:=]|%3D)\s*["']?)(?:AWS4-HMAC-SHA256\s+)?(?:(?!%26)[^\s"',;&])+"""
)

# SQS receipt handles: whoever holds one can delete or hide the message until it is
# redelivered, so they stay out of logs. AWS and LocalStack quote them in errors
# ("Value <handle> for parameter ReceiptHandle is invalid"); SDK parameter dumps and JSON put
# them after a ReceiptHandle key.
_RECEIPT_IN_ERROR = re.compile(r"(?i)(\bvalue\s+)\S+(\s+for\s+parameter\s+ReceiptHandle\b)")
_RECEIPT_ASSIGNMENT = re.compile(
    r"""(?i)(\breceipt[ _-]?handle["']?\s*(?:[:=]|%3D)?\s*["']?)[A-Za-z0-9+/=_-]{16,}"""
)
_RECEIPT_KEY = re.compile(r"(?i)receipt[ _-]?handle")


def redact(text: str) -> str:
    """Remove credentials from ``text``: presigned-URL query strings, access key ids, secrets,
    SQS receipt handles.

    Used on ffmpeg stderr tails and exception messages, and by the log pipeline on every
    string value, so a secret cannot reach a log line even when a caller forgets.
    """
    if not text:
        return text
    # A lone surrogate (from a message's JSON) would make the log line unwritable.
    text = printable(text)
    text = _URL_QUERY.sub(lambda m: f"{m.group(1)}?{_REDACTED}", text)
    text = _SIGNING_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}{_REDACTED}", text)
    text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group(1)}{m.group(2)}{_REDACTED}", text)
    text = _RECEIPT_IN_ERROR.sub(lambda m: f"{m.group(1)}{_REDACTED}{m.group(2)}", text)
    text = _RECEIPT_ASSIGNMENT.sub(lambda m: f"{m.group(1)}{_REDACTED}", text)
    return _ACCESS_KEY_ID.sub(_REDACTED, text)


def redact_value(value: Any, key: object = None) -> Any:
    """``value`` (a log field: text, list, tuple, dict) with :func:`redact` applied to every
    string in it; a field named like a receipt handle is withheld whatever it holds."""
    if isinstance(key, str) and _RECEIPT_KEY.search(key) and value:
        return _REDACTED  # a receipt_handle=... field, whatever its value looks like
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item) for item in value)
    if isinstance(value, dict):
        return {k: redact_value(item, k) for k, item in value.items()}
    return value
