"""The waveform sync's vocabulary (issue 13, 19), pure: its limits and thresholds, what it is
given (:class:`SyncInputs`), what it decodes (:class:`SyncWindow`), what it measures
(:class:`Peak`, :class:`Estimate`) and what it decides (:class:`SyncResult`).

The thresholds' reasons are in :mod:`worker.media.sync`'s docstring and next to each value;
every other sync module takes them from here (one source of truth).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

Signal = npt.NDArray[np.float32]
# waveform: found +-SEARCH_SECONDS around the timestamp; waveform_wide: found by the wide
# search (anywhere the Connect audio can lie in the recording); timestamp: not confident.
SyncMethod = Literal["waveform", "waveform_wide", "timestamp"]

SYNC_RATE = 8000  # Connect's rate: nothing above 4 kHz is common to both signals
STRETCH_SECONDS = 30.0  # Connect audio correlated, ending at its end
SEARCH_SECONDS = 5.0  # +- around the timestamp's placement
# A message's call end can be this far off (issue 19: browser clocks, late events). A peak
# within +-SEARCH_SECONDS is accepted only if no rival within this whole uncertainty comes
# near it (by MAX_SIDE_PEAK_RATIO): the same words said twice (a replayed prompt) match
# perfectly wherever they recur, and the +-SEARCH_SECONDS search alone would see one copy only.
RIVAL_SEARCH_SECONDS = 30.0
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
# "rival": a peak beyond +-SEARCH_SECONDS (within RIVAL_SEARCH_SECONDS) rivals the one found;
# the wide search measures both places and keeps the timestamp when both are confident.
WIDE_REASONS = frozenset(
    {"low_confidence", "halves_disagree", "out_of_range", "rival", "silent_recording"}
)
WIDE_FINE_SECONDS = 1.0  # the fine pass's +- around each coarse candidate
WIDE_RIVAL_SCORE = 0.6  # candidates scoring below this share of the best are not measured
WIDE_DISTINCT_SECONDS = 0.020  # two confident candidates further apart: ambiguous
# The whole-recording decode of the wide search: its time limit grows with the recording.
WIDE_TIMEOUT_PER_MEDIA_SECOND = 0.25
# The whole-recording decode runs as this many processes side by side (at most two per job:
# the host runs several jobs) when the recording is at least this long; shorter ones are
# cheap, and a process more costs more than it saves.
WIDE_PARTS = 2
WIDE_SPLIT_FROM_SECONDS = 600.0
DRIFT_RETRY_REASONS = frozenset({"low_confidence", "halves_disagree"})
DRIFT_RETRY_MIN = 20.0  # ppm: below, a drift does not smear a stretch enough to matter
# Stretch-and-retry rounds: two noisy halves can misjudge the drift by 15 ppm (-46 for -60 on
# a real voice), which still smears the outer thirds of a 30 s stretch past MIN_CORRELATION;
# the retry's own halves then tell what is left (issue 19 QA).
DRIFT_RETRIES = 3
DRIFT_SEARCH_MARGIN_SECONDS = 0.050  # besides MAX_DRIFT_PPM over the distance from the end
# A half's drift reading is its peak within MAX_DRIFT_PPM over the stretch, and this, of the
# whole's lag (the whole's own lag sits within a sample or two of its middle's).
NEAR_MARGIN_SECONDS = 0.001

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
    "rival",
    "decode_failed",
)


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
    # The offsets searched for rivals (None: the accepted ones above); an estimate's best peak
    # in this wider range but outside [min_offset, max_offset] is "out_of_range".
    rival_min_offset: float | None = None
    rival_max_offset: float | None = None

    @property
    def rival_offsets(self) -> tuple[float, float]:
        """The offsets in which any peak is a rival (at least the accepted ones)."""
        low = self.min_offset if self.rival_min_offset is None else self.rival_min_offset
        high = self.max_offset if self.rival_max_offset is None else self.rival_max_offset
        return min(low, self.min_offset), max(high, self.max_offset)


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
    # The whole's peak over the rival offsets (None: none searched), and each half's side-peak
    # ratio over them (its own lag kept): a half with no rival there is evidence of its own.
    rival: Peak | None = None
    half_rival_ratios: tuple[float, float] = (0.0, 0.0)
    # Each half's peak within a plausible drift of the whole's lag (None: not searched): what
    # the drift inside the stretch is read from. A half's own best peak can lie elsewhere (a
    # phrase that recurs, its part smeared past recognition), and its lag then says nothing
    # of the drift (issue 19: a 60-minute call at 100 ppm read 135,000 ppm).
    near_halves: tuple[Peak, Peak] | None = None
