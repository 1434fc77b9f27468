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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import numpy as np
import numpy.typing as npt
import structlog

from worker import ffmpeg
from worker.errors import MediaError, MediaProcessKilled, MediaTimeout
from worker.limits import FFMPEG_TIMEOUT_BASE_SECONDS
from worker.observability import SYNC_OUTCOMES

log = structlog.get_logger(__name__)

Signal = npt.NDArray[np.float32]
SyncMethod = Literal["waveform", "timestamp"]

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


# --- planning (pure) -------------------------------------------------------------------------


def plan_window(
    *, call_end: float, recording_duration: float, connect_duration: float
) -> SyncWindow | str:
    """The stretches to correlate, or the fallback reason when there is too little audio.

    The Connect stretch is its last :data:`STRETCH_SECONDS` (fewer for a short call); at zero
    offset it lies on the recording at ``[call_end - length, call_end]``. The microphone is
    decoded over that stretch widened by the search window, clamped to the recording.
    """
    length = min(STRETCH_SECONDS, connect_duration, call_end + SEARCH_SECONDS)
    if length < MIN_STRETCH_SECONDS:
        return "too_short"
    connect_start = connect_duration - length
    placement = call_end - connect_duration  # recording time of the Connect file's t=0
    begin = max(0.0, call_end - length - SEARCH_SECONDS - DECODE_MARGIN_SECONDS)
    seek = math.floor(begin)
    end = min(recording_duration, call_end + SEARCH_SECONDS + DECODE_MARGIN_SECONDS)
    if end - seek < MIN_STRETCH_SECONDS:
        return "too_short"
    # The measured call end stays inside the recording (END alignment cannot place beyond).
    return SyncWindow(
        connect_start=connect_start,
        connect_seconds=length,
        recording_seek=seek,
        recording_seconds=end - seek,
        zero_lag=connect_start + placement - seek,
        min_offset=max(-SEARCH_SECONDS, -call_end),
        max_offset=min(SEARCH_SECONDS, recording_duration - call_end),
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
    seconds: float,
) -> list[str]:
    """ffmpeg decoding ``seconds`` from ``seek`` of one audio stream to 8 kHz mono float32 on
    stdout (pure). ``-ss`` before ``-i`` is a fast container seek; ``first_pts=0`` makes sample
    0 the seek point (a late start or a gap becomes silence, as in the merge)."""
    samples = round(seconds * SYNC_RATE)
    chain = ",".join(
        [
            _pick(channels, agent=agent),
            f"aresample={SYNC_RATE}:async=1:first_pts=0",
            f"atrim=end_sample={samples}",
        ]
    )
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
    return Estimate(whole, (first, second), coefficient)


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
    denominator = float(np.linalg.norm(part) * np.linalg.norm(aligned))
    return float(np.dot(part, aligned)) / denominator if denominator > 0 else 0.0


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
    """The whole pure decision on two decoded stretches (see :func:`measure`)."""
    if _rms(reference) < SILENCE_RMS:
        return SyncResult.timestamp("silent_connect")
    if _rms(signal) < SILENCE_RMS:
        return SyncResult.timestamp("silent_recording")
    if pause_fraction(reference) < MIN_PAUSE_FRACTION:
        return SyncResult.timestamp("no_pauses")
    found = estimate(
        reference,
        signal,
        min_lag=window.zero_lag + window.min_offset,
        max_lag=window.zero_lag + window.max_offset,
    )
    return decide(found, window.zero_lag, window)


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
    """Measure the call end's offset from the audio; the timestamp when not confident.

    Never raises for bad audio: a decode that fails or times out is a fallback (the merge
    itself then reports what is wrong with the file). Cancellation kills both decodes.
    """
    result = await _measure(inputs, timeout=timeout)
    SYNC_OUTCOMES.labels(method=result.method, reason=result.reason).inc()
    log.info(
        "call_end_sync",
        method=result.method,
        reason=result.reason,
        offset=round(result.offset_seconds, 4),
        confidence=result.confidence,
        estimate=None if result.estimate_seconds is None else round(result.estimate_seconds, 4),
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
    connect_args = build_decode_args(
        inputs.connect,
        inputs.connect_audio_index,
        channels=inputs.connect_audio_channels,
        agent=True,
        seek=window.connect_start,
        seconds=window.connect_seconds,
    )
    recording_args = build_decode_args(
        inputs.recording,
        inputs.recording_audio_index,
        channels=inputs.recording_audio_channels,
        agent=False,
        seek=window.recording_seek,
        seconds=window.recording_seconds,
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
    return synchronise(reference, signal, window)
