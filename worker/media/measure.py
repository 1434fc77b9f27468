"""What the merge measures in the audio before it runs: the call end (sync) and loudness.

The loudness measurement's rules are :mod:`worker.media.loudness` (pure); the runs are here.

Both read short stretches next to the timestamp's call end (fast seeks), so their cost does
not grow with the recording's length; they run side by side.
"""

from __future__ import annotations

import anyio
import structlog

from worker import ffmpeg
from worker.media import loudness, sync
from worker.media.graph import connect_mix, mic_mix
from worker.media.model import ConnectAudio, Recording
from worker.media.plan import MergeOptions, MergePlan

log = structlog.get_logger("worker.media.loudness")


def sync_inputs(recording: Recording, connect: ConnectAudio, plan: MergePlan) -> sync.SyncInputs:
    """What :func:`worker.media.sync.measure` needs, from the inputs and the timestamp's plan."""
    audio = recording.audio
    return sync.SyncInputs(
        recording=recording.path,
        recording_audio_index=audio.index if audio else None,
        recording_audio_channels=audio.channels if audio else None,
        recording_duration=plan.duration,
        connect=connect.path,
        connect_audio_index=connect.audio.index,
        connect_audio_channels=connect.audio.channels,
        connect_duration=plan.connect_duration,
        call_end=plan.call_end,
    )


def loudness_stretches(
    recording: Recording, connect: ConnectAudio, plan: MergePlan
) -> tuple[loudness.Stretch, loudness.Stretch | None]:
    """The Connect and microphone stretches whose loudness is measured, mixed as in the
    output (pure); no microphone stretch when the recording has no audio."""
    near = loudness.stretches_near(plan.call_end, plan.duration, plan.connect_duration)
    rate = [f"aresample={plan.sample_rate}"]  # measured in the output's band
    connect_stretch = loudness.Stretch(
        connect.path,
        connect.audio.index,
        *near[0],
        mix=[*connect_mix(connect.audio.channels, plan.channels), *rate],
    )
    audio = recording.audio
    if audio is None:
        return connect_stretch, None
    recording_stretch = loudness.Stretch(
        recording.path,
        audio.index,
        *near[1],
        mix=[*mic_mix(audio.channels, plan.channels), *rate],
    )
    return connect_stretch, recording_stretch


async def measure_audio(
    recording: Recording, connect: ConnectAudio, plan: MergePlan, options: MergeOptions
) -> tuple[sync.SyncResult, loudness.LoudnessGains | None]:
    """The call-end sync (``align`` auto) and the loudness measurement, side by side."""
    synced = sync.TIMESTAMP_ONLY
    gains: loudness.LoudnessGains | None = None
    timeout = options.timeout_base_seconds

    async def measure_sync() -> None:
        nonlocal synced
        synced = await sync.measure(sync_inputs(recording, connect, plan), timeout=timeout)

    async def measure_loudness(target: float) -> None:
        nonlocal gains
        stretches = loudness_stretches(recording, connect, plan)
        gains = await measure_gains(*stretches, target, timeout=timeout)

    async with anyio.create_task_group() as group:
        if options.align == "auto":
            group.start_soon(measure_sync)
        if options.loudness_target is not None:
            group.start_soon(measure_loudness, options.loudness_target)
    return synced, gains


async def measure_gains(
    connect: loudness.Stretch,
    recording: loudness.Stretch | None,
    target: float,
    *,
    timeout: float,  # noqa: ASYNC109 - per ffmpeg run, enforced by worker.ffmpeg.run
) -> loudness.LoudnessGains:
    """Measure both stretches in one ffmpeg run (one process instead of two: each costs
    a job CPU to start, issue 18); the gains that bring each to ``target``.

    Both summaries (9 non-empty lines each) fit in the stderr tail the runner keeps
    (:data:`worker.ffmpeg.STDERR_TAIL_LINES`)."""
    stretches = {
        name: stretch
        for name, stretch in (("connect", connect), ("recording", recording))
        if stretch is not None and stretch.seconds > 0
    }
    measured: dict[str, float | None] = {"connect": None, "recording": None}
    if stretches:
        result = await ffmpeg.run(
            loudness.build_measure_all_args(stretches),
            timeout=timeout,
            what="loudness of " + " and ".join(s.path.name for s in stretches.values()),
        )
        measured |= loudness.parse_integrated_by_name(result.stderr_tail, list(stretches))
    gains = loudness.LoudnessGains(
        target_lufs=target,
        connect_db=loudness.gain_for(measured["connect"], target),
        recording_db=loudness.gain_for(measured["recording"], target),
        connect_lufs=measured["connect"],
        recording_lufs=measured["recording"],
    )
    log.info(
        "loudness_measured",
        target=target,
        connect_lufs=gains.connect_lufs,
        recording_lufs=gains.recording_lufs,
        connect_gain_db=round(gains.connect_db, 2),
        recording_gain_db=round(gains.recording_db, 2),
    )
    return gains
