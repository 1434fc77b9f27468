"""Hostile queue messages (SPEC §2) at the parser (the same bodies through a real worker:
tests/e2e/test_hostile_messages_worker.py).

Parser level: every message case of the corpus is rejected by ``parse_message`` with
:class:`InvalidMessage` and a one-line reason that leaks nothing (or accepted, for the valid
ones). End to end: the same bodies went through one ``komorebi-worker run`` process
(harness/hostile_corpus.py); each must be in the DLQ with its reason attributes, create no row,
and leave the worker serving.
"""

from __future__ import annotations

import pytest

from tests.harness import hostile_support as hs
from tests.harness.fixtures_aws import CONNECT_ALIAS
from tests.harness.hostile_corpus import _CANARY_ID, CANARY, CASES, Case
from worker.config import KeyTemplates
from worker.custody import check_connect_audio_key
from worker.errors import InvalidMessage
from worker.keys import keys_for
from worker.messages import parse_message
from worker.recordings import parse_creation_date

MESSAGES = [case for case in CASES if case.kind == "message"]
FOREIGN_KEYS = [
    case
    for case in CASES
    if case.kind == "connect" and "connectAudioKey" in case.extra and case.outcome == "dlq"
]


@pytest.mark.parametrize("case", MESSAGES, ids=[case.name for case in MESSAGES])
def test_parser(case: Case) -> None:
    """Invalid bodies raise InvalidMessage with one clean line; valid ones parse."""
    if case.outcome == "done":
        job = parse_message(case.body)
        assert job.recording_id == case.recording_id
        assert job.call_end_seconds == pytest.approx(1.0)
        return
    with pytest.raises(InvalidMessage) as caught:
        parse_message(case.body)
    message = str(caught.value)
    assert caught.value.reason == "invalid_message"
    assert "\n" not in message and 0 < len(message) <= 300, message
    assert hs.leaks(message) == []


@pytest.mark.parametrize("case", FOREIGN_KEYS, ids=[case.name for case in FOREIGN_KEYS])
def test_foreign_connect_keys_are_refused_by_the_custody_rule(case: Case) -> None:
    """Each parses, then fails worker.custody's rule for its row (one clean line)."""
    job = parse_message(case.body)
    assert job.connect_audio_key is not None and case.recording_id is not None
    created = parse_creation_date(hs.CREATION_DATE)
    keys = keys_for(case.recording_id, hs.AGENT, created, KeyTemplates(), CONNECT_ALIAS)
    with pytest.raises(InvalidMessage) as caught:
        check_connect_audio_key(
            job.connect_audio_key, job.recording_id, keys.connect_audio_prefixes
        )
    assert "\n" not in str(caught.value) and hs.leaks(str(caught.value)) == []


def test_corpus_is_large_enough() -> None:
    """Issue 7 asks for at least 30 hostile cases; the names are unique."""
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)
    assert len({case.body for case in CASES}) == len(CASES), "bodies identify DLQ messages"
    assert CANARY.recording_id == _CANARY_ID, "connect_key_other_contact names the canary's key"
