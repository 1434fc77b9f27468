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
- Rivals: the microphone is decoded over +-:data:`RIVAL_SEARCH_SECONDS` (the timestamp's whole
  uncertainty), though only offsets within +-:data:`SEARCH_SECONDS` are accepted. A higher
  peak beyond them is ``out_of_range`` (the wide search's to place); a rival there by the
  side-peak rule is ``rival`` unless a half of the stretch has no rival there (then that half
  is evidence of its own), also the wide search's, which measures both places by every rule:
  the same words recurring, as a replayed prompt (issue 19 QA).

Timeline: as :mod:`worker.media`'s, the recording's shifted timeline, on which the call end is
measured. ``offset`` is *measured minus timestamp*: the measured call end is
``call_end + offset``.

The sync is split by concept (issue 18's size limits); this module runs it (:func:`measure`)
and re-exports the names its callers use (``sync.SyncResult``, ``sync.plan_window``...):

- :mod:`~worker.media.sync_model` (pure): the thresholds and the data classes;
- :mod:`~worker.media.sync_plan` (pure): the windows and the decodes' arguments;
- :mod:`~worker.media.sync_estimate` (pure): the estimator;
- :mod:`~worker.media.sync_decide` (pure): the never-wrong rules;
- :mod:`~worker.media.sync_decode`: the decodes (ffmpeg);
- :mod:`~worker.media.sync_wide`: the wide search's run (:mod:`~worker.media.sync_search`);
- :mod:`~worker.media.sync_drift`: the drift run (:mod:`~worker.media.drift`).
"""

from __future__ import annotations

import structlog

from worker.limits import FFMPEG_TIMEOUT_BASE_SECONDS
from worker.media import sync_drift, sync_wide
from worker.media.sync_decide import choose_wide as choose_wide
from worker.media.sync_decide import decide as decide
from worker.media.sync_decide import pause_fraction as pause_fraction
from worker.media.sync_decide import synchronise as synchronise
from worker.media.sync_decode import measure_keeping
from worker.media.sync_estimate import energy_midpoint as energy_midpoint
from worker.media.sync_estimate import estimate as estimate
from worker.media.sync_model import (
    DECODE_MARGIN_SECONDS as DECODE_MARGIN_SECONDS,
)
from worker.media.sync_model import FALLBACK_REASONS as FALLBACK_REASONS
from worker.media.sync_model import MIN_PAUSE_FRACTION as MIN_PAUSE_FRACTION
from worker.media.sync_model import MIN_Z as MIN_Z
from worker.media.sync_model import RIVAL_SEARCH_SECONDS as RIVAL_SEARCH_SECONDS
from worker.media.sync_model import SEARCH_SECONDS as SEARCH_SECONDS
from worker.media.sync_model import STRETCH_SECONDS as STRETCH_SECONDS
from worker.media.sync_model import SYNC_RATE as SYNC_RATE
from worker.media.sync_model import TIMESTAMP_ONLY as TIMESTAMP_ONLY
from worker.media.sync_model import WIDE_REASONS as WIDE_REASONS
from worker.media.sync_model import WIDE_RIVAL_SCORE as WIDE_RIVAL_SCORE
from worker.media.sync_model import Estimate as Estimate
from worker.media.sync_model import Peak as Peak
from worker.media.sync_model import SyncInputs as SyncInputs
from worker.media.sync_model import SyncMethod as SyncMethod
from worker.media.sync_model import SyncResult as SyncResult
from worker.media.sync_model import SyncWindow as SyncWindow
from worker.media.sync_plan import build_decode_args as build_decode_args
from worker.media.sync_plan import plan_stretch as plan_stretch
from worker.media.sync_plan import plan_window as plan_window
from worker.observability import CONNECT_SHORT, SYNC_DRIFT_PPM, SYNC_OUTCOMES

log = structlog.get_logger(__name__)

# Every outcome exists from the first scrape (at 0), so rates and ratios work at once.
SYNC_OUTCOMES.labels(method="waveform", reason="measured")
SYNC_OUTCOMES.labels(method="waveform_wide", reason="measured")
for _reason in ("ambiguous", *WIDE_REASONS):
    SYNC_OUTCOMES.labels(method="timestamp", reason=f"wide_{_reason}")
CONNECT_SHORT.labels(reason="early_stop")
for _reason in FALLBACK_REASONS:
    SYNC_OUTCOMES.labels(method="timestamp", reason=_reason)


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
    calls; when none of those is confident, at up to four more stretches spread over the
    call) for the drift (:mod:`worker.media.drift`).

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
        rival=RIVAL_SEARCH_SECONDS,
    )
    if isinstance(window, str):
        return SyncResult.timestamp(window)
    found, decoded = await measure_keeping(inputs, window, timeout=timeout)
    if found.method == "timestamp" and found.reason in WIDE_REASONS:
        found = await sync_wide.wide(inputs, window, found, timeout=timeout, decoded=decoded)
    if not found.measured:
        return found
    return await sync_drift.measure_drift(inputs, found, window.connect_seconds, timeout=timeout)
