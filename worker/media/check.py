"""The post-write check: the output covers the recording's timeline exactly (pure)."""

from __future__ import annotations

from dataclasses import replace

from worker.errors import OutputRejected
from worker.media.containers import Container
from worker.media.model import MediaInfo, Recording
from worker.media.plan import MergePlan
from worker.media.timeline import StreamSpan
from worker.media.video import holds_last_frame

# Container timestamp rounding allowed on top of one audio frame in the output check:
# WebM stores milliseconds, and as read back the output's Opus packets start 7 ms early
# (the pre-skip: stored from 0, the track's CodecDelay subtracted by the demuxer).
CONTAINER_ROUNDING_SECONDS = 0.010


def check_output(
    output: MediaInfo,
    recording: Recording,
    plan: MergePlan,
    container: Container,
    frames_written: int | None = None,
) -> None:
    """Reject an output that does not cover the recording's timeline exactly (pure).

    Both files' :class:`Timeline` are measured the same way. The output is written on the
    recording's timeline (its t=0 is the recording's origin, its timestamps are not shifted):
    it must end at ``plan.duration``, its audio must run from 0 to there, and its video must
    hold every frame of the recording's, the first at its original time, the last held to
    the end (:func:`_check_ends`: on long files too, whose timelines come from the head and
    the tail; the video track's end is the container's, MP4 start + duration, WebM its
    DURATION tag). Frames are counted in the output's packets or, when a long output was
    read in intervals, taken from the merge's ffmpeg (``frames_written``); not compared when
    the recording was read in intervals (its count is unknown). The output's own origin is
    not used: as read back, the audio encoder's priming lies before 0 (WebM: Opus blocks
    stored from 0, read 7 ms early as the track's CodecDelay is subtracted; MP4: AAC's
    priming packet, marked discarded, is not counted). Tolerance: one encoded audio frame
    (AAC 1024 samples, Opus 20 ms) plus :data:`CONTAINER_ROUNDING_SECONDS`.
    """
    name = output.path.name
    if output.video is None:
        raise OutputRejected(f"{name}: output has no video stream")
    if output.audio is None:
        raise OutputRejected(f"{name}: output has no audio stream")
    if output.timeline is None:
        raise OutputRejected(f"{name}: no timeline to check")
    tolerance = container.audio_frame_seconds(plan.sample_rate) + CONTAINER_ROUNDING_SECONDS
    video = output.timeline.stream(output.video.index)
    audio = output.timeline.stream(output.audio.index)
    source = recording.timeline.relative(recording.video.index)
    if video is None or audio is None or source is None:
        raise OutputRejected(f"{name}: output has a stream without packets")
    held = holds_last_frame(recording, container)
    if output.video.track_end is not None:
        # Where the held frame ends, the container says, not the packets: WebM stores no frame
        # durations, and ffmpeg 5.1's MP4 muxer writes a late-starting track's last sample
        # shorter by the track's start, its header's end (start + duration) as set.
        video = replace(video, end=output.video.track_end)
    _check_ends(name, output.timeline.end, video, audio, source, plan.duration, tolerance, held)
    if audio.start > tolerance:
        raise OutputRejected(f"{name}: audio starts {audio.start:.3f} s late")
    # ffmpeg's count includes packets the demuxer marks discarded (it copies them too).
    frames, expected = (
        (video.packets, source.packets)
        if output.timeline.complete
        else (frames_written, source.packets + source.discarded)
    )
    if recording.timeline.complete and frames is not None and frames != expected:
        raise OutputRejected(f"{name}: {frames} video frames, the recording has {expected}")
    if abs(video.start - source.start) > CONTAINER_ROUNDING_SECONDS:
        raise OutputRejected(
            f"{name}: video starts at {video.start:.3f} s, in the recording at {source.start:.3f} s"
        )


def _check_ends(
    name: str,
    end: float,
    video: StreamSpan,
    audio: StreamSpan,
    source: StreamSpan,
    duration: float,
    tolerance: float,
    held: bool,
) -> None:
    """The output, its audio and (when its last frame is held) its video end at ``duration``
    within ``tolerance``; a video not held keeps the recording's last frame (``source``)."""
    ends = [("output", end), ("audio", audio.end)] + ([("video", video.end)] if held else [])
    for what, at in ends:
        if abs(at - duration) > tolerance:
            raise OutputRejected(
                f"{name}: {what} ends at {at:.3f} s, the recording at {duration:.3f} s "
                f"(more than {tolerance:.3f} s apart)"
            )
    if not held and abs(video.last - source.last) > CONTAINER_ROUNDING_SECONDS:
        raise OutputRejected(
            f"{name}: last frame at {video.last:.3f} s, in the recording at {source.last:.3f} s"
        )
