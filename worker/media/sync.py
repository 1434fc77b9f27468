"""Waveform sync: where the call really ended, measured from the audio (issue 13).

The message's call end has whole-second resolution and is the browser's idea of when the call
ended, so END alignment on it can misplace the Connect audio by a second or more. The
recording's own audio (the agent's microphone) holds the agent's side of the same
conversation, so the true placement is measured: the Connect **agent channel** (right) is
cross-correlated with the microphone over a limited stretch before the call end, in a bounded
window around the timestamp's placement.

- Stretch: the last :data:`STRETCH_SECONDS` of the Connect audio and the microphone over the
  same stretch +- :data:`SEARCH_SECONDS`, decoded by ffmpeg to 8 kHz mono float32 on a pipe
  with a fast input seek, so the cost does not grow with the recording's length.
- Estimator: GCC-PHAT-beta restricted to the telephony band (:data:`BAND_HZ`), which whitens
  the very different spectra of a G.711 phone line and a browser microphone and leaves one
  sharp peak per real alignment; parabolic interpolation gives the sub-sample position.
- Confidence: the peak's standard score (``z``: peak minus mean over the search window, in
  standard deviations, as BBC's audio-offset-finder reports), the side-peak ratio (the next
  peak outside +-:data:`PEAK_EXCLUSION_SECONDS`, relative to the peak, in the whitened and in
  the plain correlation: near 1 for a looped prompt or music that matches at every period),
  and the agreement of the two independent halves of the stretch (split where half of the
  agent's speech energy lies, so a turn-taking call gives both halves something to match).
  Only all three together make a *confident* measurement; anything else falls back to the
  timestamp (:class:`SyncResult.method` ``timestamp`` with a ``reason``), never a guess.

Timeline: as :mod:`worker.media`'s, the recording's shifted timeline, on which the call end is
measured. ``offset`` is *measured minus timestamp*: the measured call end is
``call_end + offset``.

The estimator (:func:`estimate`, :func:`decide`) and the planning and argument builders are
pure; :func:`measure` runs the two decodes (the allow-listed, time-limited runner of
:mod:`worker.ffmpeg`, killed on cancellation) and applies them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import anyio
import numpy as np
import numpy.typing as npt
import structlog

from worker import ffmpeg
from worker.errors import MediaError, MediaProcessKilled, MediaTimeout
from worker.limits import FFMPEG_TIMEOUT_BASE_SECONDS
from worker.media import drift, sync_search
from worker.observability import CONNECT_SHORT, SYNC_DRIFT_PPM, SYNC_OUTCOMES

log = structlog.get_logger(__name__)

Signal = npt.NDArray[np.float32]
# waveform: found +-SEARCH_SECONDS around the timestamp; waveform_wide: found by the wide
# search (anywhere the Connect audio can lie in the recording); timestamp: not confident.
SyncMethod = Literal["waveform", "waveform_wide", "timestamp"]

SYNC_RATE = 8000  # Connect's rate: nothing above 4 kHz is common to both signals
STRETCH_SECONDS = 30.0  # Connect audio correlated, ending at its end
SEARCH_SECONDS = 5.0  # +- around the timestamp's placement
MIN_STRETCH_SECONDS = 6.0  # below this, too little speech to trust
BAND_HZ = (250.0, 3400.0)  # telephony band (G.711 passes 300-3400 Hz)
PHAT_BETA = 0.8  # 1 = pure PHAT; a little magnitude weighting resists noise-only bins
PEAK_EXCLUSION_SECONDS = 0.020  # a peak's own lobe (reverberation, pitch) around it
PLAIN_EXCLUSION_SECONDS = 0.050  # the plain correlation's lobe (voiced speech's pitch periods)
# A room only adds *later* copies of the voice (reflections, reverberation): the plain
# correlation of a reverberant microphone has rivals up to ~0.1 s after the direct path (0.66
# of the peak at 66 ms in a 0.5 s room at -3 dB direct-to-reverberant ratio), never before it.
# So after the peak a rival counts only beyond this; a loop still shows one period before it.
REVERB_TAIL_SECONDS = 0.300
TAPER_SECONDS = 0.25
# Thresholds chosen on the speech corpus (bench/sync_bench.py; docs/performance.md): real
# alignments score z 285-600 and a correlation of 0.6-0.74; another conversation (even in the
# same synthetic voice, sharing whole words) stays at z <= 9 and correlation <= 0.04, music
# at z <= 5, unrelated tones at z 15 but correlation 0.00001; a looped tune scores z 40-70
# but a side-peak ratio of 1.0. Each threshold sits well between, and all must pass.
MIN_Z = 20.0
MIN_HALF_Z = 10.0
MAX_SIDE_PEAK_RATIO = 0.5
MIN_CORRELATION = 0.15
# The correlation must hold in every time third of the stretch that carries the agent's speech
# (at least 1% of the loudest third's energy: -20 dB), not only over the whole (_weakest_part).
PARTS = 3
PART_MIN_ENERGY = 0.01
AGREEMENT_SECONDS = 0.004  # the halves must agree with the whole within this (drift: 250 ppm)
# Below this RMS (about -60 dBFS) a stretch is silence (or a muted microphone).
SILENCE_RMS = 1e-3
# The agent channel of a conversation pauses: while the customer talks, between phrases (the
# speech corpus: 47-99% of 20 ms frames more than PAUSE_DB below the loudest). Music on hold
# never does (0%); when the room hears the same tune at another point of it, the tune still
# correlates sharply, at the wrong offset. A stretch without pauses is not a conversation.
PAUSE_FRAME_SECONDS = 0.020
PAUSE_DB = 25.0
MIN_PAUSE_FRACTION = 0.05
DECODE_MARGIN_SECONDS = 0.5  # decoded beyond the search window at both ends
MAX_DECODE_BYTES = 64 << 20  # a bound on what a decode may return (well above 60 s at 8 kHz)
# The wide search (issue 19) runs when the +-SEARCH_SECONDS search was not confident for one
# of these reasons (the microphone near the timestamp held something else, or nothing: an
# early stop leaves the rest of the call, or a silent After Call Work, there).
WIDE_REASONS = frozenset({"low_confidence", "halves_disagree", "out_of_range", "silent_recording"})
WIDE_FINE_SECONDS = 1.0  # the fine pass's +- around each coarse candidate
WIDE_RIVAL_SCORE = 0.6  # candidates scoring below this share of the best are not measured
WIDE_DISTINCT_SECONDS = 0.020  # two confident candidates further apart: ambiguous
# The whole-recording decode of the wide search: its time limit grows with the recording.
WIDE_TIMEOUT_PER_MEDIA_SECOND = 0.25
DRIFT_RETRY_REASONS = frozenset({"low_confidence", "halves_disagree"})
DRIFT_RETRY_MIN = 20.0  # ppm: below, a drift does not smear a stretch enough to matter
# Stretch-and-retry rounds: two noisy halves can misjudge the drift by 15 ppm (-46 for -60 on
# a real voice), which still smears the outer thirds of a 30 s stretch past MIN_CORRELATION;
# the retry's own halves then tell what is left (issue 19 QA).
DRIFT_RETRIES = 3
DRIFT_SEARCH_MARGIN_SECONDS = 0.050  # besides MAX_DRIFT_PPM over the distance from the end


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncResult:
    """The outcome of a sync, stored on the row (``syncMethod``, ``syncOffsetSeconds``,
    ``syncConfidence``) and counted in ``komorebi_sync_total{method,reason}``.

    ``offset_seconds`` is measured minus timestamp (0 when the timestamp is used);
    ``confidence`` the peak's standard score (0 when nothing was measured); ``reason`` is
    ``measured`` for a waveform sync, else why the timestamp was kept. ``estimate_seconds``
    is the (unused) measured offset of a non-confident estimate, for the logs.
    """

    method: SyncMethod
    offset_seconds: float
    confidence: float
    reason: str
    estimate_seconds: float | None = None
    # Clock drift applied to the Connect audio (ppm, recording seconds per Connect second - 1;
    # 0: none): the Connect end stays at the measured call end, the rest is stretched.
    drift_ppm: float = 0.0

    @property
    def measured(self) -> bool:
        """A confident placement (by either search)."""
        return self.method != "timestamp"

    @property
    def drift_ratio(self) -> float:
        """Recording seconds per Connect second."""
        return 1.0 + self.drift_ppm * 1e-6

    @classmethod
    def timestamp(
        cls, reason: str, *, confidence: float = 0.0, estimate: float | None = None
    ) -> SyncResult:
        """A fallback to the timestamp, with why."""
        return cls("timestamp", 0.0, confidence, reason, estimate)


TIMESTAMP_ONLY = SyncResult.timestamp("disabled")
# Every reason the timestamp can be kept for (the `reason` label of komorebi_sync_total).
FALLBACK_REASONS = (
    "disabled",
    "no_recording_audio",
    "too_short",
    "silent_connect",
    "silent_recording",
    "no_pauses",
    "low_confidence",
    "ambiguous",
    "halves_disagree",
    "out_of_range",
    "decode_failed",
)
# Every outcome exists from the first scrape (at 0), so rates and ratios work at once.
SYNC_OUTCOMES.labels(method="waveform", reason="measured")
SYNC_OUTCOMES.labels(method="waveform_wide", reason="measured")
for _reason in ("ambiguous", *WIDE_REASONS):
    SYNC_OUTCOMES.labels(method="timestamp", reason=f"wide_{_reason}")
CONNECT_SHORT.labels(reason="early_stop")
for _reason in FALLBACK_REASONS:
    SYNC_OUTCOMES.labels(method="timestamp", reason=_reason)


@dataclass(frozen=True)
class SyncInputs:
    """What a sync needs to know about the two files (from their probes)."""

    recording: Path
    recording_audio_index: int | None  # None: the recording has no audio stream
    recording_audio_channels: int | None
    recording_duration: float
    connect: Path
    connect_audio_index: int
    connect_audio_channels: int | None
    connect_duration: float
    call_end: float  # the timestamp's call end, already clamped to the recording


@dataclass(frozen=True)
class SyncWindow:
    """The two stretches to decode (seconds) and where zero offset lies between them."""

    connect_start: float  # on the Connect file's timeline
    connect_seconds: float
    recording_seek: int  # whole seconds on the recording's timeline (see media's seek)
    recording_seconds: float
    # Lag (in seconds) of the Connect stretch inside the recording stretch at zero offset.
    zero_lag: float
    min_offset: float
    max_offset: float


@dataclass(frozen=True)
class Peak:
    """One correlation search: the best lag (seconds, sub-sample) and its scores."""

    lag: float
    z: float
    side_peak_ratio: float


@dataclass(frozen=True)
class Estimate:
    """The whole stretch's peak and its two halves' peaks (lags on the whole's scale); the
    halves split the stretch where half its energy lies (:func:`energy_midpoint`)."""

    whole: Peak
    halves: tuple[Peak, Peak]
    # Correlation coefficient (telephony band) of the reference and the signal, aligned at the
    # whole's lag: how much of the two waveforms is really the same (a whitened peak can be
    # sharp on signals that share nothing, e.g. two unrelated tones).
    correlation: float = 1.0
    # Where the halves' middles lie in the reference (seconds): their lags' difference over
    # their distance is the drift inside the stretch.
    half_centres: tuple[float, float] = (0.0, 0.0)


# --- planning (pure) -------------------------------------------------------------------------


def plan_window(
    *,
    call_end: float,
    recording_duration: float,
    connect_duration: float,
    search: float = SEARCH_SECONDS,
) -> SyncWindow | str:
    """The stretches to correlate, or the fallback reason when there is too little audio.

    The Connect stretch is its last :data:`STRETCH_SECONDS` (fewer for a short call); at zero
    offset it lies on the recording at ``[call_end - length, call_end]``. The microphone is
    decoded over that stretch widened by the search window (+-``search``), clamped to the
    recording.
    """
    length = min(STRETCH_SECONDS, connect_duration, call_end + search)
    if length < MIN_STRETCH_SECONDS:
        return "too_short"
    connect_start = connect_duration - length
    placement = call_end - connect_duration  # recording time of the Connect file's t=0
    begin = max(0.0, call_end - length - search - DECODE_MARGIN_SECONDS)
    seek = math.floor(begin)
    end = min(recording_duration, call_end + search + DECODE_MARGIN_SECONDS)
    if end - seek < MIN_STRETCH_SECONDS:
        return "too_short"
    # The measured call end stays inside the recording (END alignment cannot place beyond).
    return SyncWindow(
        connect_start=connect_start,
        connect_seconds=length,
        recording_seek=seek,
        recording_seconds=end - seek,
        zero_lag=connect_start + placement - seek,
        min_offset=max(-search, -call_end),
        max_offset=min(search, recording_duration - call_end),
    )


def plan_stretch(
    *,
    connect_start: float,
    length: float,
    placement: float,
    search: float,
    recording_duration: float,
) -> SyncWindow | None:
    """A window for the Connect stretch ``[connect_start, +length]`` expected at recording
    time ``placement + connect_start`` (+-``search``), for the drift measurements; None when
    the stretch and its search do not lie inside the recording (pure)."""
    at = placement + connect_start
    if at - search < 0 or at + length + search > recording_duration:
        return None
    seek = math.floor(max(0.0, at - search - DECODE_MARGIN_SECONDS))
    end = min(recording_duration, at + length + search + DECODE_MARGIN_SECONDS)
    return SyncWindow(
        connect_start=connect_start,
        connect_seconds=length,
        recording_seek=seek,
        recording_seconds=end - seek,
        zero_lag=at - seek,
        min_offset=-search,
        max_offset=search,
    )


def _pick(channels: int | None, *, agent: bool) -> str:
    """pan expression: Connect's agent is the right channel; a microphone is its average."""
    if channels == 2:
        return "pan=mono|c0=c1" if agent else "pan=mono|c0=0.5*c0+0.5*c1"
    if channels == 1:
        return "pan=mono|c0=c0"
    return "aformat=channel_layouts=mono"  # other layouts: ffmpeg's standard downmix


def build_decode_args(
    path: Path,
    stream_index: int,
    *,
    channels: int | None,
    agent: bool,
    seek: float,
    seconds: float | None,
    band: bool = False,
) -> list[str]:
    """ffmpeg decoding ``seconds`` (None: to the end) from ``seek`` of one audio stream to
    8 kHz mono float32 on stdout (pure). ``-ss`` before ``-i`` is a fast container seek;
    ``first_pts=0`` makes sample 0 the seek point (a late start or a gap becomes silence, as
    in the merge). ``band`` band-limits to :data:`BAND_HZ` (the wide search's envelopes)."""
    steps = [_pick(channels, agent=agent), f"aresample={SYNC_RATE}:async=1:first_pts=0"]
    if band:
        steps += [f"highpass=f={BAND_HZ[0]:g}", f"lowpass=f={BAND_HZ[1]:g}"]
    if seconds is not None:
        steps.append(f"atrim=end_sample={round(seconds * SYNC_RATE)}")
    chain = ",".join(steps)
    args = [ffmpeg.FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"]
    if seek > 0:
        args += ["-ss", f"{seek:.6f}"]
    args += ffmpeg.input_args(path)
    args += ["-map", f"0:{stream_index}", "-vn", "-sn", "-dn", "-af", chain]
    args += ["-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]
    return args


# --- estimation (pure) -----------------------------------------------------------------------


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


def _rms(signal: Signal) -> float:
    return float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))) if signal.size else 0.0


def _taper(signal: Signal) -> npt.NDArray[np.float64]:
    """``signal`` with raised-cosine ends (:data:`TAPER_SECONDS`): a stretch's abrupt cut is
    broadband, and whitening would otherwise weigh it like speech."""
    out = signal.astype(np.float64)
    ramp = min(out.size // 4, round(TAPER_SECONDS * SYNC_RATE))
    if ramp > 1:
        rise = np.hanning(2 * ramp)[:ramp]
        out[:ramp] *= rise
        out[-ramp:] *= rise[::-1]
    return out


def _correlate(
    spectrum: npt.NDArray[np.complex128], reference: Signal, size: int, rate: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """GCC-PHAT-beta and plain (band-limited) cross-correlation of ``reference`` against the
    signal whose rfft is ``spectrum``."""
    cross = spectrum * np.conj(np.fft.rfft(_taper(reference), size))
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    cross[(freqs < BAND_HZ[0]) | (freqs > BAND_HZ[1])] = 0
    plain = np.fft.irfft(cross, size)
    magnitude = np.abs(cross)
    floor = 1e-12 + 1e-9 * float(magnitude.max(initial=0.0))
    cross /= (magnitude + floor) ** PHAT_BETA
    return np.fft.irfft(cross, size), plain


def _peak(
    correlations: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    low: int,
    high: int,
    rate: int,
) -> Peak:
    """Best lag in ``[low, high]`` samples (negative lags wrap around) and its scores."""
    correlation, plain = correlations
    lags = np.arange(low, high + 1)
    values = correlation[lags % correlation.size]
    best = int(np.argmax(values))
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
    energy = plain[lags % plain.size]
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
    rate: int = SYNC_RATE,
) -> Estimate:
    """Where ``reference`` lies inside ``signal`` (seconds, ``signal[t + lag] ~ reference[t]``),
    searched in ``[min_lag, max_lag]``, for the whole reference and each of its halves.

    The halves are taken from the part of the reference that lies inside ``signal`` at the
    whole's lag: when the Connect recording started before the screen recording, its head has
    no microphone to match, and a half made of it would disown a correct peak.
    """
    size = _fft_size(reference.size + signal.size)
    spectrum = np.fft.rfft(signal.astype(np.float64), size)
    low, high = math.ceil(min_lag * rate), math.floor(max_lag * rate)
    whole = _peak(_correlate(spectrum, reference, size, rate), low, high, rate)
    at = round(whole.lag * rate)
    begin = int(np.clip(-at, 0, reference.size))
    end = int(np.clip(signal.size - at, begin, reference.size))
    if end - begin < MIN_STRETCH_SECONDS * rate:
        begin, end = 0, reference.size  # too little inside: the halves of the whole as is
    half = begin + energy_midpoint(reference[begin:end])
    halves = []
    # A part starting `start` samples into the reference lies `start` later than the whole.
    for start, stop in ((begin, half), (half, end)):
        part = _correlate(spectrum, reference[start:stop], size, rate)
        found = _peak(part, low + start, high + start, rate)
        halves.append(Peak(found.lag - start / rate, found.z, found.side_peak_ratio))
    first, second = halves
    coefficient = _coefficient(spectrum, reference, size, round(whole.lag * rate), rate)
    centres = ((begin + half) / 2 / rate, (half + end) / 2 / rate)
    return Estimate(whole, (first, second), coefficient, centres)


def _coefficient(
    spectrum: npt.NDArray[np.complex128], reference: Signal, size: int, lag: int, rate: int
) -> float:
    """Pearson correlation of the band-limited reference and signal at integer ``lag``."""
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    outside = (freqs < BAND_HZ[0]) | (freqs > BAND_HZ[1])
    band = spectrum.copy()
    band[outside] = 0
    signal = np.fft.irfft(band, size)
    ours = np.fft.rfft(_taper(reference), size)
    ours[outside] = 0
    ref = np.fft.irfft(ours, size)[: reference.size]
    begin, end = max(0, lag), min(size, lag + reference.size)
    if end <= begin:
        return 0.0
    aligned = signal[begin:end]
    part = ref[begin - lag : end - lag]
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
    lags tell the drift inside the stretch; when that is a plausible clock error, the Connect
    stretch is stretched by it (:func:`worker.media.drift.stretch`) and measured once more under the
    same rules, up to :data:`DRIFT_RETRIES` times (each by the drift the last one's halves
    still show). The offset is still the stretch's end's.
    """
    result, found = _synchronise(reference, signal, window)
    if found is None or result.measured or result.reason not in DRIFT_RETRY_REASONS:
        return result
    ratio = 1.0
    for _ in range(DRIFT_RETRIES):
        # The drift left inside the (stretched) stretch, from its halves' lags.
        first, second = found.halves
        distance = found.half_centres[1] - found.half_centres[0]
        if min(first.z, second.z) < MIN_HALF_Z or distance <= 0:
            return result
        ratio *= 1.0 + (second.lag - first.lag) / distance
        rate = ratio - 1.0
        if not DRIFT_RETRY_MIN <= abs(rate) * 1e6 <= drift.MAX_DRIFT_PPM:
            return result
        retry, again = _synchronise(drift.stretch(reference, ratio), signal, window)
        if retry.measured:
            # The stretched reference starts where the plain one did and ends rate * length
            # later. drift_ppm says by how much it was stretched (the caller may fit its own).
            end_shift = rate * reference.size / SYNC_RATE
            offset = retry.offset_seconds + end_shift
            return replace(retry, offset_seconds=offset, drift_ppm=rate * 1e6)
        if again is None or retry.reason not in DRIFT_RETRY_REASONS:
            return result
        found = again
    return result


def _synchronise(
    reference: Signal, signal: Signal, window: SyncWindow
) -> tuple[SyncResult, Estimate | None]:
    if _rms(reference) < SILENCE_RMS:
        return SyncResult.timestamp("silent_connect"), None
    if _rms(signal) < SILENCE_RMS:
        return SyncResult.timestamp("silent_recording"), None
    if pause_fraction(reference) < MIN_PAUSE_FRACTION:
        return SyncResult.timestamp("no_pauses"), None
    found = estimate(
        reference,
        signal,
        min_lag=window.zero_lag + window.min_offset,
        max_lag=window.zero_lag + window.max_offset,
    )
    return decide(found, window.zero_lag, window), found


# --- running ---------------------------------------------------------------------------------


async def _decode(args: list[str], *, timeout: float, what: str) -> Signal:  # noqa: ASYNC109
    chunks: list[bytes] = []
    size = 0

    def keep(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size <= MAX_DECODE_BYTES:
            chunks.append(chunk)

    await ffmpeg.run(args, timeout=timeout, what=what, on_stdout_bytes=keep)
    raw = b"".join(chunks)
    usable = len(raw) - len(raw) % 4
    return np.frombuffer(raw[:usable], dtype="<f4").astype(np.float32)


async def measure(
    inputs: SyncInputs,
    *,
    timeout: float = FFMPEG_TIMEOUT_BASE_SECONDS,  # noqa: ASYNC109
) -> SyncResult:
    """Measure the call end's offset (and the clock drift) from the audio; the timestamp when
    not confident.

    First the +-:data:`SEARCH_SECONDS` search around the timestamp; when it is not confident
    for one of :data:`WIDE_REASONS`, the wide search over the whole recording
    (:mod:`worker.media.sync_search`, then the same fine pass around its candidates). A confident
    placement is then measured again near the start of the overlap (and its middle on long
    calls) for the drift (:mod:`worker.media.drift`).

    Never raises for bad audio: a decode that fails or times out is a fallback (the merge
    itself then reports what is wrong with the file). Cancellation kills every decode.
    """
    result = await _measure(inputs, timeout=timeout)
    SYNC_OUTCOMES.labels(method=result.method, reason=result.reason).inc()
    if result.measured:
        SYNC_DRIFT_PPM.observe(abs(result.drift_ppm))
    log.info(
        "call_end_sync",
        method=result.method,
        reason=result.reason,
        offset=round(result.offset_seconds, 4),
        confidence=result.confidence,
        estimate=None if result.estimate_seconds is None else round(result.estimate_seconds, 4),
        drift_ppm=round(result.drift_ppm, 2),
        call_end=round(inputs.call_end, 3),
    )
    return result


async def _measure(inputs: SyncInputs, *, timeout: float) -> SyncResult:  # noqa: ASYNC109
    if inputs.recording_audio_index is None:
        return SyncResult.timestamp("no_recording_audio")
    window = plan_window(
        call_end=inputs.call_end,
        recording_duration=inputs.recording_duration,
        connect_duration=inputs.connect_duration,
    )
    if isinstance(window, str):
        return SyncResult.timestamp(window)
    found = await _measure_window(inputs, window, timeout=timeout)
    if found.method == "timestamp" and found.reason in WIDE_REASONS:
        found = await _wide(inputs, window, found, timeout=timeout)
    if not found.measured:
        return found
    return await _drift(inputs, found, window.connect_seconds, timeout=timeout)


async def _measure_window(
    inputs: SyncInputs,
    window: SyncWindow,
    *,
    timeout: float,  # noqa: ASYNC109
) -> SyncResult:
    """Decode one window's two stretches side by side and decide on them."""
    decoded = await _decode_window(inputs, window, timeout=timeout)
    if isinstance(decoded, SyncResult):
        return decoded
    return synchronise(*decoded, window)


async def _decode_window(
    inputs: SyncInputs,
    window: SyncWindow,
    *,
    timeout: float,  # noqa: ASYNC109
) -> tuple[Signal, Signal] | SyncResult:
    """The window's Connect and microphone stretches, or the fallback when they cannot be had."""
    connect_args = _connect_args(inputs, window, band=False)
    recording_args = _recording_args(
        inputs, seek=window.recording_seek, seconds=window.recording_seconds, band=False
    )
    decoded: dict[str, Signal] = {}

    async def decode(name: str, args: list[str]) -> None:
        decoded[name] = await _decode(args, timeout=timeout, what=f"sync decode of the {name}")

    failure: str | None = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(decode, "Connect audio", connect_args)
            group.start_soon(decode, "recording audio", recording_args)
    except* (MediaError, MediaTimeout, MediaProcessKilled) as errors:
        failure = str(errors.exceptions[0])
    if failure is not None:
        log.warning("call_end_sync_decode_failed", error=failure)
        return SyncResult.timestamp("decode_failed")
    reference, signal = decoded["Connect audio"], decoded["recording audio"]
    if reference.size < MIN_STRETCH_SECONDS * SYNC_RATE:
        return SyncResult.timestamp("too_short")
    return reference, signal


def _connect_args(inputs: SyncInputs, window: SyncWindow, *, band: bool) -> list[str]:
    """The decode of the window's Connect stretch (the agent channel)."""
    return build_decode_args(
        inputs.connect,
        inputs.connect_audio_index,
        channels=inputs.connect_audio_channels,
        agent=True,
        seek=window.connect_start,
        seconds=window.connect_seconds,
        band=band,
    )


def _recording_args(
    inputs: SyncInputs, *, seek: float, seconds: float | None, band: bool
) -> list[str]:
    """The decode of the microphone from ``seek`` (``seconds`` None: to the end)."""
    assert inputs.recording_audio_index is not None
    return build_decode_args(
        inputs.recording,
        inputs.recording_audio_index,
        channels=inputs.recording_audio_channels,
        agent=False,
        seek=seek,
        seconds=seconds,
        band=band,
    )


# --- the wide search (issue 19) ---------------------------------------------------------------


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


async def _wide(
    inputs: SyncInputs,
    window: SyncWindow,
    narrow: SyncResult,
    *,
    timeout: float,  # noqa: ASYNC109
) -> SyncResult:
    """Coarse envelope search over the whole recording, then the fine pass around each
    candidate (see :mod:`worker.media.sync_search`)."""
    length = window.connect_seconds
    reference_args = _connect_args(inputs, window, band=True)
    recording_args = _recording_args(inputs, seek=0, seconds=None, band=True)
    wide_timeout = timeout + WIDE_TIMEOUT_PER_MEDIA_SECOND * inputs.recording_duration
    try:
        reference = await _decode(reference_args, timeout=timeout, what="wide sync reference")
        search = sync_search.EnvelopeSearch(
            sync_search.envelope(reference),
            # The reference (the Connect file's end) must end inside the recording, and
            # overlap it by a usable stretch when it starts before it.
            min_lag_seconds=min(0.0, MIN_STRETCH_SECONDS - length),
            max_lag_seconds=inputs.recording_duration - length,
        )
        await _stream(recording_args, search.feed, timeout=wide_timeout, what="wide sync decode")
    except (MediaError, MediaTimeout, MediaProcessKilled) as error:
        log.warning("call_end_sync_wide_decode_failed", error=str(error))
        return SyncResult.timestamp("decode_failed")
    confident: list[SyncResult] = []
    for candidate in sync_search.worth_measuring(search.finish(), WIDE_RIVAL_SCORE):
        connect_end = candidate.seconds + length  # where the Connect file ends, by this one
        fine = plan_window(
            call_end=connect_end,
            recording_duration=inputs.recording_duration,
            connect_duration=inputs.connect_duration,
            search=WIDE_FINE_SECONDS,
        )
        if isinstance(fine, str):
            continue
        found = await _measure_window(inputs, fine, timeout=timeout)
        log.info(
            "call_end_sync_wide_candidate",
            at=round(connect_end, 3),
            score=round(candidate.score, 3),
            method=found.method,
            reason=found.reason,
            confidence=found.confidence,
        )
        if found.measured:
            offset = connect_end + found.offset_seconds - inputs.call_end
            confident.append(replace(found, offset_seconds=offset))
    return choose_wide(narrow, confident)


# --- drift (issue 19) ------------------------------------------------------------------------


async def _drift(
    inputs: SyncInputs,
    found: SyncResult,
    end_length: float,
    *,
    timeout: float,  # noqa: ASYNC109
) -> SyncResult:
    """Measure the placement again near the start (and middle) of the overlap; stretch the
    Connect audio when the measurements show a plausible drift (:mod:`worker.media.drift`).

    Each stretch is measured under the full rules (:func:`synchronise`, which stretches a
    drift-smeared stretch by the drift its halves show and measures it again); its offset is
    its middle's. The call end's own measurement is the anchor.
    """
    placement = inputs.call_end + found.offset_seconds - inputs.connect_duration
    connect_from = max(0.0, -placement) + DECODE_MARGIN_SECONDS
    connect_to = min(inputs.connect_duration, inputs.recording_duration - placement)
    starts = drift.measurement_times(connect_from, connect_to, STRETCH_SECONDS)
    if not starts:
        return replace(found, drift_ppm=0.0)  # one stretch's own drift is too rough to apply
    # The call end's stretch: its offset is where its middle lies (found's is its end's).
    anchor = drift.Point(
        inputs.connect_duration - end_length / 2,
        placement - found.drift_ppm * 1e-6 * end_length / 2,
    )
    points = [anchor]
    for start in starts:
        distance = inputs.connect_duration - start
        window = plan_stretch(
            connect_start=start,
            length=STRETCH_SECONDS,
            placement=placement,
            search=drift.MAX_DRIFT_PPM * 1e-6 * distance + DRIFT_SEARCH_MARGIN_SECONDS,
            recording_duration=inputs.recording_duration,
        )
        if window is None:
            continue
        decoded = await _decode_window(inputs, window, timeout=timeout)
        if isinstance(decoded, SyncResult):
            continue
        measured, shift = _drift_point(*decoded, window, anchor, placement, start)
        centre = measured.offset_seconds - measured.drift_ppm * 1e-6 * STRETCH_SECONDS / 2
        centre += shift
        log.info(
            "call_end_sync_drift_point",
            connect_seconds=round(start, 3),
            method=measured.method,
            reason=measured.reason,
            offset=round(centre, 5),
            confidence=measured.confidence,
        )
        if measured.measured:
            points.append(drift.Point(start + STRETCH_SECONDS / 2, placement + centre))
    fitted = drift.fit(points, anchor)
    log.info(
        "call_end_sync_drift",
        reason=fitted.reason,
        fitted_ppm=round(fitted.fitted_ppm, 2),
        points=len(points),
    )
    if fitted.reason != "applied":
        return replace(found, drift_ppm=0.0)
    # The line through the call end's stretch, followed to the Connect file's very end.
    end = fitted.placement + inputs.connect_duration * fitted.ratio
    return replace(found, offset_seconds=end - inputs.call_end, drift_ppm=fitted.ppm)


def _drift_point(
    reference: Signal,
    signal: Signal,
    window: SyncWindow,
    anchor: drift.Point,
    placement: float,
    start: float,
) -> tuple[SyncResult, float]:
    """One drift stretch under the full rules, and what to add to its offset for its middle.

    When drift smeared it past the rules and its own halves were too noisy to tell, its
    unconfirmed lag against the call end's stretch gives the drift over their distance (many
    times the stretch's length: precise); stretched by it, it is measured once more.
    """
    measured = synchronise(reference, signal, window)
    if measured.measured or measured.estimate_seconds is None:
        return measured, 0.0
    centre = start + STRETCH_SECONDS / 2
    rate = (placement + measured.estimate_seconds - anchor.placement) / (
        centre - anchor.connect_seconds
    )
    if not DRIFT_RETRY_MIN <= abs(rate) * 1e6 <= drift.MAX_DRIFT_PPM:
        return measured, 0.0
    retry = synchronise(drift.stretch(reference, 1.0 + rate), signal, window)
    # Stretched about its start, the stretch's lag is its start's; its middle is later.
    return retry, rate * STRETCH_SECONDS / 2


async def _stream(
    args: list[str],
    sink: Callable[[Signal], None],
    *,
    timeout: float,  # noqa: ASYNC109
    what: str,
) -> None:
    """Run a decode to float32 on stdout, handing ``sink`` whole samples as they come (the
    caller keeps what it needs: bounded memory whatever the length)."""
    rest = b""

    def chunk(data: bytes) -> None:
        nonlocal rest
        raw = rest + data
        usable = len(raw) - len(raw) % 4
        rest = raw[usable:]
        if usable:
            sink(np.frombuffer(raw[:usable], dtype="<f4").astype(np.float32))

    await ffmpeg.run(args, timeout=timeout, what=what, on_stdout_bytes=chunk)
