"""worker.messages: the SPEC §2 job message and call-end timestamps."""

from __future__ import annotations

import json

import pytest

from worker import messages
from worker.errors import InvalidMessage, PermanentError
from worker.messages import (
    MAX_CALL_END_SECONDS,
    JobMessage,
    format_timestamp,
    parse_message,
    parse_timestamp,
    recording_id_of,
    validate_recording_id,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("00:00:14", 14.0),
        ("01:02:03", 3723.0),
        ("00:01:05.500", 65.5),
        ("1:02:03.25", 3723.25),
        ("02:30", 150.0),
        ("90:00", 5400.0),  # MM:SS with minutes beyond an hour is still unambiguous
        ("14", 14.0),
        (" 14.5 ", 14.5),
        (".5", 0.5),
        ("1e2", 100.0),
        (14, 14.0),
        (14.25, 14.25),
        (0, 0.0),
        ("0", 0.0),
        ("-0", 0.0),
        ("168:00:00", MAX_CALL_END_SECONDS),
    ],
)
def test_parse_timestamp_accepts(value: object, seconds: float) -> None:
    parsed = parse_timestamp(value)
    assert parsed == pytest.approx(seconds)
    assert str(parsed) != "-0.0"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-1", "negative"),
        (-0.5, "negative"),
        ("00:00:60", "not a valid clock time"),
        ("01:60:00", "not a valid clock time"),
        ("00:61", "not a valid clock time"),
        ("five", "not HH:MM:SS"),
        ("", "not HH:MM:SS"),
        ("1_000", "not HH:MM:SS"),
        ("nan", "not HH:MM:SS"),
        ("inf", "not HH:MM:SS"),
        ("0x10", "not HH:MM:SS"),
        ("1:2:3:4", "not HH:MM:SS"),
        ("\u0660\u0660:\u0660\u0665", "not HH:MM:SS"),  # Arabic-Indic digits
        ("\uff15", "not HH:MM:SS"),  # a full-width 5
        ("1e999", "finite"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (10**400, "implausibly large"),
        ("169:00:00", "implausibly large"),
        (True, "must be a timestamp"),
        (None, "must be a timestamp"),
        ([14], "must be a timestamp"),
        ({"s": 1}, "must be a timestamp"),
    ],
)
def test_parse_timestamp_rejects(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_timestamp(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "00:00:00"), (14, "00:00:14"), (65.5, "00:01:05.500"), (3723.25, "01:02:03.250")],
)
def test_format_timestamp_round_trips(seconds: float, text: str) -> None:
    assert format_timestamp(seconds) == text
    assert parse_timestamp(text) == pytest.approx(seconds)


def test_parse_message_lambda_format() -> None:
    body = (
        '{"recordingID": "7165d412-7fe0-4fb6-81ae-68b135a26f7c", "callEndingTimestamp": "00:00:14"}'
    )
    message = parse_message(body)
    assert message == JobMessage("7165d412-7fe0-4fb6-81ae-68b135a26f7c", 14.0, None)


def test_parse_message_optional_key_and_unknown_fields() -> None:
    body = json.dumps(
        {
            "recordingID": "rec_1",
            "callEndingTimestamp": 12.5,
            "connectAudioKey": "connect/x/CallRecordings/2026/11/27/rec_1_20261127T10:05_UTC.wav",
            "somethingNew": {"nested": True},
        }
    )
    message = parse_message(body)
    assert message.call_end_seconds == 12.5
    assert message.connect_audio_key is not None and message.connect_audio_key.endswith(".wav")
    assert not message.reprocess


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("true", False), (1, False)])
def test_reprocess_only_for_a_json_true(value: object, expected: bool) -> None:
    body = json.dumps({"recordingID": "r", "callEndingTimestamp": 3, "reprocess": value})
    assert parse_message(body).reprocess is expected
    assert parse_message(JobMessage("r", 3.0, reprocess=True).to_body()).reprocess


def test_to_body_round_trip() -> None:
    message = JobMessage("rec-1", 65.5, "k/ey.wav")
    assert parse_message(message.to_body()) == message
    assert json.loads(JobMessage("rec-2", 14).to_body()) == {
        "recordingID": "rec-2",
        "callEndingTimestamp": "00:00:14",
    }


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('"text"', "JSON object"),
        ("{}", "no recordingID"),
        ('{"recordingID": "a"}', "no callEndingTimestamp"),
        ('{"recordingID": "../etc", "callEndingTimestamp": 1}', "recordingID must match"),
        ('{"recordingID": "a/b", "callEndingTimestamp": 1}', "recordingID must match"),
        ('{"recordingID": "a b", "callEndingTimestamp": 1}', "recordingID must match"),
        ('{"recordingID": "a*", "callEndingTimestamp": 1}', "recordingID must match"),
        ('{"recordingID": "_a", "callEndingTimestamp": 1}', "recordingID must match"),
        ('{"recordingID": "", "callEndingTimestamp": 1}', "recordingID must match"),
        ('{"recordingID": 12, "callEndingTimestamp": 1}', "must be a string"),
        ('{"recordingID": "a", "callEndingTimestamp": -1}', "must not be negative"),
        ('{"recordingID": "a", "callEndingTimestamp": NaN}', "not valid JSON"),
        ('{"recordingID": "a", "callEndingTimestamp": Infinity}', "not valid JSON"),
        ('{"recordingID": "a", "callEndingTimestamp": 1e309}', "finite"),
        ('{"recordingID": "a", "callEndingTimestamp": 1' + "0" * 400 + "}", "implausibly"),
        ('{"recordingID": "a", "callEndingTimestamp": "soon"}', "callEndingTimestamp"),
        ('{"recordingID": "a", "callEndingTimestamp": 1, "connectAudioKey": ""}', "non-empty"),
        ('{"recordingID": "a", "callEndingTimestamp": 1, "connectAudioKey": 5}', "non-empty"),
        ("[" * 100000 + "]" * 100000, "not valid JSON"),
        # Valid JSON decoding to a lone UTF-16 surrogate: UTF-8 (an S3 key) cannot hold it.
        ('{"recordingID": "a", "callEndingTimestamp": 1, "connectAudioKey": "\\ud800"}', "lone"),
        ('{"recordingID": "a", "callEndingTimestamp": 1, "connectAudioKey": "k\\udfff"}', "lone"),
        ('{"recordingID": "\\ud800", "callEndingTimestamp": 1}', "recordingID must match"),
        ('{"recordingID": "a", "callEndingTimestamp": "\\ud800"}', "callEndingTimestamp"),
    ],
)
def test_parse_message_rejects_with_one_line(body: str, needle: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(body)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.reason == "invalid_message"
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_connect_key_length_is_bounded() -> None:
    body = json.dumps({"recordingID": "a", "callEndingTimestamp": 1, "connectAudioKey": "k" * 1025})
    with pytest.raises(InvalidMessage, match="longer than an S3 key"):
        parse_message(body)


def test_recording_id_bounds() -> None:
    assert validate_recording_id("a" * 128) == "a" * 128
    with pytest.raises(ValueError):
        validate_recording_id("a" * 129)
    with pytest.raises(ValueError):
        validate_recording_id("abc\n")


def test_an_unforeseen_error_while_reading_is_an_invalid_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever the parser did not foresee is the message's fault, named by its type: never an
    exception that escapes the handler."""

    def explode(value: object) -> float:
        raise ZeroDivisionError("a bug in the parser")

    monkeypatch.setattr(messages, "parse_timestamp", explode)
    body = json.dumps({"recordingID": "a", "callEndingTimestamp": 1})
    with pytest.raises(InvalidMessage) as caught:
        parse_message(body)
    assert str(caught.value) == "message could not be read (ZeroDivisionError)"


@pytest.mark.parametrize(
    "body", ['{"recordingID": "\\ud800"}', "\ud800", "[" * 100000, '{"recordingID": {}}']
)
def test_recording_id_of_never_raises(body: str) -> None:
    assert recording_id_of(body) is None
