"""The merge's ffmpeg command line (pure): inputs, the audio graph, the video copy, the muxer."""

from __future__ import annotations

from pathlib import Path

from worker import ffmpeg_inputs as ffmpeg
from worker.media import loudness
from worker.media.chapters import chapters_input_args
from worker.media.containers import MP4, container_for
from worker.media.graph import build_audio_graph
from worker.media.model import ConnectAudio, Recording
from worker.media.plan import MergeOptions, MergePlan, recording_seek_seconds
from worker.media.video import hold_last_frame_args, timeline_offset_args


def base_args() -> list[str]:
    """How every ffmpeg run of ours starts: no stdin, no banner, errors only."""
    return [ffmpeg.FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"]


def build_merge_args(
    *,
    recording: Recording,
    connect: ConnectAudio,
    plan: MergePlan,
    output: Path,
    options: MergeOptions,
    progress: bool = True,
    chapters: Path | None = None,
    gains: loudness.LoudnessGains | None = None,
) -> list[str]:
    """The complete ffmpeg command line of the one-pass merge (pure).

    ``chapters``: an FFMETADATA file (:func:`~worker.media.chapters.chapters_metadata`) whose
    chapters the output gets; without it the output has none (the recording's own are never
    copied). ``gains``: the loudness stage (:func:`~worker.media.graph.loudness_steps`).
    """
    container = container_for(recording.video.codec_name)
    # Input 0: the recording (video, stream-copied; its audio when not seeked). Input 1: the
    # Connect audio. Input 2, only when seeking: the recording again, fast-seeked (``-ss``
    # before ``-i``: a container seek, nothing decoded before it), feeding only ``[rec]``.
    seek = recording_seek_seconds(plan) if recording.audio is not None else 0
    graph = build_audio_graph(
        plan,
        align=options.align,
        recording_audio=recording.audio,
        connect_audio=connect.audio,
        recording_input=2 if seek else 0,
        connect_input=1,
        recording_seek=seek,
        gains=gains,
    )
    args = base_args()
    if progress:
        args += ["-nostats", "-progress", "pipe:1", "-stats_period", "1"]
    origin = timeline_offset_args(recording)
    args += [*origin, *ffmpeg.input_args(recording.path)]
    args += ffmpeg.input_args(connect.path)
    if seek:
        args += ["-ss", str(seek), *origin, *ffmpeg.input_args(recording.path)]
    if chapters is not None:
        args += chapters_input_args(chapters)
    args += ["-filter_complex", graph]
    args += ["-map", f"0:{recording.video.index}", "-map", "[aout]"]
    args += ["-c:v", "copy", *hold_last_frame_args(recording, plan, container)]
    args += ["-c:a", container.audio_codec, "-b:a", options.audio.bitrate]
    args += ["-ar", str(plan.sample_rate), "-ac", str(plan.channels)]
    args += ["-map_chapters", str(3 if seek else 2) if chapters is not None else "-1"]
    args += ["-dn", "-sn"]
    if container is MP4:
        args += ["-movflags", "+faststart"]
    else:
        args += ["-avoid_negative_ts", "disabled"]
    args += ["-f", container.muxer, "-y", ffmpeg.file_url(output)]
    return args
