"""Issue 19 QA (a replayed prompt), pure parts: the narrow search's window decodes the
microphone over the timestamp's whole uncertainty (RIVAL_SEARCH_SECONDS) while accepting
offsets within SEARCH_SECONDS only, and a peak anywhere in it is a rival judged by the
side-peak rule, or, when it is the best, hands the sync to the wide search."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.harness.sync_signals import RATE, bursts, delayed
from worker.media import sync
from worker.media.sync_model import (
    DECODE_MARGIN_SECONDS,
    MAX_SIDE_PEAK_RATIO,
    RIVAL_SEARCH_SECONDS,
    SEARCH_SECONDS,
    STRETCH_SECONDS,
    WIDE_REASONS,
)

ZERO_LAG = 35.5  # the Connect stretch's lag in the microphone at zero offset


def _window(rival: float | None = RIVAL_SEARCH_SECONDS) -> sync.SyncWindow:
    """A 20 s Connect stretch in 91 s of microphone: offsets +-5 s accepted, +-``rival`` s
    rivals (None: none beyond the accepted ones)."""
    return sync.SyncWindow(
        0.0, 20.0, 0, 91.0, ZERO_LAG, -5.0, 5.0, None if rival is None else -rival, rival
    )


def _microphone(reference: np.ndarray, copies: list[tuple[float, float]]) -> np.ndarray:
    """91 s of faint noise with ``reference`` at each (offset seconds, gain)."""
    total = 91 * RATE
    out = np.random.default_rng(5).standard_normal(total).astype(np.float32) * 1e-3
    for offset, gain in copies:
        out += gain * delayed(reference, (ZERO_LAG + offset) * RATE, total)
    return out


def test_the_narrow_window_decodes_the_whole_uncertainty_and_accepts_the_search() -> None:
    plan = sync.plan_window(
        call_end=600.0, recording_duration=900.0, connect_duration=580.0, rival=30.0
    )
    assert isinstance(plan, sync.SyncWindow)
    begin = 600.0 - STRETCH_SECONDS - 30.0 - DECODE_MARGIN_SECONDS
    assert plan.recording_seek == int(begin)
    assert plan.recording_seek + plan.recording_seconds == pytest.approx(630.5)
    assert (plan.min_offset, plan.max_offset) == (-SEARCH_SECONDS, SEARCH_SECONDS)
    assert plan.rival_offsets == (-30.0, 30.0)
    # Zero offset: the stretch ends at the call end.
    assert plan.recording_seek + plan.zero_lag + plan.connect_seconds == pytest.approx(600.0)


def test_the_rival_window_is_clamped_to_the_recording() -> None:
    start = sync.plan_window(
        call_end=42.0, recording_duration=900.0, connect_duration=580.0, rival=30.0
    )
    assert isinstance(start, sync.SyncWindow)
    assert start.recording_seek == 0
    assert start.rival_offsets == (-30.0, 30.0)
    early = sync.plan_window(
        call_end=20.0, recording_duration=900.0, connect_duration=580.0, rival=30.0
    )
    assert isinstance(early, sync.SyncWindow)
    assert early.rival_offsets[0] == -20.0  # the call cannot end before the recording starts
    end = sync.plan_window(
        call_end=890.0, recording_duration=900.0, connect_duration=580.0, rival=30.0
    )
    assert isinstance(end, sync.SyncWindow)
    assert end.recording_seek + end.recording_seconds == pytest.approx(900.0)
    assert (end.max_offset, end.rival_offsets[1]) == (5.0, 10.0)


def test_without_a_rival_search_the_window_is_the_narrow_one() -> None:
    kwargs = {"call_end": 600.0, "recording_duration": 900.0, "connect_duration": 580.0}
    narrow = sync.plan_window(**kwargs)
    assert narrow == sync.plan_window(**kwargs, rival=None)
    assert narrow == sync.plan_window(**kwargs, rival=1.0)  # never narrower than the search
    assert isinstance(narrow, sync.SyncWindow)
    assert narrow.rival_offsets == (narrow.min_offset, narrow.max_offset)


def test_a_copy_beyond_the_search_is_a_rival() -> None:
    """The replayed prompt: the same audio in the search (0 s) and 18 s later; the +-5 s
    search alone is confident; with the rival search (the side-peak rule) it is the wide
    search's."""
    reference = bursts(20.0, seed=11)
    signal = _microphone(reference, [(0.0, 1.0), (18.0, 1.0)])
    narrow = sync.synchronise(reference, signal, _window(rival=None))
    assert narrow.measured  # the defect this guards against
    result = sync.synchronise(reference, signal, _window())
    assert not result.measured
    assert result.reason == "rival"


def test_a_faint_echo_beyond_the_search_is_no_rival() -> None:
    """The rule is the side-peak ratio, not "any peak": a copy at a tenth of the level does
    not refuse a clear placement."""
    reference = bursts(20.0, seed=12)
    signal = _microphone(reference, [(1.25, 1.0), (-22.0, 0.1)])
    result = sync.synchronise(reference, signal, _window())
    assert result.measured
    assert result.offset_seconds == pytest.approx(1.25, abs=1e-3)


def test_the_best_peak_beyond_the_search_goes_to_the_wide_search() -> None:
    """Only a copy 20 s away (the timestamp 20 s off): not accepted, but handed over."""
    reference = bursts(20.0, seed=13)
    signal = _microphone(reference, [(-20.0, 1.0)])
    result = sync.synchronise(reference, signal, _window())
    assert not result.measured
    assert result.reason in WIDE_REASONS


def _peak(offset: float, side: float = 0.1) -> sync.Peak:
    return sync.Peak(lag=ZERO_LAG + offset, z=80.0, side_peak_ratio=side)


def test_a_higher_peak_beyond_the_search_is_out_of_range() -> None:
    """The narrow peak passes every rule, but the best over the rival offsets is 20 s away:
    the wide search's to place, whatever the halves found."""
    found = sync.Estimate(_peak(1.0), (_peak(1.0), _peak(1.0)), rival=_peak(20.0))
    result = sync.decide(found, ZERO_LAG, _window())
    assert result.reason == "out_of_range"
    assert result.estimate_seconds == pytest.approx(20.0)
    assert sync.decide(replace(found, rival=_peak(1.0)), ZERO_LAG, _window()).measured


@pytest.mark.parametrize(
    ("whole", "halves", "measured"),
    [
        (0.9, (0.9, 0.8), False),  # every part of the evidence recurs: the wide search's
        (0.9, (0.9, 0.2), True),  # one half has no rival: evidence of its own
        (0.4, (0.9, 0.9), True),  # the whole's rival below the side-peak rule
        (MAX_SIDE_PEAK_RATIO, (0.6, 0.6), True),  # the same bound as the narrow search
    ],
)
def test_a_rival_is_judged_by_the_side_peak_rule(
    whole: float, halves: tuple[float, float], measured: bool
) -> None:
    found = sync.Estimate(
        _peak(1.0),
        (_peak(1.0), _peak(1.0)),
        rival=_peak(1.0, side=whole),
        half_rival_ratios=halves,
    )
    result = sync.decide(found, ZERO_LAG, _window())
    assert result.measured is measured
    assert result.reason == ("measured" if measured else "rival")
    assert result.reason == "measured" or result.reason in WIDE_REASONS
