"""Hostile queue messages (SPEC §2) through a real worker (the parser level:
tests/unit/test_hostile_messages.py).

Parser level: every message case of the corpus is rejected by ``parse_message`` with
:class:`InvalidMessage` and a one-line reason that leaks nothing (or accepted, for the valid
ones). End to end: the same bodies went through one ``komorebi-worker run`` process
(harness/hostile_corpus.py); each must be in the DLQ with its reason attributes, create no row,
and leave the worker serving.
"""

from __future__ import annotations

import pytest

from tests.harness.hostile_corpus import CASES, Case, CorpusRun, check_case

MESSAGES = [case for case in CASES if case.kind == "message"]


@pytest.mark.parametrize("case", MESSAGES, ids=[case.name for case in MESSAGES])
def test_worker_handles_hostile_message(case: Case, hostile_run: CorpusRun) -> None:
    """The worker dead-lettered the message with its reason (or processed a valid one)."""
    check_case(hostile_run, case)
