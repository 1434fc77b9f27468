"""Key layout and creationDate parsing (pure; the Recording table on moto is in
tests/aws/test_recordings_table.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.config import KeyTemplates
from worker.errors import (
    ConfigError,
    ConnectAudioNotReady,
    InvalidRow,
)
from worker.keys import ObjectSummary, choose_connect_audio, keys_for
from worker.recordings import (
    parse_creation_date,
)

RID = "7165d412-7fe0-4fb6-81ae-68b135a26f7c"

# --- parse_creation_date ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-05 23:59:58", datetime(2024, 3, 5, 23, 59, 58, tzinfo=UTC)),
        (" 2024-03-05 00:00:00 ", datetime(2024, 3, 5, tzinfo=UTC)),
        ("2024-03-05T23:59:58Z", datetime(2024, 3, 5, 23, 59, 58, tzinfo=UTC)),
        ("2024-03-05T23:59:58.250Z", datetime(2024, 3, 5, 23, 59, 58, 250000, tzinfo=UTC)),
        # An aware time in another zone is converted: this is the next day in UTC.
        ("2024-03-05T20:30:00-05:00", datetime(2024, 3, 6, 1, 30, tzinfo=UTC)),
        ("2024-03-05T23:59:58", datetime(2024, 3, 5, 23, 59, 58, tzinfo=UTC)),
    ],
)
def test_parse_creation_date_accepts_both_formats(text: str, expected: datetime) -> None:
    parsed = parse_creation_date(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text", ["", "   ", "yesterday", "2024/03/05 10:00:00", "2024-13-01 00:00:00", "05-03-2024"]
)
def test_parse_creation_date_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidRow):
        parse_creation_date(text)


# --- keys_for --------------------------------------------------------------------------------


def test_keys_follow_the_lambda_layout() -> None:
    keys = keys_for(
        RID, "agent-42", datetime(2024, 3, 5, 10, 0, tzinfo=UTC), KeyTemplates(), "inst"
    )
    assert keys.input_key == f"2024/03/05/agent-42/{RID}.mp4"
    assert keys.output_key("mp4") == f"2024/03/05/agent-42/{RID}/recording.mp4"
    assert keys.output_key("webm") == f"2024/03/05/agent-42/{RID}/recording.webm"
    assert keys.thumbnail_key == f"2024/03/05/agent-42/{RID}/thumbnail.png"
    assert keys.connect_audio_prefixes == (
        f"connect/inst/CallRecordings/2024/03/05/{RID}",
        f"connect/inst/CallRecordings/2024/03/06/{RID}",
    )


@pytest.mark.parametrize(
    ("day", "next_day"),
    [
        (datetime(2024, 1, 31, 23, 59, tzinfo=UTC), "2024/02/01"),
        (datetime(2023, 12, 31, 23, 0, tzinfo=UTC), "2024/01/01"),
        (datetime(2024, 2, 28, 12, 0, tzinfo=UTC), "2024/02/29"),  # leap year
        (datetime(2024, 2, 29, 12, 0, tzinfo=UTC), "2024/03/01"),
        (datetime(2023, 2, 28, 12, 0, tzinfo=UTC), "2023/03/01"),
    ],
)
def test_connect_prefixes_roll_over_months_and_years(day: datetime, next_day: str) -> None:
    keys = keys_for("r1", "a", day, KeyTemplates(), "inst")
    assert keys.connect_audio_prefixes[0] == f"connect/inst/CallRecordings/{day:%Y/%m/%d}/r1"
    assert keys.connect_audio_prefixes[1] == f"connect/inst/CallRecordings/{next_day}/r1"
    assert keys.input_key.startswith(f"{day:%Y/%m/%d}/a/")


def test_keys_use_the_utc_day_of_an_aware_date() -> None:
    local = datetime(2024, 3, 5, 21, 0, tzinfo=timezone(timedelta(hours=-5)))  # 02:00Z on the 6th
    keys = keys_for("r1", "a", local, KeyTemplates(), "inst")
    assert keys.input_key == "2024/03/06/a/r1.mp4"


def test_custom_templates_and_bad_templates() -> None:
    templates = KeyTemplates(
        connect_audio_prefix="audio/{instance}/{recording_id}",
        input_key="in/{agent_id}/{recording_id}.webm",
        output_key="out/{yyyy}{mm}{dd}/{recording_id}.{ext}",
        thumbnail_key="out/{recording_id}.png",
    )
    keys = keys_for("r1", "a", datetime(2024, 3, 5, tzinfo=UTC), templates, "i")
    assert keys.connect_audio_prefixes == ("audio/i/r1",)  # same prefix both days: once
    assert keys.input_key == "in/a/r1.webm"
    assert keys.output_key("mp4") == "out/20240305/r1.mp4"
    assert keys.thumbnail_key == "out/r1.png"
    with pytest.raises(ConfigError):
        keys_for("r1", "a", datetime(2024, 3, 5, tzinfo=UTC), KeyTemplates(input_key="{nope}"), "i")
    with pytest.raises(ValueError, match="extension"):
        keys.output_key("../mp4")


# --- choose_connect_audio --------------------------------------------------------------------


def _summary(key: str, minute: int, size: int = 100) -> ObjectSummary:
    return ObjectSummary(key, size, datetime(2024, 3, 5, 10, minute, tzinfo=UTC))


def test_choose_connect_audio_takes_the_newest() -> None:
    ivr = _summary(f"p/{RID}_20240305T10:00_UTC.wav", 1)
    agent = _summary(f"p/{RID}_20240305T10:02_UTC.wav", 9)
    assert choose_connect_audio([agent, ivr]) == agent
    assert choose_connect_audio([ivr]) == ivr


def test_choose_connect_audio_tie_breaks_on_key_and_prefers_wav() -> None:
    first = _summary(f"p/{RID}_20240305T10:00_UTC.wav", 5)
    second = _summary(f"p/{RID}_20240305T10:03_UTC.wav", 5)
    assert choose_connect_audio([second, first]) == second
    newer_other = _summary(f"p/{RID}_20240305T10:04_UTC.json", 30)
    assert choose_connect_audio([first, newer_other]) == first
    assert choose_connect_audio([newer_other]) == newer_other


def test_choose_connect_audio_ignores_other_contacts_and_empty_objects() -> None:
    mine = _summary("p/abc_20240305T10:00_UTC.wav", 1)
    longer_id = _summary("p/abcd_20240305T10:05_UTC.wav", 9)
    empty = _summary("p/abc_20240305T10:09_UTC.wav", 20, size=0)
    assert choose_connect_audio([mine, longer_id, empty], recording_id="abc") == mine
    with pytest.raises(ConnectAudioNotReady):
        choose_connect_audio([longer_id], recording_id="abc")
    # An id that also occurs inside the Connect timestamp matches its own file only.
    numeric = _summary("connect/i/CallRecordings/2024/03/05/0305_20240305T10:00_UTC.wav", 1)
    other = _summary("connect/i/CallRecordings/2024/03/05/03051_20240305T10:09_UTC.wav", 9)
    assert choose_connect_audio([numeric, other], recording_id="0305") == numeric
    nested = _summary("audio/abc/call.wav", 1)  # a template with the id as a folder
    assert choose_connect_audio([nested], recording_id="abc") == nested
    with pytest.raises(ConnectAudioNotReady):
        choose_connect_audio([])


def test_choose_connect_audio_prefers_connects_exact_name_over_an_underscored_id() -> None:
    # "abc_def" is a valid id of another contact: its newer file must not win for "abc".
    mine = _summary("p/abc_20240305T10:00_UTC.wav", 1)
    other_contact = _summary("p/abc_def_20240305T10:05_UTC.wav", 9)
    assert choose_connect_audio([mine, other_contact], recording_id="abc") == mine
    assert choose_connect_audio([mine, other_contact], recording_id="abc_def") == other_contact


# --- RecordingTable on moto ------------------------------------------------------------------
