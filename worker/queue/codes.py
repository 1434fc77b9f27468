"""Which SQS errors mean what, matched by code first and wording last (AWS, moto and
LocalStack word them differently): this delivery is gone, or its visibility cannot grow."""

from __future__ import annotations

import re

from worker.aws import error_code

# Codes that by themselves say a receipt handle no longer refers to an in-flight delivery
# (deleted, visibility lapsed and redelivered, or garbage), as AWS, moto and LocalStack send
# them (the JSON protocol's short form and the query protocol's long one).
_RECEIPT_CODES = frozenset(
    {
        "ReceiptHandleIsInvalid",
        "InvalidReceiptHandle",
        "AWS.SimpleQueueService.ReceiptHandleIsInvalid",
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
    }
)
# Generic validation codes: a receipt error when they name the ReceiptHandle parameter, as
# AWS and LocalStack do for a deleted delivery: "Value <handle> for parameter ReceiptHandle
# is invalid. Reason: Message does not exist or is not available for visibility timeout
# change."
_PARAMETER_CODES = frozenset({"InvalidParameterValue", "InvalidParameterValueException"})
_NAMES_RECEIPT_HANDLE = re.compile(r"(?i)\breceipt[ _]?handle\b")
# Last resort, for an implementation whose code is unknown: the wording alone.
_SAYS_DELIVERY_GONE = re.compile(
    r"(?i)\breceipt[ _]?handle\b.*\b(invalid|not valid|expired|does not exist)\b"
    r"|\bmessage does not exist\b|\bnot (?:in ?flight|available for visibility)\b"
)


def _error_codes(error: BaseException) -> set[str]:
    """The error's code and, when botocore has it, the query-protocol code beside it."""
    info = getattr(error, "response", {}).get("Error", {})
    return {code for code in (error_code(error), str(info.get("QueryErrorCode") or "")) if code}


def _error_message(error: BaseException) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Message", "") or "")


def is_receipt_error(error: BaseException) -> bool:
    """Whether SQS says this delivery is gone: by its error code first, wording last."""
    codes = _error_codes(error)
    if codes & _RECEIPT_CODES:
        return True
    message = _error_message(error)
    if codes & _PARAMETER_CODES:
        return bool(_NAMES_RECEIPT_HANDLE.search(message))
    if codes - {"400", "Unknown"}:
        return False  # another, known error: never guess from its text
    return bool(_SAYS_DELIVERY_GONE.search(message))


def is_visibility_limit(error: BaseException) -> bool:
    """Whether SQS refused a visibility change past its 12-hour limit."""
    message = _error_message(error).lower()
    return bool(_error_codes(error) & _PARAMETER_CODES) and "beyond the limit" in message
