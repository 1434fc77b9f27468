"""Clock drift between the Connect audio and the recording (issue 19), pure.

The browser's audio clock and Amazon Connect's differ by tens of ppm: END alignment is exact
at the call end and off by ``drift * duration`` at the start (80 ppm over an hour: 290 ms).
The sync measures the Connect audio's placement at several points of the overlap (each a
confident fine-pass measurement); this module fits the line through them and says whether, and
by how much, to stretch the Connect audio.

A placement ``p(t)`` is the recording time of the Connect file's t=0 as measured by a stretch
centred at Connect time ``t``; with a drift ``k`` (the Connect clock runs ``1 + k`` times too
fast against the recording's) the measurements lie on ``p(t) = p0 + k t``, and the Connect
audio belongs at recording time ``p0 + t (1 + k)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MAX_DRIFT_PPM = 300.0  # a plausible clock error (crystals: tens of ppm); never apply more
# Placements this close are one placement (measurement noise is ~0.1 ms on speech).
MIN_DISAGREEMENT_SECONDS = 0.002
FIT_TOLERANCE_SECONDS = 0.004  # every point must lie this close to the fitted line
# Points closer than this in Connect time cannot tell drift. 30 s: measurement noise is ~0.1 ms,
# 3 ppm over 30 s; an overlap must leave this much between the start's stretch and the call
# end's (issue 19 QA: at 60 s, calls under 90.5 s got no drift point and END alignment left
# 85 s at 250 ppm 20 ms off at the start, 88 s at 120 ppm a median of 5.1 ms).
MIN_SPAN_SECONDS = 30.0
MIDDLE_FROM_SECONDS = 600.0  # overlaps this long also get a middle measurement
# When no measurement point was confident (the agent silent while the customer explains, a
# beep), this many more stretches are measured, spread over the rest of the overlap.
LATER_POINTS = 4
LATER_SPAN_SECONDS = 60.0  # ... the last of them starting this long before the call end's
# Every outcome of a drift measurement (the `outcome` label of komorebi_sync_drift_total):
# :func:`fit`'s reasons, and "short" when the overlap leaves no room for a second stretch.
FIT_OUTCOMES = ("applied", "none", "too_few", "inconsistent", "implausible", "short")
SINC_TAPS = 16  # the windowed-sinc interpolator of :func:`stretch` (flat to ~0.8 Nyquist)


@dataclass(frozen=True)
class Point:
    """One confident measurement: Connect time of the stretch's centre, measured placement."""

    connect_seconds: float
    placement: float


@dataclass(frozen=True)
class Drift:
    """The decision: ``ppm`` to apply (0: none), ``reason`` (``none``, ``applied``,
    ``implausible``, ``inconsistent``, ``too_few``), the fitted ppm for the logs, and the
    placement line's value at Connect time 0."""

    ppm: float
    reason: str
    fitted_ppm: float
    placement: float

    @property
    def ratio(self) -> float:
        """Recording seconds per Connect second."""
        return 1.0 + self.ppm * 1e-6


def slope(points: list[Point]) -> float:
    """Least-squares slope of placement over Connect time (pure; 0 for fewer than two)."""
    count = len(points)
    if count < 2:
        return 0.0
    mean_t = sum(p.connect_seconds for p in points) / count
    mean_p = sum(p.placement for p in points) / count
    spread = sum((p.connect_seconds - mean_t) ** 2 for p in points)
    if spread <= 0:
        return 0.0
    return sum((p.connect_seconds - mean_t) * (p.placement - mean_p) for p in points) / spread


def fit(points: list[Point], anchor: Point) -> Drift:
    """The drift through ``points`` (the ``anchor``, the call end's measurement, among them).

    Least squares over all points; applied only when two or more points span
    :data:`MIN_SPAN_SECONDS`, disagree by more than :data:`MIN_DISAGREEMENT_SECONDS`, all lie
    within :data:`FIT_TOLERANCE_SECONDS` of the line and the slope is a plausible clock error.
    The applied line passes through the anchor, so the call end stays where it was measured.
    """
    times = [p.connect_seconds for p in points]
    if len(points) < 2 or max(times) - min(times) < MIN_SPAN_SECONDS:
        return Drift(0.0, "too_few", 0.0, anchor.placement)
    rate = slope(points)
    fitted = rate * 1e6
    placements = [p.placement for p in points]
    if max(placements) - min(placements) <= MIN_DISAGREEMENT_SECONDS:
        return Drift(0.0, "none", fitted, anchor.placement)
    start = anchor.placement - rate * anchor.connect_seconds
    if any(abs(start + rate * p.connect_seconds - p.placement) > FIT_TOLERANCE_SECONDS
           for p in points):  # fmt: skip
        return Drift(0.0, "inconsistent", fitted, anchor.placement)
    if abs(fitted) > MAX_DRIFT_PPM:
        return Drift(0.0, "implausible", fitted, anchor.placement)
    return Drift(fitted, "applied", fitted, start)


def measurement_times(connect_from: float, connect_to: float, stretch: float) -> list[float]:
    """Connect times (stretch starts) to measure besides the call end's: near the start of
    the overlap, and its middle for long overlaps (pure). ``[connect_from, connect_to]`` is
    the part of the Connect file that lies inside the recording."""
    span = connect_to - connect_from
    if span - stretch < MIN_SPAN_SECONDS:
        return []
    times = [connect_from]
    if span >= MIDDLE_FROM_SECONDS:
        times.append(connect_from + (span - stretch) / 2)
    return times


def later_times(connect_from: float, connect_to: float, stretch: float) -> list[float]:
    """Connect times (stretch starts) to measure when none of :func:`measurement_times` was
    confident (pure): up to :data:`LATER_POINTS` after the first, evenly spread (at least a
    stretch apart) up to the last start still :data:`LATER_SPAN_SECONDS` from the call end's
    stretch. The earliest that is confident tells the drift most precisely, but speech can be
    missing for minutes (the customer explaining, hold)."""
    last = connect_to - stretch - LATER_SPAN_SECONDS
    step = max(stretch, (last - connect_from) / LATER_POINTS)
    starts = (connect_from + step * n for n in range(1, LATER_POINTS + 1))
    return [start for start in starts if start <= last + 1e-9]


def stretch(signal: npt.NDArray[np.float32], ratio: float) -> npt.NDArray[np.float32]:
    """``signal`` played ``ratio`` times slower (``out[j] = signal(j / ratio)``), by
    windowed-sinc interpolation (pure).

    A 30 s stretch of speech drifting by 100 ppm slides 3 ms against the microphone from its
    first second to its last: at telephone frequencies that is many periods, and the
    correlation smears (z and the correlation coefficient fall). Stretched by the drift, the
    Connect stretch lines up with the microphone over its whole length again.
    """
    size = signal.size
    count = int(size * ratio)
    position = np.arange(count, dtype=np.float64) / ratio
    base = np.floor(position).astype(np.int64)
    frac = position - base
    half = SINC_TAPS // 2
    # Zeros beyond both ends stand for the samples outside the signal: each adds exactly 0,
    # so no per-tap mask (fancy indexing cost more than the arithmetic).
    source = np.zeros(size + 2 * SINC_TAPS, np.float64)
    source[SINC_TAPS : SINC_TAPS + size] = signal
    base = np.clip(base, -SINC_TAPS + half, size + half) + SINC_TAPS
    # sin(pi (frac - tap)) is +-sin(pi rem), rem = frac less its nearest integer (exact, and
    # accurate where frac nears 1: sin(pi frac) there would lose its digits), and the Hann
    # window's cosine of (frac - tap) pi / half follows from frac's by the angle-difference
    # rule: three transcendentals a sample instead of two per tap (equal to float64 rounding).
    nearest = np.rint(frac)
    sine = np.sin(np.pi * (frac - nearest)) * (1.0 - 2.0 * nearest)
    step = np.pi / half
    cosine, sine_step = np.cos(step * frac), np.sin(step * frac)
    out = np.zeros(count, np.float64)
    for tap in range(-half + 1, half + 1):
        distance = frac - tap
        window = 0.5 + 0.5 * (cosine * math.cos(step * tap) + sine_step * math.sin(step * tap))
        if tap == 0:  # frac is in [0, 1): only this tap meets a sample (sinc 1 there)
            centre = distance == 0
            sinc = np.where(centre, 1.0, sine / np.where(centre, 1.0, np.pi * distance))
        else:
            sinc = sine / (np.pi * distance)
        out += source[base + tap] * (sinc * window if tap % 2 == 0 else -sinc * window)
    return out.astype(np.float32)
