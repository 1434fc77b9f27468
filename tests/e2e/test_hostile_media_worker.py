"""Hostile media through a real worker (the engine alone: tests/media/test_hostile_media.py).

Engine level (no AWS): each hostile recording goes through ``worker.media.merge`` with a valid
Connect WAV and must fail with its typed error and a one-line reason — or, for headers that lie
about the duration, succeed with the real duration. Playlists and concat scripts point at
``/etc/passwd`` and at a listening socket that must see no connection.

End to end: the corpus cases of kind ``media``, ``connect`` and ``row`` (harness/hostile_corpus.py)
run through one ``komorebi-worker run`` process; each case's outcome is checked here.
"""

from __future__ import annotations

import pytest

from tests.harness.hostile_corpus import CASES, CorpusRun, check_case

# --- end to end: the corpus through a real worker ---------------------------------------------

E2E = [case for case in CASES if case.kind in ("media", "connect", "row")]


@pytest.mark.parametrize("case", E2E, ids=[case.name for case in E2E])
def test_worker_handles_hostile_input(case: object, hostile_run: CorpusRun) -> None:
    """The case ended as expected: DLQ with reason / retried / DONE, row, no leak."""
    check_case(hostile_run, case)  # type: ignore[arg-type]
