"""The wide search's coarse pass: where the Connect audio's last stretch lies anywhere in the
recording, from speech envelopes (issue 19).

The fine pass (:mod:`worker.media.sync`) looks only +- a few seconds around the timestamp's
call end.
A Connect file stopped early (``StopContactRecording``), started late, or a call-end timestamp
off by more than the window, puts the Connect audio elsewhere. This module finds a few
candidate places over the whole recording cheaply; the fine pass then measures (or rejects)
each of them under the same never-wrong rules.

- Signal: the telephony band (ffmpeg's ``highpass``/``lowpass`` in the decode) reduced to its
  RMS envelope in :data:`ENVELOPE_FRAME`-sample frames (:data:`ENVELOPE_RATE` Hz), compressed
  (square root) so a loud stretch does not dominate. The envelope is what a phone line and a
  room microphone share best: syllable rhythm, not waveform phase.
- Search: normalised cross-correlation (Pearson, per lag) of the reference envelope against
  the microphone's, computed block by block as the microphone's decode streams in
  (overlap-save FFT), keeping only the best :data:`CANDIDATES` peaks at least
  :data:`CANDIDATE_SEPARATION_SECONDS` apart. Memory is one block plus the reference, whatever
  the recording's length; the 8 kHz samples are never held.

All of it is pure (numpy); :mod:`worker.media.sync` feeds it the decode's chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ENVELOPE_FRAME = 16  # samples of the 8 kHz decode per envelope value: 500 Hz
ENVELOPE_RATE = 500
CANDIDATES = 3  # handed to the fine pass
CANDIDATE_SEPARATION_SECONDS = 1.0  # distinct places, not one peak's shoulders
BLOCK = 1 << 16  # envelope samples per FFT block (131 s): bounded memory per step

Envelope = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Candidate:
    """A place the reference may start at: envelope lag (seconds on the searched signal) and
    its normalised correlation."""

    seconds: float
    score: float


def envelope(samples: npt.NDArray[np.float32]) -> Envelope:
    """Square-root RMS of each whole :data:`ENVELOPE_FRAME` of ``samples`` (the rest dropped)."""
    count = samples.size // ENVELOPE_FRAME
    frames = samples[: count * ENVELOPE_FRAME].astype(np.float64).reshape(count, ENVELOPE_FRAME)
    values: Envelope = np.sqrt(np.sqrt(np.mean(np.square(frames), axis=1)))
    return values


def fast_size_at_most(n: int, *, above: int) -> int:
    """The largest 2^a 3^b 5^c <= ``n`` (fast for numpy's FFT), or ``n`` itself when that is
    not above ``above`` (pure)."""
    best = 1
    five = 1
    while five <= n:
        three = five
        while three <= n:
            best = max(best, three << max(0, (n // three).bit_length() - 1))
            three *= 3
        five *= 5
    return best if best > above else n


def top_peaks(
    scores: npt.NDArray[np.float64], *, count: int, separation: int
) -> list[tuple[int, float]]:
    """The ``count`` highest values of ``scores`` at least ``separation`` indices apart, best
    first, as (index, score) (pure; greedy: the best, then the best outside its exclusion...)."""
    work = np.array(scores, dtype=np.float64)
    found: list[tuple[int, float]] = []
    while len(found) < count and work.size:
        best = int(np.argmax(work))
        value = float(work[best])
        if not math.isfinite(value) or value == -np.inf:
            break
        found.append((best, value))
        work[max(0, best - separation + 1) : best + separation] = -np.inf
    return found


def merge_candidates(
    kept: list[Candidate], new: list[Candidate], *, count: int, separation: float
) -> list[Candidate]:
    """The best ``count`` of both lists, at least ``separation`` seconds apart (pure)."""
    chosen: list[Candidate] = []
    for candidate in sorted([*kept, *new], key=lambda c: -c.score):
        if all(abs(candidate.seconds - c.seconds) >= separation for c in chosen):
            chosen.append(candidate)
        if len(chosen) == count:
            break
    return chosen


def merge_parts(parts: list[tuple[float, list[Candidate]]]) -> list[Candidate]:
    """The candidates of searches over consecutive parts of one signal, as ``(where the part
    starts in the signal, seconds; its candidates)``: moved onto the signal's timeline and
    merged (the best :data:`CANDIDATES`, distinct places), as one search over the whole
    would have kept them (pure)."""
    merged: list[Candidate] = []
    for start, candidates in parts:
        moved = [Candidate(c.seconds + start, c.score) for c in candidates]
        merged = merge_candidates(
            merged, moved, count=CANDIDATES, separation=CANDIDATE_SEPARATION_SECONDS
        )
    return merged


def worth_measuring(candidates: list[Candidate], rival_share: float) -> list[Candidate]:
    """The candidates the fine pass measures (pure), best first.

    Rivals below ``rival_share`` of the best envelope match are not measured: a place the fine
    pass could confirm (the true one, or a loop's other period) matches the envelope about as
    well. Nor is a candidate without a positive match (a cost guard: a microphone that is
    digital silence over the whole recording scores 0 everywhere, and each fine pass costs two
    decodes that cannot succeed).
    """
    best = max((c.score for c in candidates), default=0.0)
    return [c for c in candidates if c.score > 0 and c.score >= rival_share * best]


class EnvelopeSearch:
    """Streaming normalised cross-correlation of a reference envelope against a long signal.

    Feed the signal's 8 kHz samples in any chunks (:meth:`feed`), then :meth:`finish` for the
    best candidate lags (where the reference's first sample lies in the signal, seconds).
    """

    def __init__(
        self,
        reference: Envelope,
        *,
        count: int = CANDIDATES,
        block: int = BLOCK,
        min_lag_seconds: float = 0.0,
        max_lag_seconds: float = math.inf,
    ) -> None:
        """``min_lag_seconds`` may be negative: the reference then starts before the signal
        (a Connect recording that began before the screen recording), which is searched as
        if preceded by silence."""
        centred = reference - reference.mean()
        norm = float(np.linalg.norm(centred))
        self._length = reference.size
        self._reference = centred / norm if norm > 0 else centred
        # FFT length: at most one block plus the reference, a 2^a 3^b 5^c length (a length with
        # a large prime factor, e.g. 65536 + 15000 = 8 x 10067, is several times slower).
        self._size = fast_size_at_most(block + self._length, above=self._length)
        self._spectrum = np.conj(np.fft.rfft(self._reference, self._size))
        self._count = count
        self._bounds = (min_lag_seconds * ENVELOPE_RATE, max_lag_seconds * ENVELOPE_RATE)
        self._pending = np.zeros(0, np.float32)  # raw samples short of a whole frame
        lead = max(0, math.ceil(-min_lag_seconds * ENVELOPE_RATE))
        self._buffer = np.zeros(lead, np.float64)  # envelope not yet fully searched
        self._start = -lead  # envelope index of self._buffer[0]
        self.candidates: list[Candidate] = []
        self.frames = 0  # envelope values seen (the signal's length at ENVELOPE_RATE)

    def feed(self, samples: npt.NDArray[np.float32]) -> None:
        """Add the next samples of the signal."""
        raw = np.concatenate([self._pending, samples]) if self._pending.size else samples
        whole = raw.size - raw.size % ENVELOPE_FRAME
        self._pending = raw[whole:].copy()
        values = envelope(raw[:whole])
        self.frames += values.size
        self._buffer = np.concatenate([self._buffer, values])
        while self._buffer.size >= self._size:
            self._search(self._buffer[: self._size], self._size - self._length + 1)
            step = self._size - self._length + 1
            self._buffer = self._buffer[step:]
            self._start += step

    def finish(self) -> list[Candidate]:
        """Search what is left; the best candidates, best first."""
        lags = self._buffer.size - self._length + 1
        if lags > 0:
            self._search(self._buffer, lags)
        return self.candidates

    def _search(self, block: Envelope, lags: int) -> None:
        """Correlate the reference at lags ``[0, lags)`` of ``block`` (index ``self._start``)."""
        size = self._size
        plain = np.fft.irfft(np.fft.rfft(block, size) * self._spectrum, size)[:lags]
        sums = np.concatenate([[0.0], np.cumsum(block)])
        squares = np.concatenate([[0.0], np.cumsum(np.square(block))])
        length = self._length
        total = sums[length : length + lags] - sums[:lags]
        energy = squares[length : length + lags] - squares[:lags] - np.square(total) / length
        spread = np.sqrt(np.maximum(energy, 0.0))
        scores = np.where(spread > 1e-9, plain / np.maximum(spread, 1e-9), 0.0)
        index = self._start + np.arange(lags)
        low, high = self._bounds
        scores[(index < low) | (index > high)] = -np.inf
        separation = round(CANDIDATE_SEPARATION_SECONDS * ENVELOPE_RATE)
        peaks = top_peaks(scores, count=self._count, separation=separation)
        found = [Candidate((self._start + i) / ENVELOPE_RATE, score) for i, score in peaks]
        self.candidates = merge_candidates(
            self.candidates, found, count=self._count, separation=CANDIDATE_SEPARATION_SECONDS
        )
