"""A contact center's day: when calls end, how long they are, when Connect's audio lands.

- **Arrivals**: a non-homogeneous Poisson process. The rate follows a daily curve: either 24
  hourly weights given by the user, or a bell around ``peak_hour`` whose width is solved so
  that the busiest hour carries ``peak_factor`` x the day's average hour (4 for a contact
  center: 40,000 contacts a day peak at about 110 a minute).
- **Lengths**: a lognormal with the given median and spread, truncated to [min, max] minutes
  (resampled, not clamped, so no pile-up at the bounds).
- **Connect upload delay**: the backend's message is sent at the call's end, but Amazon
  Connect writes the call recording to S3 some time later (uniform between the bounds, in
  seconds). A job that starts before then finds no audio and is retried with the worker's
  backoff (``worker.outcome``).

Everything is drawn from one seeded generator: the same arguments give the same day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

MINUTES_PER_DAY = 24 * 60
# Below this share of the lognormal inside [min, max], lengths are drawn by inverse CDF.
MIN_ACCEPTANCE = 0.01


@dataclass(frozen=True)
class TrafficProfile:
    """The inputs of a day's traffic (defaults: the issue's 2,000-agent contact center)."""

    contacts_per_day: float = 40_000
    peak_factor: float = 4.0
    peak_hour: float = 13.0
    hourly_weights: tuple[float, ...] | None = None
    length_median_minutes: float = 12.0
    length_sigma: float = 0.7
    length_min_minutes: float = 5.0
    length_max_minutes: float = 60.0
    upload_delay_min_seconds: float = 10.0
    upload_delay_max_seconds: float = 180.0


@dataclass(frozen=True)
class Contacts:
    """One day's contacts, sorted by the time their message is sent (seconds from 00:00)."""

    sent: np.ndarray
    media_minutes: np.ndarray
    audio_delay: np.ndarray

    def __len__(self) -> int:
        return len(self.sent)


def _bell_minutes(sigma_hours: float, peak_hour: float) -> np.ndarray:
    """Per-minute shares of a day whose rate is a bell (wrapped around midnight)."""
    hours = (np.arange(MINUTES_PER_DAY) + 0.5) / 60
    # The bell and its neighbours a day before and after: the curve wraps around midnight.
    shifted = np.stack([hours - peak_hour + 24 * k for k in (-1, 0, 1)])
    rate = np.exp(-((shifted / sigma_hours) ** 2) / 2).sum(axis=0)
    shares: np.ndarray = rate / rate.sum()
    return shares


def bell_sigma_for_peak(peak_factor: float, peak_hour: float = 13.0) -> float:
    """The bell's width (hours) whose busiest hour carries ``peak_factor`` x the average."""
    if not 1.0 < peak_factor < 24.0:
        raise ValueError("peak factor must be between 1 and 24 (1: flat; 24: one busy hour)")
    low, high = 0.05, 500.0  # wider bell -> lower peak factor
    for _ in range(80):
        middle = math.sqrt(low * high)
        if _bell_minutes(middle, peak_hour).reshape(24, 60).sum(axis=1).max() * 24 > peak_factor:
            low = middle
        else:
            high = middle
    return math.sqrt(low * high)


def minute_rates(profile: TrafficProfile) -> np.ndarray:
    """Expected messages in each minute of the day (1,440 values summing to the day's)."""
    if profile.hourly_weights is not None:
        weights = np.asarray(profile.hourly_weights, dtype=float)
        if weights.shape != (24,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("hourly weights: 24 non-negative numbers, not all zero")
        per_minute = np.repeat(weights / weights.sum() / 60, 60)
    elif profile.peak_factor <= 1.0:
        per_minute = np.full(MINUTES_PER_DAY, 1 / MINUTES_PER_DAY)
    else:
        sigma = bell_sigma_for_peak(profile.peak_factor, profile.peak_hour)
        per_minute = _bell_minutes(sigma, profile.peak_hour)
    rates: np.ndarray = per_minute * profile.contacts_per_day
    return rates


def call_lengths(profile: TrafficProfile, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` media lengths in minutes: the truncated lognormal."""
    low, high = profile.length_min_minutes, profile.length_max_minutes
    if not 0 < low <= high:
        raise ValueError("call lengths: need 0 < --length-min <= --length-max")
    if profile.length_median_minutes <= 0 or profile.length_sigma < 0:
        raise ValueError("call lengths: need --length-median > 0 and --length-sigma >= 0")
    mu = math.log(profile.length_median_minutes)
    if profile.length_sigma == 0:
        # Every call the same length (``--length-sigma 0``): rejection would never end when
        # the median lies outside [min, max] or float rounding puts exp(log m) just past max.
        return np.full(count, min(max(profile.length_median_minutes, low), high))
    normal = NormalDist(mu, profile.length_sigma)
    lower, upper = normal.cdf(math.log(low)), normal.cdf(math.log(high))
    if upper - lower < MIN_ACCEPTANCE:
        # A window in the far tail (all 60-minute calls with a 12-minute median): rejection
        # would draw for hours; sample the truncated distribution by its inverse CDF instead.
        tiny = np.finfo(float).tiny
        quantiles = np.clip(rng.uniform(lower, upper, size=count), tiny, 1 - 1e-16)
        logs = np.array([normal.inv_cdf(float(q)) for q in quantiles])
        inverse: np.ndarray = np.clip(np.exp(logs), low, high)
        return inverse
    out = np.empty(0)
    while len(out) < count:
        draw = rng.lognormal(mu, profile.length_sigma, size=max(16, 2 * (count - len(out))))
        keep = draw[(draw >= profile.length_min_minutes) & (draw <= profile.length_max_minutes)]
        out = np.concatenate([out, keep])
    lengths: np.ndarray = out[:count]
    return lengths


def generate(profile: TrafficProfile, seed: int, rates: np.ndarray | None = None) -> Contacts:
    """One day's contacts; ``rates`` (per-minute expected messages) overrides the curve
    (the steady loads of the tests). ValueError (one line) for a profile that cannot be."""
    if profile.contacts_per_day < 0:
        raise ValueError("contacts per day must not be negative")
    if not 0 <= profile.upload_delay_min_seconds <= profile.upload_delay_max_seconds:
        raise ValueError("upload delay: need 0 <= --upload-delay-min <= --upload-delay-max")
    rng = np.random.default_rng(seed)
    per_minute = minute_rates(profile) if rates is None else rates
    counts = rng.poisson(per_minute)
    starts = np.repeat(np.arange(len(per_minute)) * 60.0, counts)
    sent = np.sort(starts + rng.uniform(0.0, 60.0, size=len(starts)))
    delays = rng.uniform(
        profile.upload_delay_min_seconds, profile.upload_delay_max_seconds, size=len(sent)
    )
    return Contacts(
        sent=sent, media_minutes=call_lengths(profile, len(sent), rng), audio_delay=delays
    )
