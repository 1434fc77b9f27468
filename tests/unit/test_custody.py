"""worker.custody: a message's connectAudioKey must be this contact's Connect recording
(issue 16, item 6). Pure: the real key layout (worker.recordings.keys_for), no AWS."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.config import KeyTemplates
from worker.custody import QUOTED_KEY_CHARS, check_connect_audio_key, connect_key_problem
from worker.errors import InvalidMessage
from worker.keys import ObjectSummary, choose_connect_audio, keys_for

RID = "6f1c2a7e-0b1d-4c55-9a3e-2f0d9b8c1e42"
OTHER = "0a9d3e11-77c4-4b2a-8f6e-5d1c0b7a9e33"
CREATED = datetime(2026, 11, 27, 23, 50, tzinfo=UTC)
BASE = "connect/acme/CallRecordings"
PREFIXES = keys_for(RID, "agent-7", CREATED, KeyTemplates(), "acme").connect_audio_prefixes


def test_the_prefixes_are_the_row_day_and_the_next() -> None:
    prefixes = PREFIXES
    assert prefixes == (f"{BASE}/2026/11/27/{RID}", f"{BASE}/2026/11/28/{RID}")


@pytest.mark.parametrize(
    "key",
    [
        f"{BASE}/2026/11/27/{RID}_20261127T23:50_UTC.wav",
        f"{BASE}/2026/11/28/{RID}_20261127T23:50_UTC.wav",  # filed under the day it ended
        f"{BASE}/2026/11/27/{RID}.wav",
    ],
)
def test_keys_the_prefix_search_could_find_are_accepted(key: str) -> None:
    assert connect_key_problem(key, RID, PREFIXES) is None
    check_connect_audio_key(key, RID, PREFIXES)
    # The same rule as the search: the search would pick this key among candidates.
    assert choose_connect_audio([ObjectSummary(key, 10, CREATED)], recording_id=RID).key == key


@pytest.mark.parametrize(
    ("key", "why"),
    [
        # Another contact's call, the same day, same instance.
        (f"{BASE}/2026/11/27/{OTHER}_20261127T23:50_UTC.wav", "Connect prefix"),
        # A contact whose id merely starts with ours (prefix lookalike).
        (f"{BASE}/2026/11/27/{RID}0_20261127T23:50_UTC.wav", "file name"),
        (f"{BASE}/2026/11/27/{RID}-b_20261127T23:50_UTC.wav", "file name"),
        # Another instance's prefix; an instance alias that merely starts with ours.
        (f"connect/other/CallRecordings/2026/11/27/{RID}_20261127T23:50_UTC.wav", "prefix"),
        (f"connect/acme2/CallRecordings/2026/11/27/{RID}_20261127T23:50_UTC.wav", "prefix"),
        # Another day (two days later; the day before).
        (f"{BASE}/2026/11/29/{RID}_20261129T10:00_UTC.wav", "prefix"),
        (f"{BASE}/2026/11/26/{RID}_20261126T10:00_UTC.wav", "prefix"),
        # Traversal out of the prefix, or into another contact's file from inside it.
        (f"{BASE}/2026/11/27/{RID}/../{OTHER}_20261127T23:50_UTC.wav", "'..'"),
        (f"{BASE}/2026/11/27/{RID}_x/../../27/{OTHER}.wav", "'..'"),
        ("../../../../etc/passwd", "'..'"),
        (f"{BASE}/2026/11/27/{RID}//x.wav", "empty"),
        (f"{BASE}/2026/11/27/{RID}/./x.wav", "'.'"),
        (f"{BASE}/2026/11/27/{RID}\\..\\{OTHER}.wav", "backslash"),
        (f"{BASE}/2026/11/27/{RID}_\x1b[2J.wav", "control"),
        # Under our prefix but in a folder that is not ours.
        (f"{BASE}/2026/11/27/{RID}_x/{OTHER}.wav", "file name"),
        # Not the Connect bucket's layout at all.
        (f"2026/11/27/agent-7/{RID}.mp4", "prefix"),
        (f"/{BASE}/2026/11/27/{RID}.wav", "empty"),
    ],
)
def test_anything_else_is_an_invalid_message(key: str, why: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        check_connect_audio_key(key, RID, PREFIXES)
    message = str(caught.value)
    assert caught.value.reason == "invalid_message"
    assert why in message, message
    assert "\n" not in message and "\x1b" not in message and len(message) < 300


def test_a_huge_hostile_key_is_quoted_cut_and_escaped() -> None:
    key = "connect/other/" + "\ud800" + "x" * 1000
    with pytest.raises(InvalidMessage) as caught:
        check_connect_audio_key(key, RID, PREFIXES)
    message = str(caught.value)
    assert "x" * QUOTED_KEY_CHARS not in message and len(message) < 250
    assert "\\ud800" in message  # escaped, not the raw surrogate
    message.encode()


def test_a_template_with_the_id_as_a_folder() -> None:
    templates = KeyTemplates(
        connect_audio_prefix="calls/{instance}/{yyyy}/{mm}/{dd}/{recording_id}/"
    )
    prefixes = keys_for(RID, "a", CREATED, templates, "acme").connect_audio_prefixes
    assert connect_key_problem(f"calls/acme/2026/11/28/{RID}/audio.wav", RID, prefixes) is None
    assert connect_key_problem(f"calls/acme/2026/11/28/{OTHER}/audio.wav", RID, prefixes)
