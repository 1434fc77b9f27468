"""The wide search's run (issue 19): a coarse pass over the whole recording, then the fine pass
(:mod:`worker.media.sync`'s rules) around each candidate it found.

The coarse pass first tries the recording's Opus packet sizes (:mod:`worker.media.sync_packets`:
a demux, no decode); when they carry no envelope (AAC, CBR) or the fine pass confirms none of
their candidates, the whole recording's band-limited decode is streamed into
:mod:`worker.media.sync_search`'s envelope search, as before. Only the fine pass decides."""

from __future__ import annotations

from dataclasses import replace

import anyio
import structlog

from worker import ffmpeg
from worker.errors import MediaError, MediaProcessKilled, MediaTimeout
from worker.media import sync_packets, sync_search
from worker.media.sync_decide import choose_wide
from worker.media.sync_decode import (
    Decoded,
    connect_decode_args,
    decode,
    measure_decoded,
    measure_window,
    recording_decode_args,
    stream,
)
from worker.media.sync_model import (
    SYNC_RATE,
    WIDE_FINE_SECONDS,
    WIDE_RIVAL_SCORE,
    WIDE_TIMEOUT_PER_MEDIA_SECOND,
    Signal,
    SyncInputs,
    SyncResult,
    SyncWindow,
)
from worker.media.sync_plan import SampleFormat, WidePart, plan_wide, plan_window

log = structlog.get_logger(__name__)

WIDE_SAMPLE_FORMAT: SampleFormat = "s16"  # the envelope needs no more (half the pipe's bytes)


async def wide(
    inputs: SyncInputs,
    window: SyncWindow,
    narrow: SyncResult,
    *,
    timeout: float,  # noqa: ASYNC109
    decoded: Decoded | None = None,
) -> SyncResult:
    """Coarse envelope search over the whole recording, then the fine pass around each
    candidate (see :mod:`worker.media.sync_search`); a candidate inside ``decoded`` (the
    call end's window, as decoded) is measured on it rather than decoded again."""
    length = window.connect_seconds
    reference_args = connect_decode_args(inputs, window, band=True)
    failure: str | None = None
    reference: Signal | None = None
    packets: list[sync_packets.Envelope | None] = [None]

    async def scan() -> None:
        packets[0] = await _packet_envelope(inputs, timeout)

    try:
        # The packet scan (a demux) beside the reference's decode: two processes at a time.
        async with anyio.create_task_group() as group:
            group.start_soon(scan)
            reference = await decode(reference_args, timeout=timeout, what="wide sync reference")
    except* (MediaError, MediaTimeout, MediaProcessKilled) as errors:
        failure = str(errors.exceptions[0])
    if failure is not None or reference is None:
        log.warning("call_end_sync_wide_decode_failed", error=failure)
        return SyncResult.timestamp("decode_failed")
    packet_candidates = _packet_search(inputs, packets[0], reference, length)
    if packet_candidates:
        confident = await _fine(
            inputs, packet_candidates, length, timeout, coarse="packets", decoded=decoded
        )
        if confident:
            return choose_wide(narrow, confident)
    candidates: list[sync_search.Candidate] = []
    try:
        candidates = await _search(inputs, sync_search.envelope(reference), length, timeout)
    except* (MediaError, MediaTimeout, MediaProcessKilled) as errors:
        failure = str(errors.exceptions[0])
    if failure is not None:
        log.warning("call_end_sync_wide_decode_failed", error=failure)
        return SyncResult.timestamp("decode_failed")
    confident = await _fine(inputs, candidates, length, timeout, coarse="decode", decoded=decoded)
    return choose_wide(narrow, confident)


async def _fine(
    inputs: SyncInputs,
    candidates: list[sync_search.Candidate],
    length: float,
    timeout: float,  # noqa: ASYNC109
    *,
    coarse: str,
    decoded: Decoded | None,
) -> list[SyncResult]:
    """The fine pass around each candidate worth measuring: its confident results, as offsets
    from the timestamp's call end."""
    confident: list[SyncResult] = []
    for candidate in sync_search.worth_measuring(candidates, WIDE_RIVAL_SCORE):
        connect_end = candidate.seconds + length  # where the Connect file ends, by this one
        fine = plan_window(
            call_end=connect_end,
            recording_duration=inputs.recording_duration,
            connect_duration=inputs.connect_duration,
            search=WIDE_FINE_SECONDS,
        )
        if isinstance(fine, str):
            continue
        cut = None if decoded is None else decoded.cut(fine)
        if cut is None:
            found = await measure_window(inputs, fine, timeout=timeout)
        else:
            found = await measure_decoded(*cut, fine)
        log.info(
            "call_end_sync_wide_candidate",
            coarse=coarse,
            decoded="kept" if cut is not None else "own",
            at=round(connect_end, 3),
            score=round(candidate.score, 3),
            method=found.method,
            reason=found.reason,
            confidence=found.confidence,
        )
        if found.measured:
            offset = connect_end + found.offset_seconds - inputs.call_end
            confident.append(replace(found, offset_seconds=offset))
    return confident


def packet_scan_args(inputs: SyncInputs) -> list[str]:
    """ffprobe printing the microphone stream's packet times, durations and sizes (pure)."""
    assert inputs.recording_audio_index is not None
    return [
        ffmpeg.FFPROBE,
        "-hide_banner",
        "-v",
        "error",
        "-select_streams",
        str(inputs.recording_audio_index),
        "-show_entries",
        sync_packets.FIELDS,
        "-of",
        "csv=p=0",
        # Through ffprobe's buffered output: on stdout it writes (and the pipe delivers) each
        # packet's line on its own, 181,000 writes for an hour of 20 ms packets.
        "-o",
        "pipe:1",
        *ffmpeg.input_args(inputs.recording),
    ]


async def _packet_envelope(
    inputs: SyncInputs,
    timeout: float,  # noqa: ASYNC109
) -> sync_packets.Envelope | None:
    """The microphone's packet-size envelope; None when its packets carry no envelope or
    cannot be read (the decode-based search then runs)."""
    reader = sync_packets.PacketReader()
    wide_timeout = timeout + WIDE_TIMEOUT_PER_MEDIA_SECOND * inputs.recording_duration
    try:
        await ffmpeg.run(
            packet_scan_args(inputs),
            timeout=wide_timeout,
            what="wide sync packet scan",
            on_stdout_bytes=reader.feed,
        )
    except (MediaError, MediaTimeout, MediaProcessKilled) as error:
        log.info("call_end_sync_wide_packets_unreadable", error=str(error))
        return None
    signal = sync_packets.packet_envelope(*reader.finish())
    if signal is None:
        log.info("call_end_sync_wide_packets_no_envelope")
    return signal


def _packet_search(
    inputs: SyncInputs,
    signal: sync_packets.Envelope | None,
    reference: Signal,
    length: float,
) -> list[sync_search.Candidate]:
    """The packet-size search's candidates (none without a packet envelope)."""
    if signal is None:
        return []
    parts = plan_wide(recording_duration=inputs.recording_duration, length=length)
    found = sync_packets.search(
        signal,
        sync_packets.energy_envelope(reference, SYNC_RATE),
        min_lag_seconds=min(part.seek + part.min_lag for part in parts),
        max_lag_seconds=max(part.seek + part.max_lag for part in parts),
    )
    return sync_packets.usable(found)


async def _search(
    inputs: SyncInputs,
    reference: sync_search.Envelope,
    length: float,
    timeout: float,  # noqa: ASYNC109
) -> list[sync_search.Candidate]:
    """The envelope search over the whole recording (:func:`plan_wide`'s parts decoded side by
    side, each streamed into its own search: memory stays one block per part), its parts'
    candidates merged."""
    parts = plan_wide(recording_duration=inputs.recording_duration, length=length)
    wide_timeout = timeout + WIDE_TIMEOUT_PER_MEDIA_SECOND * inputs.recording_duration
    found: list[tuple[float, list[sync_search.Candidate]]] = [(0.0, []) for _ in parts]

    async def run(index: int, part: WidePart) -> None:
        search = sync_search.EnvelopeSearch(
            reference, min_lag_seconds=part.min_lag, max_lag_seconds=part.max_lag
        )
        args = recording_decode_args(
            inputs,
            seek=part.seek,
            seconds=part.seconds,
            band=True,
            sample_format=WIDE_SAMPLE_FORMAT,
        )
        what = f"wide sync decode {index + 1}/{len(parts)}"
        await stream(
            args, search.feed, timeout=wide_timeout, what=what, sample_format=WIDE_SAMPLE_FORMAT
        )
        found[index] = (float(part.seek), search.finish())

    async with anyio.create_task_group() as group:
        for index, part in enumerate(parts):
            group.start_soon(run, index, part)
    return sync_search.merge_parts(found)
