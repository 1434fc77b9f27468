"""Hostile queue messages (SPEC §2): parser level, then through a real worker.

Parser level: every message case of the corpus is rejected by ``parse_message`` with
:class:`InvalidMessage` and a one-line reason that leaks nothing (or accepted, for the valid
ones). End to end: the same bodies went through one ``komorebi-worker run`` process
(tests/hostile_corpus.py); each must be in the DLQ with its reason attributes, create no row,
and leave the worker serving.
"""

from __future__ import annotations

import pytest

from tests import hostile_support as hs
from tests.hostile_corpus import CASES, Case, CorpusRun, check_case
from worker.errors import InvalidMessage
from worker.messages import parse_message

MESSAGES = [case for case in CASES if case.kind == "message"]


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


def test_corpus_is_large_enough() -> None:
    """Issue 7 asks for at least 30 hostile cases; the names are unique."""
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)
    assert len({case.body for case in CASES}) == len(CASES), "bodies identify DLQ messages"


@pytest.mark.parametrize("case", MESSAGES, ids=[case.name for case in MESSAGES])
def test_worker_handles_hostile_message(case: Case, hostile_run: CorpusRun) -> None:
    """The worker dead-lettered the message with its reason (or processed a valid one)."""
    check_case(hostile_run, case)
