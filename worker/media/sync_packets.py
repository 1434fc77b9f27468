"""The wide search's coarse pass without a decode: the recording's Opus packet sizes (issue 19).

Opus as browsers and libopus encode it is VBR: a packet's size follows the signal (speech:
large packets, silence: small ones or DTX). The sizes of the microphone's packets, read by a
demux alone (ffprobe), are therefore an envelope of its speech, at a small share of a decode's
CPU. This module turns them into :data:`STEP`-second "bytes per step" values, compares them
with the log energy of the Connect reference (decoded anyway: 30 s) by normalised
cross-correlation over every lag (one FFT), and proposes the best places for the fine pass
(:mod:`worker.media.sync_wide`), which alone decides under the never-wrong rules.

:func:`packet_envelope` returns None when the sizes carry no envelope (CBR, too few packets):
the caller then runs the decode-based search (:mod:`worker.media.sync_search`).

All of it is pure (numpy).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import numpy.typing as npt

from worker.media.sync_search import CANDIDATE_SEPARATION_SECONDS, CANDIDATES, Candidate, top_peaks

STEP = 0.020  # seconds per envelope value (Opus's usual frame; Chrome's 60 ms packets spread)
MIN_PACKETS = 50  # fewer: no envelope worth correlating
MIN_SIZE_SPREAD = 0.05  # the sizes' coefficient of variation below this: CBR, no envelope
ENERGY_FLOOR = 1e-7  # the log energy's floor (digital silence is not minus infinity)
# The best packet match below this: no place worth measuring (straight to the decode-based
# search). On the issue-19 corpus a true place scores 0.62-0.82 and the best of a microphone
# without this call (muted, other people, AAC's flat sizes) 0.09-0.30.
MIN_SCORE = 0.45
FIELDS = "packet=pts_time,duration_time,size"  # ffprobe -show_entries, csv: in this order

Envelope = npt.NDArray[np.float64]


# ffprobe's usual output: every line three fields (a trailing comma where the packet has side
# data), or empty. Parsed by numpy at once; anything else line by line.
_FIELDS = 3


READ_BLOCK_BYTES = 1 << 20  # ffprobe output parsed per block (~45,000 packets): bounded memory


class PacketReader:
    """:func:`parse_packets` of ffprobe's output as it streams in (:meth:`feed` any chunks,
    then :meth:`finish`): whole lines parsed per :data:`READ_BLOCK_BYTES`, so neither the
    text nor a parse's temporaries grow with the recording (only the three numbers a packet)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        # Times, durations and sizes of the blocks parsed so far, a list per field: each is
        # joined, and its blocks let go, before the next (a 4-hour recording's 720,000 packets
        # are 17 MB; joined all three at once, 34 MB at the peak).
        self._parsed: tuple[list[Envelope], list[Envelope], list[Envelope]] = ([], [], [])

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the output."""
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size >= READ_BLOCK_BYTES:
            self._parse(final=False)

    def finish(self) -> tuple[Envelope, Envelope, Envelope]:
        """Times, durations and sizes of every packet fed."""
        self._parse(final=True)
        times, durations, sizes = (_join(blocks) for blocks in self._parsed)
        return times, durations, sizes

    def _parse(self, *, final: bool) -> None:
        raw = b"".join(self._chunks)
        cut = len(raw) if final else raw.rfind(b"\n") + 1
        self._chunks = [raw[cut:]]
        self._size = len(raw) - cut
        if cut:
            for blocks, values in zip(self._parsed, parse_packets(raw[:cut]), strict=True):
                blocks.append(values)


def _join(blocks: list[Envelope]) -> Envelope:
    """``blocks`` joined into one array, the list emptied (its blocks freed) as it is."""
    joined = np.concatenate(blocks) if blocks else np.zeros(0)
    blocks.clear()
    return joined


def parse_packets(raw: bytes) -> tuple[Envelope, Envelope, Envelope]:
    """Times, durations and sizes of ``ffprobe -show_entries`` :data:`FIELDS` ``-of csv=p=0``
    output (pure). A line without a time or size is skipped; an unknown duration is 0."""
    regular = _parse_regular(raw)
    return regular if regular is not None else _parse_lines(raw)


def _parse_regular(raw: bytes) -> tuple[Envelope, Envelope, Envelope] | None:
    """:func:`parse_packets` of output whose every line has three fields, in one numpy call
    (a Python loop costs ~0.3 s for an hour's 181,000 packets); None for any other output or
    a field that is not a number."""
    if not _three_fields_a_line(raw):
        return None
    text = raw.replace(b",", b" ").replace(b"N/A", b"nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns, and stops, at a field it cannot read
        try:
            values = np.fromstring(text, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    if values.size % _FIELDS:
        return None
    at, duration, size = values.reshape(-1, _FIELDS).T
    keep = np.isfinite(at) & np.isfinite(size)
    duration = np.where(np.isfinite(duration) & (duration > 0), duration, 0.0)
    return at[keep], duration[keep], size[keep]


def _three_fields_a_line(raw: bytes) -> bool:
    """Whether every line of ``raw`` is empty or three non-empty fields, a trailing comma
    allowed (pure; numpy over the bytes: no loop over the lines)."""
    if not raw.strip():
        return True
    text = np.frombuffer(raw.strip().replace(b"\r", b"") + b"\n", dtype=np.uint8)
    ends = np.flatnonzero(text == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1])
    commas = np.concatenate([[0], np.cumsum(text == ord(","))])
    count = commas[ends] - commas[starts]  # commas per line
    empty = ends == starts
    trailing = ~empty & (text[np.maximum(ends - 1, 0)] == ord(","))
    fields = np.where(empty, _FIELDS, count + 1 - trailing)
    leading = ~empty & (text[starts] == ord(","))
    return bool(np.all(fields == _FIELDS) and not leading.any() and b",," not in raw)


def _parse_lines(raw: bytes) -> tuple[Envelope, Envelope, Envelope]:
    """:func:`parse_packets` line by line."""
    times: list[float] = []
    durations: list[float] = []
    sizes: list[float] = []
    for line in raw.split(b"\n"):
        fields = line.strip().split(b",")
        if len(fields) < 3:
            continue
        try:
            at, size = float(fields[0]), float(fields[2])
        except ValueError:
            continue
        try:
            duration = float(fields[1])
        except ValueError:
            duration = 0.0
        if math.isfinite(at) and math.isfinite(size):
            times.append(at)
            durations.append(duration if math.isfinite(duration) and duration > 0 else 0.0)
            sizes.append(size)
    return np.array(times), np.array(durations), np.array(sizes)


def packet_envelope(times: Envelope, durations: Envelope, sizes: Envelope) -> Envelope | None:
    """Log bytes per :data:`STEP` from time 0 (a packet's bytes spread over the steps it lasts),
    or None when the sizes carry no envelope (too few packets, CBR) (pure)."""
    if sizes.size < MIN_PACKETS or float(np.mean(sizes)) <= 0:
        return None
    if float(np.std(sizes)) < MIN_SIZE_SPREAD * float(np.mean(sizes)):
        return None
    # The arithmetic as written at once, in place where it can be: a 4-hour recording's
    # 720,000 packets make each temporary 5.8 MB (issue 19's memory target).
    steps = _rounded_steps(durations)
    np.maximum(steps, 1, out=steps)
    first = _rounded_steps(times)
    share = sizes / steps
    keep = first >= 0
    if not keep.all():
        steps, first, share = steps[keep], first[keep], share[keep]
    del keep
    if not first.size:
        return None
    total = int(np.max(first + steps))
    values = np.zeros(total, np.float64)
    np.add.at(values, first, share)  # every packet lasts its first step (steps >= 1)
    for k in range(1, int(np.max(steps))):
        lasting = steps > k
        np.add.at(values, first[lasting] + k, share[lasting])
    result: Envelope = np.log1p(values, out=values)
    return result


def _rounded_steps(seconds: Envelope) -> npt.NDArray[np.int64]:
    """``seconds`` in whole :data:`STEP` s (rounded half to even, as ``np.round``) (pure)."""
    scaled = seconds / STEP
    np.round(scaled, out=scaled)
    return scaled.astype(np.int64)


def energy_envelope(samples: npt.NDArray[np.float32], rate: int) -> Envelope:
    """Log mean energy of each whole :data:`STEP` of ``samples`` at ``rate`` Hz (pure)."""
    frame = round(STEP * rate)
    count = samples.size // frame
    frames = samples[: count * frame].astype(np.float64).reshape(count, frame)
    result: Envelope = np.log(np.mean(np.square(frames), axis=1) + ENERGY_FLOOR)
    return result


def search(
    signal: Envelope,
    reference: Envelope,
    *,
    min_lag_seconds: float,
    max_lag_seconds: float,
    count: int = CANDIDATES,
) -> list[Candidate]:
    """The best ``count`` places (seconds where the reference's first value lies in the
    signal; before 0: the signal as if preceded by silence) by normalised cross-correlation,
    at least :data:`~worker.media.sync_search.CANDIDATE_SEPARATION_SECONDS` apart (pure)."""
    length = reference.size
    centred = reference - reference.mean()
    norm = float(np.linalg.norm(centred))
    if length < 2 or norm <= 0:
        return []
    lead = max(0, math.ceil(-min_lag_seconds / STEP))
    floor = float(np.min(signal)) if signal.size else 0.0
    padded = np.concatenate([np.full(lead, floor), signal])
    lags = padded.size - length + 1
    if lags <= 0:
        return []
    scores = _scores(padded, centred / norm, lags)
    del padded  # each step below lets go of what it no longer needs (4 hours: 720,000 steps)
    seconds = (np.arange(lags) - lead) * STEP
    scores[(seconds < min_lag_seconds) | (seconds > max_lag_seconds)] = -np.inf
    separation = round(CANDIDATE_SEPARATION_SECONDS / STEP)
    peaks = top_peaks(scores, count=count, separation=separation)
    return [Candidate(float(seconds[i]), score) for i, score in peaks]


def _scores(padded: Envelope, reference: Envelope, lags: int) -> Envelope:
    """The normalised cross-correlation of the unit-norm, centred ``reference`` at each of
    ``padded``'s first ``lags`` lags (pure). Same arithmetic as written at once, the
    temporaries let go step by step: a 4-hour recording's envelope (720,000 steps) took
    57 MB at once (issue 19's memory target: flat from 5 to 240 minutes)."""
    length = reference.size
    size = 1 << (padded.size + length).bit_length()
    spectrum = np.fft.rfft(padded, size)
    spectrum *= np.conj(np.fft.rfft(reference, size))
    plain = np.fft.irfft(spectrum, size)[:lags]
    del spectrum
    sums = np.concatenate([[0.0], np.cumsum(padded)])
    total = sums[length:] - sums[:lags]
    del sums
    squares = np.concatenate([[0.0], np.cumsum(np.square(padded))])
    energy = squares[length:] - squares[:lags]
    del squares
    energy -= np.square(total) / length
    del total
    spread = np.sqrt(np.maximum(energy, 0.0, out=energy), out=energy)
    scores = np.where(spread > 1e-9, plain / np.maximum(spread, 1e-9), 0.0)
    return scores


def usable(candidates: list[Candidate]) -> list[Candidate]:
    """``candidates`` when the best reaches :data:`MIN_SCORE`, else none (pure): a weak packet
    match is left to the decode-based search rather than measured."""
    best = max((c.score for c in candidates), default=0.0)
    return candidates if best >= MIN_SCORE else []
