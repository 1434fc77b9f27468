"""Issue 19's pure parts: the wide search's candidates, the drift fit and stretch, the
placement plan (where the Connect audio ends, how it is resampled). Milliseconds each; the
real-media checks are in test_sync_speech.py.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.harness.media_models import connect, recording
from tests.harness.sync_signals import RATE, bursts, delayed, window
from worker.media import drift, sync, sync_decide, sync_estimate, sync_model, sync_search
from worker.media.graph import _resample, build_audio_graph, connect_resample_steps
from worker.media.plan import (
    SEEK_MARGIN_SECONDS,
    MergeOptions,
    plan_merge,
    recording_seek_seconds,
)
from worker.media.run import measured_plan
from worker.media.sync_search import ENVELOPE_RATE, Candidate

# --- candidates ------------------------------------------------------------------------------


def test_top_peaks_are_best_first_and_apart() -> None:
    scores = np.array([0.1, 0.9, 0.85, 0.2, 0.3, 0.7, 0.1, 0.95])
    assert sync_search.top_peaks(scores, count=3, separation=2) == [
        (7, 0.95),
        (1, 0.9),
        (5, 0.7),
    ]
    assert sync_search.top_peaks(np.full(4, -np.inf), count=2, separation=1) == []


def test_merge_candidates_keeps_the_best_distinct_places() -> None:
    kept = [Candidate(10.0, 0.8), Candidate(50.0, 0.3)]
    new = [Candidate(10.4, 0.9), Candidate(80.0, 0.5)]
    merged = sync_search.merge_candidates(kept, new, count=3, separation=1.0)
    assert merged == [Candidate(10.4, 0.9), Candidate(80.0, 0.5), Candidate(50.0, 0.3)]


def _search(signal: np.ndarray, reference: np.ndarray, chunks: list[int]) -> list[Candidate]:
    search = sync_search.EnvelopeSearch(sync_search.envelope(reference), block=4096)
    at = 0
    for size in chunks:
        search.feed(signal[at : at + size])
        at += size
    search.feed(signal[at:])
    return search.finish()


@pytest.mark.parametrize("true_start", [3.0, 97.123, 171.5])
def test_envelope_search_finds_the_stretch_anywhere_in_a_long_signal(true_start: float) -> None:
    """A 20 s stretch inside 200 s of other bursts plus noise: found within 10 ms, whatever
    the chunking of the stream (blocks of 8 s here: the block seams are crossed)."""
    rng = np.random.default_rng(3)
    reference = bursts(20.0, seed=1)
    signal = bursts(200.0, seed=2) * 0.5
    signal += delayed(reference * 0.4, true_start * RATE, signal.size)
    signal += (rng.standard_normal(signal.size) * 0.003).astype(np.float32)
    one = _search(signal, reference, [])
    chunked = _search(signal, reference, [7, 1001, 33333, 4096 * 16 + 3] * 20)
    assert one[0].seconds == pytest.approx(true_start, abs=0.010)
    assert [c.seconds for c in chunked] == [c.seconds for c in one]
    assert one[0].score > 1.5 * one[1].score


def test_envelope_search_holds_one_block_whatever_the_length() -> None:
    reference = bursts(10.0, seed=1)
    search = sync_search.EnvelopeSearch(sync_search.envelope(reference), block=4096)
    chunk = bursts(16.0, seed=4)
    for _ in range(40):  # 640 s
        search.feed(chunk)
        assert search._buffer.size < 4096 + reference.size // sync_search.ENVELOPE_FRAME
    assert search.frames == 40 * chunk.size // sync_search.ENVELOPE_FRAME
    assert len(search.finish()) == sync_search.CANDIDATES


def test_envelope_search_respects_the_lag_bound() -> None:
    reference = bursts(10.0, seed=1)
    signal = delayed(reference, 50.0 * RATE, 80 * RATE)
    search = sync_search.EnvelopeSearch(sync_search.envelope(reference), max_lag_seconds=40.0)
    search.feed(signal)
    assert all(c.seconds <= 40.0 for c in search.finish())
    assert ENVELOPE_RATE == RATE // sync_search.ENVELOPE_FRAME


def test_envelope_search_finds_a_reference_that_starts_before_the_signal() -> None:
    """The Connect recording began 6 s before the screen recording: its first 6 s face
    nothing, and the search (allowed negative lags) still finds it."""
    reference = bursts(20.0, seed=1)
    signal = bursts(60.0, seed=2) * 0.3
    signal[: 14 * RATE] += reference[6 * RATE :]
    search = sync_search.EnvelopeSearch(sync_search.envelope(reference), min_lag_seconds=-14.0)
    search.feed(signal)
    assert search.finish()[0].seconds == pytest.approx(-6.0, abs=0.004)


# --- the wide search's rule ------------------------------------------------------------------

NARROW = sync.SyncResult.timestamp("low_confidence", confidence=4.0, estimate=1.5)


def _found(offset: float, z: float) -> sync.SyncResult:
    return sync.SyncResult("waveform", offset, z, "measured")


def test_one_confident_candidate_is_the_answer() -> None:
    chosen = sync.choose_wide(NARROW, [_found(-30.0021, 300.0)])
    assert (chosen.method, chosen.reason, chosen.offset_seconds) == (
        "waveform_wide",
        "measured",
        -30.0021,
    )
    assert chosen.measured


def test_no_confident_candidate_keeps_the_timestamp_with_the_narrow_reason() -> None:
    chosen = sync.choose_wide(NARROW, [])
    assert (chosen.method, chosen.reason, chosen.offset_seconds) == (
        "timestamp",
        "wide_low_confidence",
        0.0,
    )
    assert not chosen.measured


def test_two_confident_places_are_ambiguous() -> None:
    same = sync.choose_wide(NARROW, [_found(-8.0, 200.0), _found(-8.001, 150.0)])
    assert same.method == "waveform_wide" and same.offset_seconds == -8.0
    two = sync.choose_wide(NARROW, [_found(-8.0, 200.0), _found(12.0, 150.0)])
    assert (two.method, two.reason) == ("timestamp", "wide_ambiguous")


def test_plan_window_narrows_to_the_fine_search() -> None:
    fine = sync.plan_window(
        call_end=100.0, recording_duration=200.0, connect_duration=60.0, search=1.0
    )
    assert isinstance(fine, sync.SyncWindow)
    assert (fine.min_offset, fine.max_offset) == (-1.0, 1.0)
    assert fine.recording_seek == 68  # 100 - 30 - 1 - 0.5, floored
    assert fine.zero_lag == pytest.approx(100.0 - 30.0 - 68)


def test_plan_stretch_places_an_inner_stretch_or_refuses() -> None:
    window = sync.plan_stretch(
        connect_start=0.5, length=30.0, placement=3.0, search=0.1, recording_duration=100.0
    )
    assert window is not None
    assert window.recording_seek == 2 and window.zero_lag == pytest.approx(1.5)
    assert (window.min_offset, window.max_offset) == (-0.1, 0.1)
    outside = sync.plan_stretch(
        connect_start=0.0, length=30.0, placement=-0.05, search=0.1, recording_duration=100.0
    )
    assert outside is None


def test_one_recurring_loud_utterance_is_not_an_alignment() -> None:
    """Most of the stretch's energy is one utterance (a recorded prompt) that the microphone
    also holds, 2 s away from where the rest of the stretch would be: the energy halves both
    fall inside it and agree, but the rest of the stretch matches nothing there."""
    rng = np.random.default_rng(9)
    prompt = bursts(8.0, seed=5) * 6.0
    reference = bursts(24.0, seed=1)
    reference[8 * RATE : 16 * RATE] += prompt
    signal = bursts(31.0, seed=2) * 0.5  # another conversation...
    at = int((5.5 + 8.0 + 2.0) * RATE)  # ...with the prompt 2 s off its place
    signal[at : at + prompt.size] += prompt * 0.3
    signal += (rng.standard_normal(signal.size) * 0.003).astype(np.float32)
    result = sync.synchronise(reference, signal, window())
    assert (result.method, result.reason) == ("timestamp", "low_confidence"), result
    assert result.estimate_seconds == pytest.approx(2.0, abs=0.01)  # the prompt's place


# --- drift -----------------------------------------------------------------------------------


def _points(ppm: float, times: list[float], noise: list[float] | None = None) -> list[drift.Point]:
    noise = noise or [0.0] * len(times)
    return [drift.Point(t, 3.0 + ppm * 1e-6 * t + n) for t, n in zip(times, noise, strict=True)]


def test_drift_fit_applies_a_plausible_drift_through_the_anchor() -> None:
    points = _points(80.0, [3585.0, 15.0, 1800.0], [0.0, 0.0003, -0.0002])
    fitted = drift.fit(points, points[0])
    assert fitted.reason == "applied"
    assert fitted.ppm == pytest.approx(80.0, abs=0.5)
    # The line passes through the anchor (the call end's stretch).
    at_anchor = fitted.placement + fitted.ppm * 1e-6 * 3585.0
    assert at_anchor == pytest.approx(points[0].placement, abs=1e-9)
    assert fitted.ratio == pytest.approx(1 + fitted.ppm * 1e-6)


@pytest.mark.parametrize(
    ("points", "reason"),
    [
        (_points(80.0, [900.0]), "too_few"),
        (_points(80.0, [900.0, 880.0]), "too_few"),  # 20 s apart: cannot tell drift
        (_points(2.0, [900.0, 15.0]), "none"),  # 1.8 ms over the call: one placement
        (_points(400.0, [900.0, 15.0]), "implausible"),
        (_points(80.0, [900.0, 15.0, 450.0], [0.0, 0.0, 0.02]), "inconsistent"),
    ],
)
def test_drift_fit_refuses(points: list[drift.Point], reason: str) -> None:
    assert reason in drift.FIT_OUTCOMES  # each is a label of komorebi_sync_drift_total
    fitted = drift.fit(points, points[0])
    assert (fitted.reason, fitted.ppm) == (reason, 0.0)
    assert fitted.placement == points[0].placement


def test_measurement_times() -> None:
    assert drift.measurement_times(0.5, 60.0, 30.0) == []  # too short to see drift
    # An 85 s call: its start's stretch 54.5 s from the call end's (issue 19 QA).
    assert drift.measurement_times(0.5, 85.0, 30.0) == [0.5]
    assert drift.measurement_times(0.5, 200.0, 30.0) == [0.5]
    assert drift.measurement_times(0.5, 3600.0, 30.0) == [0.5, 0.5 + (3599.5 - 30.0) / 2]
    assert drift.slope(_points(55.0, [10.0, 500.0])) * 1e6 == pytest.approx(55.0)


def test_later_times_spread_over_the_overlap_while_the_span_allows() -> None:
    # Up to four after the first, a stretch apart at least, the last ending LATER_SPAN_SECONDS
    # (60 s) before the call end's stretch.
    assert drift.later_times(0.5, 200.0, 30.0) == [30.5, 60.5, 90.5]
    assert drift.later_times(0.5, 540.5, 30.0) == [113.0, 225.5, 338.0, 450.5]
    assert drift.later_times(0.5, 120.0, 30.0) == []
    assert drift.later_times(0.5, 150.0, 30.0) == [30.5]


def test_stretch_lines_a_drifting_signal_up_again() -> None:
    """A 30 s stretch recorded 200 ppm slow: plain, its halves disagree by ~3 ms; stretched
    by the drift, both halves find the same lag to a tenth of a millisecond."""
    reference = bursts(30.0, seed=1)
    ratio = 1 + 200e-6
    drifted = drift.stretch(reference, ratio)
    assert drifted.size == int(reference.size * ratio)
    signal = delayed(drifted * 0.5, 2.0 * RATE, 36 * RATE)

    def halves(ref: np.ndarray) -> tuple[float, float]:
        found = sync.estimate(ref, signal, min_lag=1.5, max_lag=2.5)
        return found.halves[0].lag, found.halves[1].lag

    first, second = halves(reference)
    assert abs(second - first) > 0.002
    first, second = halves(drift.stretch(reference, ratio))
    assert first == pytest.approx(2.0, abs=1e-4) and second == pytest.approx(2.0, abs=1e-4)


@pytest.mark.parametrize("ppm", [250.0, -200.0, 290.0, 100.0, -300.0])
def test_stretch_is_the_windowed_sinc_interpolation_sample_by_sample(ppm: float) -> None:
    """The fast stretch (sines and cosines once per sample) equals the interpolator written
    out tap by tap, to float32 rounding: also where ``j / ratio`` lands a hair below a
    sample (250 ppm: sample 8002 is 8000 - 1e-12), which a sine of the whole fraction loses."""
    rng = np.random.default_rng(3)
    signal = rng.standard_normal(20000).astype(np.float32)
    ratio = 1 + ppm * 1e-6
    count = int(signal.size * ratio)
    position = np.arange(count) / ratio
    base = np.floor(position).astype(np.int64)
    expected = np.zeros(count)
    half = drift.SINC_TAPS // 2
    for tap in range(-half + 1, half + 1):
        index = base + tap
        inside = (index >= 0) & (index < signal.size)
        distance = position - index
        weight = np.sinc(distance) * (0.5 + 0.5 * np.cos(np.pi * distance / half))
        expected[inside] += signal[index[inside]] * weight[inside]
    got = drift.stretch(signal, ratio)
    assert got.size == count
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def _loud_ends(ppm: float) -> tuple[np.ndarray, np.ndarray]:
    """A 12 s Connect stretch whose speech is loudest in its first and last 2 s, and the
    microphone holding it 5.5 s in, drifting by ``ppm`` (and a little noise)."""
    reference = bursts(12.0, seed=1)
    seconds = np.arange(reference.size) / RATE
    reference *= np.where((seconds < 2) | (seconds > 10), 1.0, 0.15).astype(np.float32)
    signal = delayed(drift.stretch(reference, 1 + ppm * 1e-6) * 0.5, 5.5 * RATE, 23 * RATE)
    noise = np.random.default_rng(1).standard_normal(signal.size) * 0.002
    return reference, signal + noise.astype(np.float32)


@pytest.mark.parametrize("ppm", [290.0, -290.0, 150.0])
def test_a_large_drift_is_followed_though_the_halves_misread_it(ppm: float) -> None:
    """Issue 19 QA: smeared by the drift, each half peaks at its loud end, not at its middle,
    so the halves read the drift 1.7 times too large (290 ppm reads ~490: the retry gave up;
    150 reads ~250, and each retry then overshot the other way). Retried within a plausible
    clock error, then where its halves' readings cross zero: placed to 0.1 ms."""
    reference, signal = _loud_ends(ppm)
    found = sync.estimate(reference, signal, min_lag=0.5, max_lag=10.5)
    first, second = found.halves
    read = (second.lag - first.lag) / (found.half_centres[1] - found.half_centres[0]) * 1e6
    assert 1.5 < read / ppm < 2.0
    result = sync.synchronise(reference, signal, window())
    assert (result.method, result.reason) == ("waveform", "measured"), result
    assert result.drift_ppm == pytest.approx(ppm, abs=15.0)
    # The offset is the stretch's end's: zero at its start, the drift over 12 s at its end.
    assert result.offset_seconds == pytest.approx(ppm * 1e-6 * 12.0, abs=1e-4)


@pytest.mark.parametrize("ppm", [400.0, -400.0])
def test_a_drift_beyond_a_plausible_clock_error_is_never_applied(ppm: float) -> None:
    """400 ppm: the halves read ~680; the retries stay within MAX_DRIFT_PPM and the rules
    refuse the smeared rest: the timestamp."""
    result = sync.synchronise(*_loud_ends(ppm), window())
    assert (result.method, result.drift_ppm) == ("timestamp", 0.0), result


def test_a_peak_within_a_sub_range_is_scored_against_the_whole_range() -> None:
    """``_peak(within=...)``: the best lag inside the sub-range (not the range's best), its
    z against the whole range's spread, as a half's near peak is read (issue 19)."""
    rng = np.random.default_rng(5)
    correlation = rng.standard_normal(4000) * 0.01
    correlation[3000] = 1.0  # the range's best: a recurring phrase, far away
    correlation[1000:1003] = (0.3, 0.5, 0.4)  # the drifting stretch's own, near the whole
    plain = correlation.copy()
    best = sync_estimate._peak((correlation, plain), 0, 3999, RATE)
    near = sync_estimate._peak((correlation, plain), 0, 3999, RATE, within=(900, 1100))
    assert best.lag == pytest.approx(3000 / RATE, abs=0.5 / RATE)
    # The parabola through 0.3, 0.5, 0.4 peaks 1/6 of a sample after 1001.
    assert near.lag == pytest.approx((1001 + 1 / 6) / RATE, abs=1e-9)
    assert near.z > 2 * sync_model.MIN_HALF_Z  # 0.5 over a spread of ~0.02 (the far peak in it)


def _recurring(found: sync.Estimate) -> sync.Estimate:
    """``found`` with its second half's own best peak moved 2 s away (a phrase recurring
    there), its near peaks kept as measured: the 60-minute call's end stretch at ts+0."""
    first, second = found.halves
    moved = sync.Peak(second.lag + 2.0, second.z, 1.8)
    return replace(found, halves=(first, moved))


@pytest.mark.parametrize("ppm", [100.0, -150.0])
def test_the_drift_is_read_from_the_halves_near_the_whole(ppm: float) -> None:
    """Issue 19: a half whose own best peak was a phrase recurring 2 s away read 133,000 ppm
    (the retries were spent at the 300 ppm clamp); its peak near the whole's lag reads the
    drift, as the halves read it when nothing recurs (smeared halves read it up to twice too
    large on this noise: :func:`_next_drift`'s business)."""
    reference = bursts(30.0, seed=4)
    signal = delayed(drift.stretch(reference, 1 + ppm * 1e-6) * 0.5, 5.5 * RATE, 41 * RATE)
    found = sync.estimate(reference, signal, min_lag=0.5, max_lag=10.5, near_seconds=0.010)
    assert found.near_halves == found.halves  # nothing recurs: the same peaks
    reading = sync_decide.drift_reading(found)
    assert reading is not None and 1.0 <= reading / ppm <= 2.0
    stolen = _recurring(found)
    assert abs(stolen.halves[1].lag - stolen.whole.lag) > 1.0
    assert sync_decide.drift_reading(stolen) == reading
    # Without the near peaks (the reading before): the far peak's 133,000 ppm.
    assert abs(sync_decide.drift_reading(replace(stolen, near_halves=None)) or 0) > 1e5
    # Not searched: the halves' own peaks, as before.
    plain = sync.estimate(reference, signal, min_lag=0.5, max_lag=10.5)
    assert plain.near_halves is None and plain.halves == found.halves


# --- the placement plan ----------------------------------------------------------------------


def test_a_silent_recording_leaves_no_candidate_worth_measuring() -> None:
    reference = bursts(20.0, seed=3)
    search = sync_search.EnvelopeSearch(sync_search.envelope(reference), block=4096)
    search.feed(np.zeros(60 * RATE, np.float32))  # a microphone of digital silence
    candidates = search.finish()
    assert candidates and all(c.score == 0.0 for c in candidates)
    assert sync_search.worth_measuring(candidates, sync.WIDE_RIVAL_SCORE) == []
    kept = [Candidate(10.0, 0.9), Candidate(20.0, 0.5), Candidate(30.0, 0.6)]
    assert sync_search.worth_measuring(kept, 0.6) == [Candidate(10.0, 0.9), Candidate(30.0, 0.6)]


def test_plan_merge_ends_the_connect_audio_where_it_was_found() -> None:
    options = MergeOptions()
    plan = plan_merge(recording(duration=60.0), connect(30.0), 50.0, options, connect_end=40.0)
    rate = plan.sample_rate
    assert (plan.call_end, plan.connect_end, plan.offset) == (50.0, 40.0, 10.0)
    assert plan.connect_end_samples == 40 * rate
    assert plan.tail_samples == 20 * rate  # the recording's own audio from the Connect end on
    assert recording_seek_seconds(plan) == 40 - SEEK_MARGIN_SECONDS
    # The timestamp's plan is unchanged: the Connect audio ends at the call end.
    plain = plan_merge(recording(duration=60.0), connect(30.0), 50.0, options)
    assert (plain.connect_end, plain.connect_end_samples) == (50.0, 50 * rate)


def _synced(method: sync.SyncMethod, offset: float, ppm: float = 0.0) -> sync.SyncResult:
    return sync.SyncResult(method, offset, 300.0, "measured", drift_ppm=ppm)


@pytest.mark.parametrize(
    ("synced", "call_end", "connect_end"),
    [
        (_synced("waveform", 0.35), 50.35, 50.35),  # +-5 s: the call end itself
        (_synced("waveform_wide", -30.0), 50.0, 20.0),  # early stop: the call end stays
        (_synced("waveform_wide", 7.5), 57.5, 57.5),  # the timestamp was early
    ],
)
def test_placed_plan(synced: sync.SyncResult, call_end: float, connect_end: float) -> None:
    options = MergeOptions()
    rec, conn = recording(duration=60.0), connect(15.0)
    plan = plan_merge(rec, conn, 50.0, options)
    placed = measured_plan(rec, conn, plan, synced, options)
    assert (placed.call_end, placed.connect_end) == pytest.approx((call_end, connect_end))
    assert placed.offset == pytest.approx(connect_end - 15.0)


def test_drift_stretches_the_connect_audio_inside_the_graph() -> None:
    options = MergeOptions()
    rec, conn = recording(duration=60.0), connect(40.0)
    plan = plan_merge(rec, conn, 50.0, options)
    placed = measured_plan(rec, conn, plan, _synced("waveform", 0.0, 100.0), options)
    assert placed.drift_ratio == pytest.approx(1.0001)
    assert placed.offset == pytest.approx(50.0 - 40.0 * 1.0001)
    steps = connect_resample_steps(placed)
    assert steps[0] == "asetpts=PTS*1.000100000"
    assert "min_comp=0.0005:max_soft_comp=0.001:first_pts=0" in steps[1]
    graph = build_audio_graph(
        placed, align="auto", recording_audio=rec.audio, connect_audio=conn.audio
    )
    assert "asetpts=PTS*1.000100000,aresample=" in graph
    assert connect_resample_steps(plan) == [_resample(plan)]  # no drift: as before
