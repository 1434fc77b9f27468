"""The sync's decodes (ffmpeg, I/O): one window's two stretches in one run
(:func:`decode_window`, :func:`measure_window`), a bounded decode to memory (:func:`decode`),
and a streamed one for the wide search (:func:`stream`). Every run is :mod:`worker.ffmpeg`'s
allow-listed, time-limited runner, killed on cancellation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anyio
import numpy as np
import structlog

from worker import ffmpeg
from worker.errors import MediaError, MediaProcessKilled, MediaTimeout
from worker.media.sync_decide import synchronise
from worker.media.sync_model import (
    MAX_DECODE_BYTES,
    MIN_STRETCH_SECONDS,
    SYNC_RATE,
    Signal,
    SyncInputs,
    SyncResult,
    SyncWindow,
)
from worker.media.sync_plan import (
    COLUMNS_PER_STRETCH,
    SampleFormat,
    StretchSource,
    build_decode_args,
    build_stretches_decode_args,
)

log = structlog.get_logger(__name__)

SAMPLE_BYTES: dict[SampleFormat, int] = {"f32": 4, "s16": 2}
STREAM_BLOCK_BYTES = 1 << 20  # a hand-off of the streamed decode: 65 s of s16 at 8 kHz


async def _bounded_stdout(args: list[str], *, timeout: float, what: str) -> bytes:  # noqa: ASYNC109
    """A decode's stdout, at most :data:`MAX_DECODE_BYTES` of it (a bound on what a hostile
    or mis-probed file can make the job hold)."""
    chunks: list[bytes] = []
    size = 0

    def keep(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size <= MAX_DECODE_BYTES:
            chunks.append(chunk)

    await ffmpeg.run(args, timeout=timeout, what=what, on_stdout_bytes=keep)
    return b"".join(chunks)


async def decode(args: list[str], *, timeout: float, what: str) -> Signal:  # noqa: ASYNC109
    """A one-stretch decode (float32 on stdout), whole samples only."""
    raw = await _bounded_stdout(args, timeout=timeout, what=what)
    return samples(raw[: len(raw) - len(raw) % 4], "f32")


@dataclass(frozen=True)
class Decoded:
    """A window's two decoded stretches, kept for a later window that lies inside them (the
    wide search's fine pass around a place the call end's own window already holds)."""

    window: SyncWindow
    reference: Signal
    signal: Signal

    def cut(self, window: SyncWindow) -> tuple[Signal, Signal] | None:
        """``window``'s two stretches cut from these, as its own decode would give them
        (pure); None when it needs another Connect stretch or recording beyond this decode's.

        Both decodes start at whole seconds (``recording_seek``) with the seek point as
        sample 0, so the recording's second ``s`` is sample ``s * SYNC_RATE`` of both."""
        mine = self.window
        if (window.connect_start, window.connect_seconds) != (
            mine.connect_start,
            mine.connect_seconds,
        ):
            return None
        first = (window.recording_seek - mine.recording_seek) * SYNC_RATE
        count = round(window.recording_seconds * SYNC_RATE)
        if first < 0 or first + count > round(mine.recording_seconds * SYNC_RATE):
            return None
        return self.reference, self.signal[first : first + count]


async def measure_window(
    inputs: SyncInputs,
    window: SyncWindow,
    *,
    timeout: float,  # noqa: ASYNC109
) -> SyncResult:
    """Decode one window's two stretches (one run) and decide on them."""
    result, _decoded = await measure_keeping(inputs, window, timeout=timeout)
    return result


async def measure_keeping(
    inputs: SyncInputs,
    window: SyncWindow,
    *,
    timeout: float,  # noqa: ASYNC109
) -> tuple[SyncResult, Decoded | None]:
    """:func:`measure_window`, and the stretches it decoded (None: none) for later windows."""
    decoded = await decode_window(inputs, window, timeout=timeout)
    if isinstance(decoded, SyncResult):
        return decoded, None
    return await measure_decoded(*decoded, window), Decoded(window, *decoded)


async def measure_decoded(reference: Signal, signal: Signal, window: SyncWindow) -> SyncResult:
    """The decision on a window's decoded stretches."""
    # Off the event loop (a second of numpy on a long stretch): other jobs' I/O goes on.
    return await anyio.to_thread.run_sync(synchronise, reference, signal, window)


async def decode_window(
    inputs: SyncInputs,
    window: SyncWindow,
    *,
    timeout: float,  # noqa: ASYNC109
) -> tuple[Signal, Signal] | SyncResult:
    """The window's Connect and microphone stretches (one ffmpeg run for both), or the
    fallback when they cannot be had."""
    (found,) = await decode_windows(inputs, [window], timeout=timeout)
    return found


async def decode_windows(
    inputs: SyncInputs,
    windows: list[SyncWindow],
    *,
    timeout: float,  # noqa: ASYNC109
) -> list[tuple[Signal, Signal] | SyncResult]:
    """Each window's Connect and microphone stretches, all in one ffmpeg run (one process
    start for them all), or its fallback when they cannot be had."""
    sources = [source for window in windows for source in window_sources(inputs, window)]
    failure: str | None = None
    try:
        args = build_stretches_decode_args(sources)
        stretches = await decode_stretches(args, len(sources), timeout=timeout)
    except (MediaError, MediaTimeout, MediaProcessKilled) as error:
        failure = str(error)
    if failure is not None:
        log.warning("call_end_sync_decode_failed", error=failure)
        return [SyncResult.timestamp("decode_failed") for _ in windows]
    found: list[tuple[Signal, Signal] | SyncResult] = []
    for reference, signal in zip(stretches[::2], stretches[1::2], strict=True):
        too_short = reference.size < MIN_STRETCH_SECONDS * SYNC_RATE
        found.append(SyncResult.timestamp("too_short") if too_short else (reference, signal))
    return found


async def decode_stretches(
    args: list[str],
    count: int,
    *,
    timeout: float,  # noqa: ASYNC109
) -> list[Signal]:
    """Run a :func:`~worker.media.sync_plan.build_stretches_decode_args` decode of ``count``
    stretches (bounded by :data:`MAX_DECODE_BYTES`) and split it into them, each its real
    length."""
    raw = await _bounded_stdout(args, timeout=timeout, what="sync decode of a window")
    frame = 4 * COLUMNS_PER_STRETCH * count
    return split_stretches(samples(raw[: len(raw) - len(raw) % frame], "f32"), count)


def split_stretches(interleaved: Signal, count: int) -> list[Signal]:
    """A decode of ``count`` stretches as the stretches (pure): each column up to its presence
    column's first 0 (where the padding began, or the whole column when it was the longest)."""
    columns = interleaved.reshape(-1, COLUMNS_PER_STRETCH * count)

    def stretch(values: int, presence: int) -> Signal:
        padded = np.flatnonzero(columns[:, presence] == 0.0)
        end = int(padded[0]) if padded.size else len(columns)
        return np.ascontiguousarray(columns[:end, values])

    return [stretch(2 * n, 2 * n + 1) for n in range(count)]


def window_sources(inputs: SyncInputs, window: SyncWindow) -> tuple[StretchSource, StretchSource]:
    """The window's Connect stretch (the agent channel) and the microphone's (pure)."""
    assert inputs.recording_audio_index is not None
    connect = StretchSource(
        inputs.connect,
        inputs.connect_audio_index,
        channels=inputs.connect_audio_channels,
        agent=True,
        seek=window.connect_start,
        seconds=window.connect_seconds,
    )
    recording = StretchSource(
        inputs.recording,
        inputs.recording_audio_index,
        channels=inputs.recording_audio_channels,
        agent=False,
        seek=window.recording_seek,
        seconds=window.recording_seconds,
    )
    return connect, recording


def connect_decode_args(inputs: SyncInputs, window: SyncWindow, *, band: bool) -> list[str]:
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


def recording_decode_args(
    inputs: SyncInputs,
    *,
    seek: float,
    seconds: float | None,
    band: bool,
    sample_format: SampleFormat = "f32",
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
        sample_format=sample_format,
    )


async def stream(
    args: list[str],
    sink: Callable[[Signal], None],
    *,
    timeout: float,  # noqa: ASYNC109
    what: str,
    sample_format: SampleFormat,
) -> None:
    """Run a decode writing ``sample_format`` on stdout, handing ``sink`` whole samples (as
    float32 in [-1, 1]) in blocks of about :data:`STREAM_BLOCK_BYTES`: bounded memory whatever
    the length, and few numpy calls (the pipe delivers 64 KiB at a time)."""
    width = SAMPLE_BYTES[sample_format]
    pending: list[bytes] = []
    size = 0

    def flush() -> None:
        nonlocal size
        raw = b"".join(pending)
        usable = len(raw) - len(raw) % width
        pending[:] = [raw[usable:]]
        size = len(raw) - usable
        if usable:
            sink(samples(raw[:usable], sample_format))

    def chunk(data: bytes) -> None:
        nonlocal size
        pending.append(data)
        size += len(data)
        if size >= STREAM_BLOCK_BYTES:
            flush()

    await ffmpeg.run(args, timeout=timeout, what=what, on_stdout_bytes=chunk)
    flush()


def samples(raw: bytes, sample_format: SampleFormat) -> Signal:
    """Little-endian PCM bytes (a whole number of samples) as float32 in [-1, 1] (pure)."""
    if sample_format == "s16":
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
