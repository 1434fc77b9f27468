"""The job message (SPEC §2): parsing and validation of the Lambda's SQS body."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from worker.errors import InvalidMessage
from worker.limits import MAX_MEDIA_SECONDS

RECORDING_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# S3 keys are at most 1024 bytes; anything near that is not a key someone meant.
_MAX_KEY_LENGTH = 1024
_CLOCK = re.compile(r"(?:(?P<h>\d+):)?(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d+)?)", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# A call end is on the recording's timeline: the media limit bounds it.
MAX_CALL_END_SECONDS = MAX_MEDIA_SECONDS


@dataclass(frozen=True)
class JobMessage:
    """A validated job: which recording, and where on its timeline the call ended."""

    recording_id: str
    call_end_seconds: float
    connect_audio_key: str | None = None
    # Process again even when the row is DONE for this call end (``backfill --force``);
    # body field ``"reprocess": true`` (issue 16, a SPEC §2 addition).
    reprocess: bool = False

    def to_body(self) -> str:
        """The SQS body for this job, in the Lambda's format."""
        body: dict[str, Any] = {
            "recordingID": self.recording_id,
            "callEndingTimestamp": format_timestamp(self.call_end_seconds),
        }
        if self.connect_audio_key:
            body["connectAudioKey"] = self.connect_audio_key
        if self.reprocess:
            body["reprocess"] = True
        return json.dumps(body)


def parse_timestamp(value: object) -> float:
    """Seconds from a call-end value: ``HH:MM:SS[.fff]``, ``MM:SS``, or a number of seconds.

    Raises :class:`ValueError` with a short reason for anything else, negative values,
    NaN/infinity and absurdly large values.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"must be a timestamp or a number of seconds, not {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # a JSON integer with hundreds of digits
            raise ValueError("is implausibly large (more than 7 days)") from None
    elif isinstance(value, str):
        seconds = _parse_text(value.strip())
    else:
        raise ValueError(f"must be a timestamp or a number of seconds, not {type(value).__name__}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError("must be a finite number")
    if seconds < 0:
        raise ValueError("must not be negative")
    if seconds > MAX_CALL_END_SECONDS:
        raise ValueError("is implausibly large (more than 7 days)")
    return seconds + 0.0  # -0.0 -> 0.0


def _parse_text(text: str) -> float:
    clock = _CLOCK.fullmatch(text)
    if clock:
        hours = int(clock["h"] or 0)
        minutes = int(clock["m"])
        secs = float(clock["s"])
        if (minutes >= 60 and clock["h"] is not None) or secs >= 60:
            raise ValueError(f"{text!r} is not a valid clock time")
        return hours * 3600 + minutes * 60 + secs
    # Plain decimal numbers only: float() alone would also take "1_000", "infinity", "nan".
    if _NUMBER.fullmatch(text):
        return float(text)
    raise ValueError(f"{text[:40]!r} is not HH:MM:SS, MM:SS or a number of seconds")


def format_timestamp(seconds: float) -> str:
    """``HH:MM:SS.fff`` (or ``HH:MM:SS`` for whole seconds), the inverse of parse_timestamp."""
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{text}.{millis:03d}" if millis else text


def validate_recording_id(value: object) -> str:
    """The recording ID if it is safe to use in S3 keys (SPEC §2), else ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"recordingID must be a string, not {type(value).__name__}")
    if not RECORDING_ID_PATTERN.fullmatch(value):
        raise ValueError("recordingID must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
    return value


def parse_message(body: str) -> JobMessage:
    """Parse and validate an SQS body. Raises :class:`InvalidMessage` with a one-line reason.

    Whatever goes wrong while reading a message is the message's fault, so any other error
    (one this code did not foresee) is an :class:`InvalidMessage` too, named by its type: a
    message must end with a reason, never escape the handler.
    """
    try:
        return _parse(body)
    except InvalidMessage:
        raise
    except Exception as error:  # noqa: BLE001 - the message's fault, whatever it was
        raise InvalidMessage(f"message could not be read ({type(error).__name__})") from None


def _parse(body: str) -> JobMessage:
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        raise InvalidMessage(f"message body is not valid JSON: {_short(error)}") from None
    if not isinstance(data, dict):
        raise InvalidMessage(f"message body must be a JSON object, not {type(data).__name__}")
    if "recordingID" not in data:
        raise InvalidMessage("message has no recordingID")
    if "callEndingTimestamp" not in data:
        raise InvalidMessage("message has no callEndingTimestamp")
    try:
        recording_id = validate_recording_id(data["recordingID"])
    except ValueError as error:
        raise InvalidMessage(str(error)) from None
    try:
        call_end = parse_timestamp(data["callEndingTimestamp"])
    except ValueError as error:
        raise InvalidMessage(f"callEndingTimestamp {error}") from None
    connect_key = data.get("connectAudioKey")
    if connect_key is not None:
        if not isinstance(connect_key, str) or not connect_key or "\x00" in connect_key:
            raise InvalidMessage("connectAudioKey must be a non-empty string")
        if not is_unicode_text(connect_key):
            # Valid JSON ("\ud800") but no S3 key: UTF-8 cannot encode a lone surrogate.
            raise InvalidMessage("connectAudioKey is not valid Unicode (a lone surrogate)")
        if len(connect_key.encode()) > _MAX_KEY_LENGTH:
            raise InvalidMessage("connectAudioKey is longer than an S3 key can be")
    # Only a JSON true asks for it: anything else is the default (an unknown field's value).
    reprocess = data.get("reprocess") is True
    return JobMessage(recording_id, call_end, connect_key or None, reprocess)


def is_unicode_text(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (JSON's ``\\ud800`` escapes decode to lone
    surrogates, which cannot)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:120]


def recording_id_of(body: str) -> str | None:
    """The valid ``recordingID`` of a message that is otherwise invalid, else None.

    A message with a good ID but, say, a malformed call end still names a recording whose
    row should say FAILED (SPEC §6) and whose logs should carry its id.
    """
    try:
        data = json.loads(body, parse_constant=_reject_constant)
        return validate_recording_id(data["recordingID"]) if isinstance(data, dict) else None
    except Exception:  # noqa: BLE001 - no valid id, whatever the body holds
        return None
