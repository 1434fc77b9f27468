"""Synthetic signals for the sync's pure tests: seeded speech-like bursts and exact
(fractional) delays, so every expected lag is known exactly."""

from __future__ import annotations

import numpy as np

from worker.media import sync

RATE = sync.SYNC_RATE


def bursts(seconds: float, seed: int) -> np.ndarray:
    """Noise in syllable-like bursts (speech's on/off structure, broadband inside)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    envelope = np.repeat(rng.random(n // 1600 + 1) > 0.4, 1600)[:n].astype(np.float32)
    return (rng.standard_normal(n) * 0.1 * envelope).astype(np.float32)


def delayed(signal: np.ndarray, lag_samples: float, total: int) -> np.ndarray:
    """``signal`` placed ``lag_samples`` (fractional: by a frequency-domain shift) into zeros."""
    out = np.zeros(total, np.float64)
    whole = int(np.floor(lag_samples))
    out[whole : whole + signal.size] = signal
    frac = lag_samples - whole
    if frac:
        size = 1 << (total * 2).bit_length()
        spectrum = np.fft.rfft(out, size)
        spectrum *= np.exp(-2j * np.pi * np.fft.rfftfreq(size) * frac)
        out = np.fft.irfft(spectrum, size)[:total]
    return out.astype(np.float32)


def window(zero_lag: float = 5.5) -> sync.SyncWindow:
    """A +-5 s search window over a 20 s Connect stretch and 31 s of microphone."""
    return sync.SyncWindow(
        connect_start=0.0,
        connect_seconds=20.0,
        recording_seek=0,
        recording_seconds=31.0,
        zero_lag=zero_lag,
        min_offset=-5.0,
        max_offset=5.0,
    )
