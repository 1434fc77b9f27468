"""The drift run (issue 19): a confident placement measured again near the start (and the
middle) of the overlap, under the full rules, and the line through them fitted
(:mod:`worker.media.drift`)."""

from __future__ import annotations

from dataclasses import replace

import anyio
import structlog

from worker.media import drift
from worker.media.sync_decide import synchronise
from worker.media.sync_decode import decode_windows
from worker.media.sync_model import (
    DECODE_MARGIN_SECONDS,
    DRIFT_RETRY_MIN,
    DRIFT_SEARCH_MARGIN_SECONDS,
    STRETCH_SECONDS,
    Signal,
    SyncInputs,
    SyncResult,
    SyncWindow,
)
from worker.media.sync_plan import plan_stretch
from worker.observability import SYNC_DRIFT_OUTCOMES

log = structlog.get_logger(__name__)

# Every outcome exists from the first scrape (at 0), so rates and ratios work at once.
for _outcome in drift.FIT_OUTCOMES:
    SYNC_DRIFT_OUTCOMES.labels(outcome=_outcome)


async def measure_drift(
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
    its middle's. The call end's own measurement is the anchor. When none of them is
    confident, more stretches spread over the call are (:func:`worker.media.drift.later_times`).
    """
    placement = inputs.call_end + found.offset_seconds - inputs.connect_duration
    connect_from = max(0.0, -placement) + DECODE_MARGIN_SECONDS
    connect_to = min(inputs.connect_duration, inputs.recording_duration - placement)
    starts = drift.measurement_times(connect_from, connect_to, STRETCH_SECONDS)
    if not starts:
        SYNC_DRIFT_OUTCOMES.labels(outcome="short").inc()
        return replace(found, drift_ppm=0.0)  # one stretch's own drift is too rough to apply
    # The call end's stretch: its offset is where its middle lies (found's is its end's).
    anchor = drift.Point(
        inputs.connect_duration - end_length / 2,
        placement - found.drift_ppm * 1e-6 * end_length / 2,
    )
    points = [anchor, *await _points(inputs, starts, anchor, placement, timeout=timeout)]
    if len(points) == 1:
        # None was confident (the agent silent while the customer explains, a beep): the
        # drift is unknown, and END alignment without it misplaces the start by drift times
        # the call (issue 19 QA: 54 ms on a 9-minute call at 100 ppm). Stretches further on.
        later = drift.later_times(connect_from, connect_to, STRETCH_SECONDS)
        points += await _points(inputs, later, anchor, placement, timeout=timeout)
    fitted = drift.fit(points, anchor)
    SYNC_DRIFT_OUTCOMES.labels(outcome=fitted.reason).inc()
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


async def _points(
    inputs: SyncInputs,
    starts: list[float],
    anchor: drift.Point,
    placement: float,
    *,
    timeout: float,  # noqa: ASYNC109
) -> list[drift.Point]:
    """The confident placements of the stretches starting at Connect times ``starts``."""
    # Every point's two stretches in one decode (one process start), then the points'
    # estimates side by side (numpy's FFTs release the GIL: off the event loop).
    windows = {start: _point_window(inputs, start, placement) for start in starts}
    planned = [(start, window) for start, window in windows.items() if window is not None]
    decoded = (
        await decode_windows(inputs, [window for _, window in planned], timeout=timeout)
        if planned
        else []
    )
    measured: dict[float, drift.Point | None] = {}

    async def measure(start: float, window: SyncWindow, pair: tuple[Signal, Signal]) -> None:
        result = await anyio.to_thread.run_sync(
            drift_point, *pair, window, anchor, placement, start
        )
        measured[start] = _point(start, placement, *result)

    async with anyio.create_task_group() as group:
        for (start, window), pair in zip(planned, decoded, strict=True):
            if not isinstance(pair, SyncResult):
                group.start_soon(measure, start, window, pair)
    return [p for p in (measured.get(s) for s in starts) if p is not None]


def _point_window(inputs: SyncInputs, start: float, placement: float) -> SyncWindow | None:
    """The window of the stretch starting at Connect time ``start``, searched as far as the
    largest plausible drift can move it from the call end (pure); None when it does not lie
    inside the recording."""
    distance = inputs.connect_duration - start
    return plan_stretch(
        connect_start=start,
        length=STRETCH_SECONDS,
        placement=placement,
        search=drift.MAX_DRIFT_PPM * 1e-6 * distance + DRIFT_SEARCH_MARGIN_SECONDS,
        recording_duration=inputs.recording_duration,
    )


def _point(
    start: float, placement: float, measured: SyncResult, shift: float
) -> drift.Point | None:
    """The placement the stretch starting at Connect time ``start`` measured (its middle's),
    None when it is not confident."""
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
    if not measured.measured:
        return None
    return drift.Point(start + STRETCH_SECONDS / 2, placement + centre)


def drift_point(
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
