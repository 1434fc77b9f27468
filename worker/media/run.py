"""The SPEC §5 merge of one request: validate, plan, measure, one ffmpeg run, check.

:func:`merge` probes the inputs it was not given, validates them into a
:class:`~worker.media.model.Recording` and a :class:`~worker.media.model.ConnectAudio`,
plans the merge, measures the call end and loudness (:mod:`worker.media.measure`), runs one
ffmpeg process for the merge (which also writes the thumbnail of a recording up to 20
minutes; a second short one when it did not), then probes the output (an MP4's from its
movie header in Python, :mod:`worker.media.mp4_tracks`; ffprobe otherwise) and rejects it
when its duration or streams are wrong. Every process is run by :mod:`worker.ffmpeg` (the only
module that spawns one).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import structlog

from worker import ffmpeg
from worker.errors import MediaError, OutputRejected
from worker.media import loudness, sync
from worker.media._parse import parse_float, parse_int
from worker.media.chapters import chapters_metadata
from worker.media.check import check_output
from worker.media.commands import build_merge_args, thumbnail_in_merge
from worker.media.containers import Container, check_output_path
from worker.media.measure import measure_audio
from worker.media.model import ConnectAudio, MediaInfo, Recording
from worker.media.plan import (
    MergeOptions,
    MergePlan,
    placed_plan,
    plan_merge,
    recording_seek_seconds,
)
from worker.media.probing import probe
from worker.media.thumbnail import finish_thumbnail
from worker.observability import CALL_END_CLAMPS, CONNECT_SHORT, FFMPEG_FAILURES

log = structlog.get_logger("worker.media")

ProgressCallback = Callable[[float], None]
A = TypeVar("A")
B = TypeVar("B")

PROGRESS_LOG_INTERVAL_SECONDS = 30.0


@dataclass(frozen=True)
class MergeRequest:
    """One merge: local input files, the call end, where to write the results.

    ``recording_info`` and ``connect_info``: the inputs' probes when the caller already has
    them (each is probed otherwise).
    """

    recording: Path
    connect_audio: Path
    call_end_seconds: float
    output: Path
    thumbnail: Path | None
    options: MergeOptions = field(default_factory=MergeOptions)
    recording_info: MediaInfo | None = None
    connect_info: MediaInfo | None = None


@dataclass(frozen=True)
class MergeResult:
    """What a merge produced and the numbers stored in the table (SPEC §4)."""

    output: Path
    thumbnail: Path | None
    container: Container
    media_duration_seconds: float
    call_end_seconds: float
    call_end_clamped: bool
    connect_duration_seconds: float
    connect_audio_offset_seconds: float
    sync: sync.SyncResult = sync.TIMESTAMP_ONLY
    loudness: loudness.LoudnessGains | None = None
    # Wall time of the ffmpeg merge pass alone (not the probes, sync, loudness, thumbnail or
    # output check around it): what komorebi_processing_speed_ratio divides by.
    merge_pass_seconds: float = 0.0


class Progress:
    """Parses ``-progress`` lines; reports output seconds; logs every 30 s of wall time."""

    def __init__(self, total: float, callback: ProgressCallback | None) -> None:
        self.total = total
        self.callback = callback
        self.last_log = time.monotonic()
        self.frames: int | None = None  # video packets written so far (ffmpeg's frame=)

    def feed(self, line: str) -> None:
        """Take one ``-progress`` line."""
        key, _, value = line.partition("=")
        if key == "frame":
            self.frames = parse_int(value)
            return
        if key not in ("out_time_us", "out_time_ms"):  # both are microseconds
            return
        micros = parse_float(value)
        if micros is None:
            return
        seconds = max(0.0, micros / 1e6)
        if self.callback is not None:
            self.callback(seconds)
        now = time.monotonic()
        if now - self.last_log >= PROGRESS_LOG_INTERVAL_SECONDS:
            self.last_log = now
            log.info(
                "merge_progress",
                seconds_written=round(seconds, 1),
                total_seconds=round(self.total, 1),
                percent=round(100 * seconds / self.total, 1) if self.total else None,
            )


def _remove(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


async def merge(
    request: MergeRequest, *, on_progress: ProgressCallback | None = None
) -> MergeResult:
    """The SPEC §5 merge of ``request``: one ffmpeg run, thumbnail, output check.

    Raises :class:`~worker.errors.NoVideoStream`, :class:`~worker.errors.NoAudioStream`,
    :class:`~worker.errors.UnsupportedMedia`, :class:`MediaError`, :class:`OutputRejected`,
    :class:`worker.errors.MediaTimeout`, :class:`worker.errors.ScratchFull`. A failed or
    rejected output is deleted.
    """
    recording, container, connect = await _inputs(request)
    plan, synced, gains = await _plan(request, recording, connect)
    log.info(
        "merge_plan",
        align=request.options.align,
        sync_method=synced.method,
        media_duration=round(plan.duration, 3),
        call_end=round(plan.call_end, 3),
        connect_end=round(plan.connect_end, 3),
        drift_ppm=round(synced.drift_ppm, 2),
        connect_duration=round(plan.connect_duration, 3),
        connect_audio_offset=round(plan.offset, 3),
        container=container.extension,
        recording_audio=recording.audio is not None,
        recording_audio_seek=recording_seek_seconds(plan) if recording.audio else 0,
    )
    started = time.monotonic()
    written, pass_seconds = await _write(
        request, recording, connect, plan, container, gains, on_progress
    )
    log.info(
        "merge_done",
        seconds=round(time.monotonic() - started, 3),
        merge_pass_seconds=round(pass_seconds, 3),
        output_duration=round(written.duration, 3),
        output_bytes=written.size_bytes,
    )
    if on_progress is not None:
        on_progress(plan.duration)
    return MergeResult(
        output=request.output,
        thumbnail=request.thumbnail,
        container=container,
        media_duration_seconds=plan.duration,
        call_end_seconds=plan.call_end,
        call_end_clamped=plan.call_end_clamped,
        connect_duration_seconds=plan.connect_duration,
        connect_audio_offset_seconds=plan.offset,
        sync=synced,
        loudness=gains,
        merge_pass_seconds=pass_seconds,
    )


async def _inputs(request: MergeRequest) -> tuple[Recording, Container, ConnectAudio]:
    """Both inputs probed (unless given) and validated, once; the output's container."""
    timeout = request.options.timeout_base_seconds
    given = (request.recording_info, request.connect_info)
    info, connect_info = (
        (given[0], given[1])
        if given[0] is not None and given[1] is not None
        else await probe_inputs(
            request.recording, request.connect_audio, timeout=timeout, given=given
        )
    )
    recording = Recording.of(info, name=request.recording.name)
    container = check_output_path(recording, request.output)
    if isinstance(connect_info, Exception):
        raise connect_info  # after the recording's own errors, as when probed in turn
    connect = ConnectAudio.of(connect_info, name=request.connect_audio.name)
    outputs = {request.output.absolute(), *(p.absolute() for p in [request.thumbnail] if p)}
    if outputs & {request.recording.absolute(), request.connect_audio.absolute()}:
        raise MediaError("an output path is also an input path")
    return recording, container, connect


async def side_by_side(
    first: Callable[[], Awaitable[A]], second: Callable[[], Awaitable[B]]
) -> tuple[A, B | Exception]:
    """Run ``first`` and ``second`` at once (each at most one process at a time, so a job never
    runs more than two). ``first``'s error is raised and ``second`` cancelled; ``second``'s is
    returned, for the caller to raise when its turn comes, so a job fails with the error it
    would have met running them in turn. Cancellation cancels both (and kills their
    processes, :mod:`worker.ffmpeg`)."""
    results: list[Any] = [None, None]

    async def run(slot: int, call: Callable[[], Awaitable[Any]], scope: anyio.CancelScope) -> None:
        try:
            results[slot] = await call()
        except Exception as error:  # noqa: BLE001 - handed back or raised below
            results[slot] = error
            if slot == 0:
                scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(run, 0, first, group.cancel_scope)
        group.start_soon(run, 1, second, group.cancel_scope)
    if isinstance(results[0], Exception):
        raise results[0]
    return results[0], results[1]


async def probe_inputs(
    recording: Path,
    connect_audio: Path,
    *,
    timeout: float,  # noqa: ASYNC109
    given: tuple[MediaInfo | None, MediaInfo | None] = (None, None),
) -> tuple[MediaInfo, MediaInfo | Exception]:
    """Both inputs probed side by side (:func:`side_by_side`; the Connect audio in one run, an
    MP4 recording too when its movie header declares its duration), those not ``given``. The
    recording's error is raised; the Connect audio's is returned, for the caller to raise
    after it has validated the recording."""

    async def one(slot: int, path: Path) -> MediaInfo:
        known = given[slot]
        if known is not None:
            return known
        return await probe(path, timeout=timeout, one_run=slot == 1, hint=slot == 0)

    return await side_by_side(partial(one, 0, recording), partial(one, 1, connect_audio))


def measured_plan(
    recording: Recording,
    connect: ConnectAudio,
    plan: MergePlan,
    synced: sync.SyncResult,
    options: MergeOptions,
) -> MergePlan:
    """The plan on a confident sync's placement (:func:`~worker.media.plan.placed_plan`)."""
    return placed_plan(
        recording,
        connect,
        plan,
        options,
        offset_seconds=synced.offset_seconds,
        measures_call_end=synced.method == "waveform",
        drift_ratio=synced.drift_ratio,
    )


async def _plan(
    request: MergeRequest, recording: Recording, connect: ConnectAudio
) -> tuple[MergePlan, sync.SyncResult, loudness.LoudnessGains | None]:
    """The timestamp's plan, then the one on the call end the sync measured (if it did).

    A measured Connect file that ends before the call end is counted and logged
    (``early_stop``). One that starts late is not: the call's start is in neither the media
    nor the message, so it cannot be told from a recording begun before the call; the
    microphone plays before the Connect audio either way (``plan.head_samples``,
    :func:`~worker.media.plan.placed_plan`).
    """
    options = request.options
    plan = plan_merge(recording, connect, request.call_end_seconds, options)
    if plan.call_end_clamped:
        CALL_END_CLAMPS.inc()
        log.warning(
            "call_end_clamped",
            call_end=request.call_end_seconds,
            media_duration=round(plan.duration, 3),
        )
    synced, gains = await measure_audio(recording, connect, plan, options)
    if synced.measured:
        # The measured placement drives END alignment (whole samples, as the timestamp did).
        plan = measured_plan(recording, connect, plan, synced, options)
        short = plan.call_end - plan.connect_end
        if short > 0:
            CONNECT_SHORT.labels(reason="early_stop").inc()
            log.warning(
                "connect_audio_short",
                reason="early_stop",
                call_end=round(plan.call_end, 3),
                connect_end=round(plan.connect_end, 3),
                missing_seconds=round(short, 3),
            )
    return plan, synced, gains


async def _write(
    request: MergeRequest,
    recording: Recording,
    connect: ConnectAudio,
    plan: MergePlan,
    container: Container,
    gains: loudness.LoudnessGains | None,
    on_progress: ProgressCallback | None,
) -> tuple[MediaInfo, float]:
    """Run the merge, probe and check the output, write the thumbnail; the output's probe
    and the wall time of the ffmpeg merge pass.

    Never leaves a partial or rejected file where a caller might upload it.
    """
    options = request.options
    chapters = request.output.with_name(f".{request.output.name}.chapters")
    args = build_merge_args(
        recording=recording,
        connect=connect,
        plan=plan,
        output=request.output,
        options=options,
        chapters=chapters,
        gains=gains,
        thumbnail=request.thumbnail if thumbnail_in_merge(plan.duration) else None,
    )
    progress = Progress(plan.duration, on_progress)
    try:
        _remove(request.thumbnail)  # an old file must not pass for the one this run writes
        chapters.write_text(chapters_metadata(plan))
        started = time.monotonic()
        await ffmpeg.run(
            args,
            timeout=options.media_timeout(plan.duration),
            what="merge",
            on_stdout_line=progress.feed,
        )
        pass_seconds = time.monotonic() - started
        written = await probe(
            request.output, timeout=options.timeout_base_seconds, expected_duration=plan.duration
        )
        try:
            check_output(written, recording, plan, container, progress.frames)
        except OutputRejected:
            FFMPEG_FAILURES.labels(reason="output_rejected").inc()
            raise
        # Written by the merge's run (one process fewer, issue 18) up to 20 minutes; on its
        # own when that run's window had no frame or the recording is longer (memory:
        # commands.THUMBNAIL_IN_MERGE_MAX_SECONDS). (A thumbnail process beside the merge's
        # or the output's probe added 40-50 MB to the job's peak memory.)
        await _thumbnail(recording, request.thumbnail, options.timeout_base_seconds)
    except BaseException:
        # (Synchronous, so a cancellation cannot interrupt it.)
        _remove(request.output)
        _remove(request.thumbnail)
        raise
    finally:
        _remove(chapters)
    return written, pass_seconds


async def _thumbnail(recording: Recording, thumbnail: Path | None, timeout: float) -> None:  # noqa: ASYNC109
    if thumbnail is not None:
        await finish_thumbnail(recording, thumbnail, timeout=timeout)
