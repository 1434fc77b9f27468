"""The sync's never-wrong rules (pure): when an estimate is a confident placement
(:func:`decide`), the whole decision on two decoded stretches with its drift retry
(:func:`synchronise`), and the wide search's choice among its candidates (:func:`choose_wide`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from worker.media import drift
from worker.media.sync_estimate import SignalSpectra, estimate, rms
from worker.media.sync_model import (
    AGREEMENT_SECONDS,
    DRIFT_RETRIES,
    DRIFT_RETRY_MIN,
    DRIFT_RETRY_REASONS,
    MAX_SIDE_PEAK_RATIO,
    MIN_CORRELATION,
    MIN_HALF_Z,
    MIN_PAUSE_FRACTION,
    MIN_Z,
    NEAR_MARGIN_SECONDS,
    PAUSE_DB,
    PAUSE_FRAME_SECONDS,
    SILENCE_RMS,
    SYNC_RATE,
    WIDE_DISTINCT_SECONDS,
    Estimate,
    Signal,
    SyncResult,
    SyncWindow,
)


def decide(found: Estimate, zero_lag: float, window: SyncWindow) -> SyncResult:
    """Confident -> the measured offset; otherwise the timestamp with the failed test."""
    whole = found.whole
    offset = whole.lag - zero_lag
    confidence = round(whole.z, 2)

    def fallback(reason: str) -> SyncResult:
        return SyncResult.timestamp(reason, confidence=confidence, estimate=offset)

    if whole.z < MIN_Z or found.correlation < MIN_CORRELATION:
        return fallback("low_confidence")
    if whole.side_peak_ratio > MAX_SIDE_PEAK_RATIO:
        return fallback("ambiguous")
    rival = found.rival
    if rival is not None:
        # A higher peak beyond the accepted offsets: the wide search's to place (and to find
        # any rival of its own), never accepted here.
        if not window.min_offset <= rival.lag - zero_lag <= window.max_offset:
            return SyncResult.timestamp(
                "out_of_range", confidence=round(rival.z, 2), estimate=rival.lag - zero_lag
            )
        # A rival beyond them (the same words recurring, as a replayed prompt) by the side-peak
        # rule, unless a half of the stretch has none (then that half is evidence of its own):
        # the wide search measures both places by every rule, and keeps the timestamp when
        # both are confident (its ambiguity rule).
        if rival.side_peak_ratio > MAX_SIDE_PEAK_RATIO and (
            min(found.half_rival_ratios) > MAX_SIDE_PEAK_RATIO
        ):
            return fallback("rival")
    for half in found.halves:
        if half.z < MIN_HALF_Z or abs(half.lag - whole.lag) > AGREEMENT_SECONDS:
            return fallback("halves_disagree")
    if not window.min_offset <= offset <= window.max_offset:
        return fallback("out_of_range")
    return SyncResult("waveform", offset, confidence, "measured")


def pause_fraction(reference: Signal, rate: int = SYNC_RATE) -> float:
    """The fraction of :data:`PAUSE_FRAME_SECONDS` frames more than :data:`PAUSE_DB` below the
    loudest frame: speech pauses, continuous audio (music on hold) does not."""
    frame = max(1, round(PAUSE_FRAME_SECONDS * rate))
    count = reference.size // frame
    if count == 0:
        return 0.0
    frames = reference[: count * frame].reshape(count, frame).astype(np.float64)
    levels = np.sqrt(np.mean(np.square(frames), axis=1))
    return float(np.mean(levels < float(levels.max()) * 10 ** (-PAUSE_DB / 20)))


def synchronise(reference: Signal, signal: Signal, window: SyncWindow) -> SyncResult:
    """The whole pure decision on two decoded stretches (see :func:`measure`).

    A stretch drifting against the microphone (issue 19: 100 ppm is 3 ms over 30 s) smears
    its correlation, which can fail the rules although the peak is in place. Then the halves'
    lags tell the drift inside the stretch (each half's peak within a plausible drift of the
    whole's lag, :attr:`Estimate.near_halves`: a half's own best peak can be a phrase that
    recurs seconds away); when that is a plausible clock error, the Connect
    stretch is stretched by it (:func:`worker.media.drift.stretch`) and measured once more under the
    same rules, up to :data:`DRIFT_RETRIES` times (each by the drift the last one's halves
    still show). The offset is still the stretch's end's.

    A half smeared by the drift (a 15 s half slides 4 ms at 290 ppm: many periods at
    telephony frequencies) peaks where its clearest speech lies, not at its middle, so the
    halves misjudge a large drift, up to twice it (issue 19 QA: 591 ppm for 290). So each
    retry's drift comes from the readings so far (:func:`_next_drift`), never beyond a
    plausible clock error (:data:`worker.media.drift.MAX_DRIFT_PPM`).
    """
    spectra: SignalSpectra = {}  # the signal's, kept for the retries (the same signal)
    result, found = _synchronise(reference, signal, window, spectra)
    if found is None or result.measured or result.reason not in DRIFT_RETRY_REASONS:
        return result
    tried: list[tuple[float, float]] = []  # (ppm stretched by, ppm its halves still read)
    applied = 0.0
    for _ in range(DRIFT_RETRIES):
        left = drift_reading(found)
        if left is None:
            return result
        tried.append((applied, left))
        ppm = _next_drift(tried)
        if abs(ppm) < DRIFT_RETRY_MIN or any(ppm == done for done, _ in tried):
            return result  # too small to smear, or tried already (a reading past the limit)
        stretched = drift.stretch(reference, 1.0 + ppm * 1e-6)
        retry, again = _synchronise(stretched, signal, window, spectra)
        if retry.measured:
            # The stretched reference starts where the plain one did and ends rate * length
            # later. drift_ppm says by how much it was stretched (the caller may fit its own).
            end_shift = ppm * 1e-6 * reference.size / SYNC_RATE
            offset = retry.offset_seconds + end_shift
            return replace(retry, offset_seconds=offset, drift_ppm=ppm)
        if again is None or retry.reason not in DRIFT_RETRY_REASONS:
            return result
        applied, found = ppm, again
    return result


def drift_reading(found: Estimate) -> float | None:
    """The drift (ppm) left inside an estimate's (stretched) stretch, from its halves' lags
    near the whole's (:attr:`Estimate.near_halves`; a half's own best peak elsewhere says
    nothing of the drift); None when a half is too weak to tell (pure)."""
    first, second = found.near_halves or found.halves
    distance = found.half_centres[1] - found.half_centres[0]
    if min(first.z, second.z) < MIN_HALF_Z or distance <= 0:
        return None
    return (second.lag - first.lag) / distance * 1e6


def _next_drift(tried: list[tuple[float, float]]) -> float:
    """The drift (ppm) to stretch by next, from the drifts tried and what their halves still
    read (pure): the last drift plus its reading (their product's term is below 0.1 ppm);
    but when the last two readings differ in sign, the drift lies between their drifts (the
    halves overshot), so where the line through the two readings crosses zero. Never beyond
    :data:`worker.media.drift.MAX_DRIFT_PPM`."""
    done, left = tried[-1]
    wanted = done + left
    if len(tried) > 1:
        before, then = tried[-2]
        if then * left < 0:
            wanted = done - left * (done - before) / (left - then)
    return float(np.clip(wanted, -drift.MAX_DRIFT_PPM, drift.MAX_DRIFT_PPM))


def _synchronise(
    reference: Signal, signal: Signal, window: SyncWindow, spectra: SignalSpectra | None = None
) -> tuple[SyncResult, Estimate | None]:
    if rms(reference) < SILENCE_RMS:
        return SyncResult.timestamp("silent_connect"), None
    if rms(signal) < SILENCE_RMS:
        return SyncResult.timestamp("silent_recording"), None
    if pause_fraction(reference) < MIN_PAUSE_FRACTION:
        return SyncResult.timestamp("no_pauses"), None
    rivals = window.rival_offsets
    found = estimate(
        reference,
        signal,
        min_lag=window.zero_lag + window.min_offset,
        max_lag=window.zero_lag + window.max_offset,
        rivals=(window.zero_lag + rivals[0], window.zero_lag + rivals[1]),
        cache=spectra,
        near_seconds=drift.MAX_DRIFT_PPM * 1e-6 * reference.size / SYNC_RATE + NEAR_MARGIN_SECONDS,
    )
    return decide(found, window.zero_lag, window), found


def choose_wide(narrow: SyncResult, confident: list[SyncResult]) -> SyncResult:
    """The wide search's answer from its candidates' fine passes (pure): the one confident
    placement, else the timestamp (``wide_<narrow reason>`` when none was confident,
    ``wide_ambiguous`` when two distinct places were)."""
    if not confident:
        return SyncResult.timestamp(
            f"wide_{narrow.reason}", confidence=narrow.confidence, estimate=narrow.estimate_seconds
        )
    best = max(confident, key=lambda r: r.confidence)
    if any(abs(r.offset_seconds - best.offset_seconds) > WIDE_DISTINCT_SECONDS for r in confident):
        return SyncResult.timestamp(
            "wide_ambiguous", confidence=best.confidence, estimate=best.offset_seconds
        )
    return SyncResult(
        "waveform_wide", best.offset_seconds, best.confidence, "measured", drift_ppm=best.drift_ppm
    )
