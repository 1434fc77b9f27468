"""The wide search's run (issue 19): the whole recording's band-limited decode streamed into
:mod:`worker.media.sync_search`'s envelope search, then the fine pass (:mod:`worker.media.sync`'s
rules) around each candidate it found."""

from __future__ import annotations

from dataclasses import replace

import structlog

from worker.errors import MediaError, MediaProcessKilled, MediaTimeout
from worker.media import sync_search
from worker.media.sync_decide import choose_wide
from worker.media.sync_decode import (
    connect_decode_args,
    decode,
    measure_window,
    recording_decode_args,
    stream,
)
from worker.media.sync_model import (
    MIN_STRETCH_SECONDS,
    WIDE_FINE_SECONDS,
    WIDE_RIVAL_SCORE,
    WIDE_TIMEOUT_PER_MEDIA_SECOND,
    SyncInputs,
    SyncResult,
    SyncWindow,
)
from worker.media.sync_plan import plan_window

log = structlog.get_logger(__name__)


async def wide(
    inputs: SyncInputs,
    window: SyncWindow,
    narrow: SyncResult,
    *,
    timeout: float,  # noqa: ASYNC109
) -> SyncResult:
    """Coarse envelope search over the whole recording, then the fine pass around each
    candidate (see :mod:`worker.media.sync_search`)."""
    length = window.connect_seconds
    reference_args = connect_decode_args(inputs, window, band=True)
    recording_args = recording_decode_args(inputs, seek=0, seconds=None, band=True)
    wide_timeout = timeout + WIDE_TIMEOUT_PER_MEDIA_SECOND * inputs.recording_duration
    try:
        reference = await decode(reference_args, timeout=timeout, what="wide sync reference")
        search = sync_search.EnvelopeSearch(
            sync_search.envelope(reference),
            # The reference (the Connect file's end) must end inside the recording, and
            # overlap it by a usable stretch when it starts before it.
            min_lag_seconds=min(0.0, MIN_STRETCH_SECONDS - length),
            max_lag_seconds=inputs.recording_duration - length,
        )
        await stream(recording_args, search.feed, timeout=wide_timeout, what="wide sync decode")
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
        found = await measure_window(inputs, fine, timeout=timeout)
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
