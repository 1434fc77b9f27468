"""The sync's estimator (pure): GCC-PHAT-beta over the telephony band, the peak's scores, the
two energy halves, and the band-limited correlation coefficient (see :mod:`worker.media.sync`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

from worker.media.sync_model import (
    BAND_HZ,
    MIN_STRETCH_SECONDS,
    PART_MIN_ENERGY,
    PARTS,
    PEAK_EXCLUSION_SECONDS,
    PHAT_BETA,
    PLAIN_EXCLUSION_SECONDS,
    REVERB_TAIL_SECONDS,
    SYNC_RATE,
    TAPER_SECONDS,
    Estimate,
    Peak,
    Signal,
)


def _fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= ``n``: fast for numpy's FFT, and at most a few percent
    above ``n`` where the next power of two can be almost twice it (memory, time)."""
    best = 1 << max(1, (n - 1).bit_length())
    five = 1
    while five < best:
        three = five
        while three < best:
            size = three << max(0, (math.ceil(n / three) - 1).bit_length())
            best = min(best, size)
            three *= 3
        five *= 5
    return best


# A signal's rfft and its band-limited samples, by FFT size: the same signal is estimated
# against each drift retry's stretched reference (:func:`worker.media.sync_decide.synchronise`).
SignalSpectra = dict[int, tuple[npt.NDArray[np.complex128], npt.NDArray[np.float64]]]


def _signal_spectra(
    signal: Signal, size: int, rate: int, cache: SignalSpectra | None
) -> tuple[npt.NDArray[np.complex128], npt.NDArray[np.float64]]:
    """``signal``'s rfft (``size`` points, single precision) and its band-limited samples
    (:data:`BAND_HZ`), from ``cache`` when it holds them for ``size``."""
    if cache is not None and size in cache:
        return cache[size]
    # Single-precision FFTs (numpy 2 computes float32 in float32; 1.x upcasts): about half
    # the time and memory of float64. Float32's rounding (1e-7 of the peak) is far below the
    # correlation's own noise: z and the lag move by ~1e-5; the scores are taken in float64.
    spectrum = np.fft.rfft(signal.astype(np.float32), size)
    band = spectrum.copy()
    band[_outside(size, rate)] = 0
    found = (spectrum, np.fft.irfft(band, size))
    if cache is not None:
        cache[size] = found
    return found


@functools.lru_cache(maxsize=8)
def _outside(size: int, rate: int) -> npt.NDArray[np.bool_]:
    """The rfft bins (``size`` points) outside :data:`BAND_HZ` (read-only: cached, as every
    correlation of an estimate and of its drift retries masks the same size)."""
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    mask = (freqs < BAND_HZ[0]) | (freqs > BAND_HZ[1])
    mask.flags.writeable = False
    return mask


def rms(signal: Signal) -> float:
    return float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))) if signal.size else 0.0


def _taper(signal: Signal) -> npt.NDArray[np.float32]:
    """``signal`` with raised-cosine ends (:data:`TAPER_SECONDS`): a stretch's abrupt cut is
    broadband, and whitening would otherwise weigh it like speech."""
    out = signal.astype(np.float32)
    ramp = min(out.size // 4, round(TAPER_SECONDS * SYNC_RATE))
    if ramp > 1:
        rise = np.hanning(2 * ramp)[:ramp].astype(np.float32)
        out[:ramp] *= rise
        out[-ramp:] *= rise[::-1]
    return out


def _correlate(
    spectrum: npt.NDArray[np.complex128],
    reference: npt.NDArray[np.complex128],
    size: int,
    rate: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """GCC-PHAT-beta and plain (band-limited) cross-correlation of the reference whose
    :func:`_spectrum` is ``reference`` against the signal whose rfft is ``spectrum``."""
    cross = spectrum * np.conj(reference)
    cross[_outside(size, rate)] = 0
    plain = np.fft.irfft(cross, size)
    magnitude = np.abs(cross)
    floor = 1e-12 + 1e-9 * float(magnitude.max(initial=0.0))
    cross /= (magnitude + floor) ** PHAT_BETA
    return np.fft.irfft(cross, size), plain


def _spectrum(reference: Signal, size: int) -> npt.NDArray[np.complex128]:
    """The rfft of the tapered ``reference`` (:func:`_taper`), ``size`` points."""
    return np.fft.rfft(_taper(reference), size)


def _peak(
    correlations: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    low: int,
    high: int,
    rate: int,
    within: tuple[int, int] | None = None,
) -> Peak:
    """Best lag in ``[low, high]`` samples (negative lags wrap around) and its scores; with
    ``within``, the best lag inside that part of the range, scored against the whole range."""
    correlation, plain = correlations
    lags = np.arange(low, high + 1)
    values = correlation[lags % correlation.size].astype(np.float64)
    if within is None:
        best = int(np.argmax(values))
    else:
        first, last = int(np.clip(within[0] - low, 0, values.size - 1)), within[1] - low
        best = first + int(np.argmax(values[first : max(first + 1, last + 1)]))
    exclusion = max(1, round(PEAK_EXCLUSION_SECONDS * rate))
    outside = np.ones(values.size, dtype=bool)
    outside[max(0, best - exclusion) : best + exclusion + 1] = False
    rest = values[outside]
    if rest.size < 16:
        return Peak(lag=float(lags[best]) / rate, z=0.0, side_peak_ratio=1.0)
    mean, spread = float(rest.mean()), float(rest.std())
    height = float(values[best]) - mean
    z = height / spread if spread > 0 else 0.0
    side = (float(rest.max()) - mean) / height if height > 0 else 1.0
    shift = 0.0
    if 0 < best < values.size - 1:
        left, centre, right = values[best - 1], values[best], values[best + 1]
        curvature = left - 2 * centre + right
        if curvature < 0:
            shift = float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    # Periodic audio (a looped prompt, music) matches at every period; whitening can still
    # favour one of them, so the plain correlation must favour it too.
    energy = plain[lags % plain.size].astype(np.float64)
    near = max(1, round(0.002 * rate))
    at_peak = float(energy[max(0, best - near) : best + near + 1].max())
    away = np.ones(energy.size, dtype=bool)
    before, after = round(PLAIN_EXCLUSION_SECONDS * rate), round(REVERB_TAIL_SECONDS * rate)
    away[max(0, best - before) : best + after + 1] = False
    rival = float(energy[away].max(initial=0.0))
    side = max(side, rival / at_peak if at_peak > 0 else 1.0)
    return Peak(lag=(float(lags[best]) + shift) / rate, z=z, side_peak_ratio=side)


def estimate(
    reference: Signal,
    signal: Signal,
    *,
    min_lag: float,
    max_lag: float,
    rivals: tuple[float, float] | None = None,
    rate: int = SYNC_RATE,
    cache: SignalSpectra | None = None,
    near_seconds: float | None = None,
) -> Estimate:
    """Where ``reference`` lies inside ``signal`` (seconds, ``signal[t + lag] ~ reference[t]``),
    searched in ``[min_lag, max_lag]``, for the whole reference and each of its halves.

    ``rivals`` (None: none) is a wider lag range in which any peak is a rival: the whole's
    peak over it (:attr:`Estimate.rival`) and each half's side-peak ratio over it are kept
    beside the peaks above, which are unchanged by it. ``cache`` (None: none) keeps the
    signal's spectra for the next estimate on the same ``signal``. ``near_seconds`` (None:
    not searched) is how far from the whole's lag each half's :attr:`Estimate.near_halves`
    peak is searched.
    """
    size = _fft_size(reference.size + signal.size)
    spectrum, band = _signal_spectra(signal, size, rate, cache)
    low, high = math.ceil(min_lag * rate), math.floor(max_lag * rate)
    wide = None if rivals is None else _lags(rivals, low, high, rate)
    # The tapered reference's spectrum serves the whole's correlation and its coefficient.
    ours = _spectrum(reference, size)
    correlations = _correlate(spectrum, ours, size, rate)
    whole = _peak(correlations, low, high, rate)
    rival = None if wide is None else _peak(correlations, *wide, rate)
    at = round(whole.lag * rate)
    begin = int(np.clip(-at, 0, reference.size))
    end = int(np.clip(signal.size - at, begin, reference.size))
    if end - begin < MIN_STRETCH_SECONDS * rate:
        begin, end = 0, reference.size  # too little inside: the halves of the whole as is
    half = begin + energy_midpoint(reference[begin:end])
    halves = []
    ratios = []
    near = []
    radius = None if near_seconds is None else math.ceil(near_seconds * rate)
    # A part starting `start` samples into the reference lies `start` later than the whole.
    for start, stop in ((begin, half), (half, end)):
        part = _correlate(spectrum, _spectrum(reference[start:stop], size), size, rate)
        found = _peak(part, low + start, high + start, rate)
        halves.append(Peak(found.lag - start / rate, found.z, found.side_peak_ratio))
        if wide is not None:
            ratios.append(_peak(part, wide[0] + start, wide[1] + start, rate).side_peak_ratio)
        if radius is not None:
            around = (at + start - radius, at + start + radius)
            close = _peak(part, low + start, high + start, rate, within=around)
            near.append(Peak(close.lag - start / rate, close.z, close.side_peak_ratio))
    first, second = halves
    coefficient = _coefficient(band, ours, reference.size, size, round(whole.lag * rate), rate)
    centres = ((begin + half) / 2 / rate, (half + end) / 2 / rate)
    half_rivals = (ratios[0], ratios[1]) if ratios else (0.0, 0.0)
    near_halves = (near[0], near[1]) if near else None
    return Estimate(whole, (first, second), coefficient, centres, rival, half_rivals, near_halves)


def _lags(rivals: tuple[float, float], low: int, high: int, rate: int) -> tuple[int, int]:
    """The rival lags in samples, never narrower than ``[low, high]``."""
    return min(low, math.ceil(rivals[0] * rate)), max(high, math.floor(rivals[1] * rate))


def _coefficient(
    signal: npt.NDArray[np.float64],
    reference: npt.NDArray[np.complex128],
    length: int,
    size: int,
    lag: int,
    rate: int,
) -> float:
    """Pearson correlation of the band-limited reference (its :func:`_spectrum`, ``length``
    samples) and the band-limited ``signal`` (:func:`_signal_spectra`) at integer ``lag``."""
    ours = reference.copy()
    ours[_outside(size, rate)] = 0
    ref = np.fft.irfft(ours, size)[:length]
    begin, end = max(0, lag), min(size, lag + length)
    if end <= begin:
        return 0.0
    aligned = signal[begin:end].astype(np.float64)
    part = ref[begin - lag : end - lag].astype(np.float64)
    return min(_pearson(part, aligned), _weakest_part(part, aligned))


def _pearson(ours: npt.NDArray[np.float64], theirs: npt.NDArray[np.float64]) -> float:
    denominator = float(np.linalg.norm(ours) * np.linalg.norm(theirs))
    return float(np.dot(ours, theirs)) / denominator if denominator > 0 else 0.0


def _weakest_part(ours: npt.NDArray[np.float64], theirs: npt.NDArray[np.float64]) -> float:
    """The lowest correlation over the :data:`PARTS` equal time parts of the aligned stretch
    that hold at least :data:`PART_MIN_ENERGY` of the loudest part's energy (issue 19).

    A real alignment matches all along the stretch. A stretch whose energy is mostly one
    utterance matches wherever that exact utterance recurs (a recorded prompt, replayed):
    the energy halves may both fall inside it and agree, but the other parts of the stretch
    then share nothing with the microphone.
    """
    parts = list(zip(np.array_split(ours, PARTS), np.array_split(theirs, PARTS), strict=True))
    energies = [float(np.dot(part, part)) for part, _ in parts]
    loudest = max(energies)
    if loudest <= 0:
        return 0.0
    return min(
        _pearson(part, heard)
        for (part, heard), energy in zip(parts, energies, strict=True)
        if energy >= PART_MIN_ENERGY * loudest
    )


def energy_midpoint(reference: Signal) -> int:
    """Where to split ``reference`` into two halves holding equal energy (the agent's speech,
    not the stretch's time: in a turn-taking call one half in time may be all customer), kept
    within the middle 80% of the stretch."""
    energy = np.cumsum(np.square(reference, dtype=np.float64))
    total = float(energy[-1]) if energy.size else 0.0
    middle = reference.size // 2
    if total <= 0:
        return middle
    split = int(np.searchsorted(energy, total / 2))
    return int(np.clip(split, reference.size // 10, reference.size - reference.size // 10))
