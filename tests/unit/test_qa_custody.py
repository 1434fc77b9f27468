"""QA scenarios for worker.custody (issue 16, item 6) the builders' tests did not cover:
Unicode characters that make a key read as another (bidi overrides, zero-width and C1
controls, line separators), encodings and look-alikes that must stay literal, case, slashes,
a custom template with the id as a folder, and the next day across month, year and leap-day
boundaries. Pure: the real key layout (worker.keys.keys_for), no AWS."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.config import KeyTemplates
from worker.custody import connect_key_problem
from worker.keys import keys_for

RID = "6f1c2a7e-0b1d-4c55-9a3e-2f0d9b8c1e42"
BASE = "connect/acme/CallRecordings"


def prefixes(created: datetime, template: str | None = None) -> tuple[str, ...]:
    templates = KeyTemplates() if template is None else KeyTemplates(connect_audio_prefix=template)
    return keys_for(RID, "agent-7", created, templates, "acme").connect_audio_prefixes


DEFAULT = prefixes(datetime(2026, 12, 31, 23, 50, tzinfo=UTC))
NEXT_DAY = f"{BASE}/2027/01/01/{RID}"


@pytest.mark.parametrize(
    "character",
    ["\u202e", "\u200b", "\u2066", "\ufeff", "\x85", "\x9b", "\u2028", "\u2029", "\ue000"],
)
def test_characters_that_disguise_a_key_are_refused(character: str) -> None:
    # Each one passed before: only ASCII controls were refused, so "<id>\u202e.wav" was
    # "this contact's" file and printed (log, dlq list, console) as something else.
    key = f"{NEXT_DAY}{character}_20270101T00:05_UTC.wav"
    problem = connect_key_problem(key, RID, DEFAULT)
    assert problem == "it has a control character or a backslash"


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (f"{NEXT_DAY}_20270101T00:05_UTC.wav", None),  # the next day is the next year
        (f"{BASE}/2026/12/31/{RID}_20261231T23:59_UTC.wav", None),
        # Percent-encoding and look-alikes are literal S3 key characters (this contact's file
        # name, nothing decoded), so they cannot reach another key.
        (f"{NEXT_DAY}%2F..%2F{'x' * 8}.wav", None),
        (f"{NEXT_DAY}\u2215..\u2215x.wav", None),
        # Case: S3 keys are case-sensitive, the prefix and the id must match exactly.
        (f"Connect/acme/CallRecordings/2027/01/01/{RID}_x.wav", "not under"),
        (f"{BASE}/2027/01/01/{RID.upper()}_x.wav", "not under"),
        (f"{BASE}/2027/01/01//{RID}_x.wav", "empty"),
        (f"{NEXT_DAY}_x.wav/", "empty"),
        (f"{NEXT_DAY}/../{RID}_x.wav", "empty"),
        (f"{BASE}/2027/01/02/{RID}_x.wav", "not under"),  # two days on
        (f"{BASE}/2026/12/30/{RID}_x.wav", "not under"),  # the day before
        (f"{NEXT_DAY}0_x.wav", "file name"),  # another id that starts with this one
        (f"{NEXT_DAY}\u0660_x.wav", "file name"),  # a Unicode digit continues an id too
    ],
)
def test_keys_across_the_year_boundary(key: str, problem: str | None) -> None:
    found = connect_key_problem(key, RID, DEFAULT)
    assert found == problem if problem is None else problem in str(found)


@pytest.mark.parametrize(
    ("created", "next_day"),
    [
        (datetime(2028, 2, 28, 12, tzinfo=UTC), "2028/02/29"),  # leap day
        (datetime(2028, 2, 29, 0, tzinfo=UTC), "2028/03/01"),
        (datetime(2027, 2, 28, 23, 59, tzinfo=UTC), "2027/03/01"),  # no leap day
        (datetime(2027, 1, 31, 8, tzinfo=UTC), "2027/02/01"),
    ],
)
def test_the_next_day_across_month_ends(created: datetime, next_day: str) -> None:
    days = prefixes(created)
    assert days[1] == f"{BASE}/{next_day}/{RID}"
    assert connect_key_problem(f"{BASE}/{next_day}/{RID}_x.wav", RID, days) is None


def test_a_custom_template_with_the_id_as_a_folder() -> None:
    template = "calls/{instance}/{yyyy}/{mm}/{dd}/{recording_id}/"
    days = prefixes(datetime(2026, 12, 31, 22, tzinfo=UTC), template)
    assert days == (f"calls/acme/2026/12/31/{RID}/", f"calls/acme/2027/01/01/{RID}/")
    assert connect_key_problem(f"calls/acme/2027/01/01/{RID}/audio.wav", RID, days) is None
    # Another contact's folder, even one whose name starts with this id, is refused.
    assert "not under" in str(connect_key_problem(f"calls/acme/2027/01/01/{RID}0/a.wav", RID, days))
    assert "empty" in str(connect_key_problem(f"calls/acme/2027/01/01/{RID}//a.wav", RID, days))
