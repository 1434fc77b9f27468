"""The sync's decodes (ffmpeg, I/O): one window's two stretches side by side
(:func:`decode_window`, :func:`measure_window`), a bounded decode to memory (:func:`decode`),
and a streamed one for the wide search (:func:`stream`). Every run is :mod:`worker.ffmpeg`'s
allow-listed, time-limited runner, killed on cancellation."""

from __future__ import annotations

from collections.abc import Callable

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
from worker.media.sync_plan import build_decode_args

log = structlog.get_logger(__name__)


async def decode(args: list[str], *, timeout: float, what: str) -> Signal:  # noqa: ASYNC109
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


async def measure_window(
    inputs: SyncInputs,
    window: SyncWindow,
    *,
    timeout: float,  # noqa: ASYNC109
) -> SyncResult:
    """Decode one window's two stretches side by side and decide on them."""
    decoded = await decode_window(inputs, window, timeout=timeout)
    if isinstance(decoded, SyncResult):
        return decoded
    return synchronise(*decoded, window)


async def decode_window(
    inputs: SyncInputs,
    window: SyncWindow,
    *,
    timeout: float,  # noqa: ASYNC109
) -> tuple[Signal, Signal] | SyncResult:
    """The window's Connect and microphone stretches, or the fallback when they cannot be had."""
    connect_args = connect_decode_args(inputs, window, band=False)
    recording_args = recording_decode_args(
        inputs, seek=window.recording_seek, seconds=window.recording_seconds, band=False
    )
    decoded: dict[str, Signal] = {}

    async def decode_one(name: str, args: list[str]) -> None:
        decoded[name] = await decode(args, timeout=timeout, what=f"sync decode of the {name}")

    failure: str | None = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(decode_one, "Connect audio", connect_args)
            group.start_soon(decode_one, "recording audio", recording_args)
    except* (MediaError, MediaTimeout, MediaProcessKilled) as errors:
        failure = str(errors.exceptions[0])
    if failure is not None:
        log.warning("call_end_sync_decode_failed", error=failure)
        return SyncResult.timestamp("decode_failed")
    reference, signal = decoded["Connect audio"], decoded["recording audio"]
    if reference.size < MIN_STRETCH_SECONDS * SYNC_RATE:
        return SyncResult.timestamp("too_short")
    return reference, signal


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


async def stream(
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
