"""Issue 19 QA, drift: the call-end sync's drift retries and drift points on what the corpus
leaves out.

- Recurring speech at the call end with drift: the agent saying one sentence twice in the
  last 12 s of a 9-minute call at 100 ppm. The end stretch's halves then peak at the other copy
  (1 s away); the drift retry reads each half's peak near the whole's lag
  (``Estimate.near_halves``), so the +-5 s search places it (before: its three retries were
  spent at the 300 ppm clamp, and the costly wide search ran on an exact timestamp).
- A call whose first stretch tells nothing of the drift: the agent silent for the first 170 s
  (the customer explains), or a conference beep in it (a tone in a room correlates at any
  phase). The drift point near the start was not confident, no drift was applied, and END
  alignment left the start off by drift times the call: 54 ms on a 9-minute call at 100 ppm,
  20 ms on a 200 s call (median 10 ms). Now more stretches, spread over the call, are measured.
- A replayed prompt in the last 20 s at -250 ppm, the timestamp 12 s early.

New voices (speech_media.HUMAN_POOLS "qa-drift"): two men reading (codec2's david4 and
vk2tpm_004) and a Mexican Spanish woman's conference prompts as the agent, French and Spanish
prompts as the customer. Long calls are rendered block by block (bench/long_speech.py).

The rules: measured, the Connect audio's placement at the start, middle and end of the call
within 20 ms of the truth (median 5 ms); otherwise the timestamp kept; never a wrong
placement.
"""

from __future__ import annotations

import functools
from pathlib import Path

import anyio
import pytest

from bench.long_speech import LongCase, LongSpec, make_long_case
from tests.harness.speech_media import (
    CaseSpec,
    alignment_errors,
    assert_within_targets,
    call_times,
    make_speech_case,
    merge_case,
    message_call_end,
)
from worker import media
from worker.media import drift, sync
from worker.observability import REGISTRY

QA_DRIFT = {"voices": -1, "pool": "qa-drift"}

# The agent's one sentence said twice, 1 s apart, 12 s before the end; 100 ppm.
END_REPEAT = LongSpec("qa-end-repeat", call_seconds=540, drift_ppm=100.0, seed=29,
                      repeat_before_end=12.0)  # fmt: skip
QUIET_START = LongSpec("qa-quiet-start", call_seconds=540, drift_ppm=100.0, seed=61,
                       agent_quiet_until=170.0)  # fmt: skip
# 200 s at 100 ppm with conference beeps among the agent's prompts; the timestamp 3 s late.
BEEP = CaseSpec("qa-drift-beep", **QA_DRIFT, seed=54, call_seconds=200, drift_ppm=100,
                container="mp4")  # fmt: skip
# The agent's last words a prompt played twice (100 s, 112 s); -250 ppm; 12 s early.
REPLAY = CaseSpec("qa-drift-replay", **QA_DRIFT, seed=56, call_seconds=120, drift_ppm=-250,
                  replay=(100.0, 112.0), container="mp4")  # fmt: skip


@pytest.fixture(scope="module")
def drift_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qa-drift")


async def _measure(case: LongCase, call_end: float) -> tuple[sync.SyncResult, float]:
    """The sync of a long case (no merge: its placement is checked against the truth)."""
    recording = media.Recording.of(await media.probe(case.recording))
    connect = media.ConnectAudio.of(await media.probe(case.connect))
    plan = media.plan_merge(recording, connect, call_end, media.MergeOptions())
    return await sync.measure(media.sync_inputs(recording, connect, plan)), plan.call_end


def _drift_outcomes() -> dict[str, float]:
    """komorebi_sync_drift_total by outcome, as scraped."""
    sample = REGISTRY.get_sample_value
    outcomes = drift.FIT_OUTCOMES
    return {o: sample("komorebi_sync_drift_total", {"outcome": o}) or 0.0 for o in outcomes}


COUNTED: dict[str, dict[str, float]] = {}  # a long case's name: its sync's drift outcomes


@functools.cache
def _long(directory: Path, spec: LongSpec) -> tuple[sync.SyncResult, list[float]]:
    """The sync on the exact call end and its placement's errors (s) against the truth at
    the start, middle and end of the Connect file (none when not measured); the drift
    outcomes it counted in :data:`COUNTED`."""
    case = make_long_case(directory, spec)
    before = _drift_outcomes()
    result, used = anyio.run(_measure, case, case.true_call_end)
    after = _drift_outcomes()
    COUNTED[spec.name] = {o: after[o] - before[o] for o in after if after[o] > before[o]}
    if not result.measured:
        return result, []
    start = used + result.offset_seconds - case.connect_duration * result.drift_ratio
    errors = [
        start + at * result.drift_ratio - (case.placement + at * case.ratio)
        for at in (0.0, case.connect_duration / 2, case.connect_duration)
    ]
    return result, errors


def test_a_sentence_repeated_at_the_end_of_a_drifting_call_is_placed_by_the_narrow_search(
    drift_dir: Path,
) -> None:
    result, errors = _long(drift_dir, END_REPEAT)
    # The wide search too would place it (the old reading's outcome), at many times the cost.
    assert result.method == "waveform", result
    assert_within_targets(errors)
    assert result.drift_ppm == pytest.approx(END_REPEAT.drift_ppm, abs=5.0), result


def test_a_drift_is_followed_when_the_agent_is_silent_for_the_first_minutes(
    drift_dir: Path,
) -> None:
    result, errors = _long(drift_dir, QUIET_START)
    assert result.measured, result
    assert_within_targets(errors)
    # Fitted from the stretches further on, and counted (the operators' view of it).
    assert COUNTED[QUIET_START.name] == {"applied": 1.0}


@pytest.mark.parametrize(
    ("spec", "timestamp_error", "expect"),
    [(BEEP, 3.0, "waveform"), (REPLAY, -12.0, "waveform_wide")],
    ids=["beep-in-the-first-stretch", "replayed-prompt-at-the-end"],
)
def test_new_voices_with_drift_are_placed_within_the_rules(
    drift_dir: Path, spec: CaseSpec, timestamp_error: float, expect: str
) -> None:
    case = make_speech_case(drift_dir, spec)
    call_end = message_call_end(case.true_call_end, timestamp_error)
    result = merge_case(case, call_end, drift_dir / f"out-{spec.name}.mp4")
    assert result.sync.method == expect, result.sync
    assert result.sync.drift_ppm == pytest.approx(spec.drift_ppm, abs=15.0), result.sync
    connect_end = result.connect_audio_offset_seconds + case.connect_duration * (
        result.sync.drift_ratio
    )
    times = call_times(case)
    assert_within_targets(alignment_errors(result.output, case, connect_end, times))
