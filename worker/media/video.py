"""The video track's arguments: the recording's timeline origin and its last frame held (pure).

The video is stream-copied, every frame at its original time; only timestamps are touched.
"""

from __future__ import annotations

from fractions import Fraction

from worker.media.containers import MP4, WEBM_TICKS_PER_SECOND, Container
from worker.media.model import Recording
from worker.media.plan import MergePlan


def timeline_offset_args(recording: Recording) -> list[str]:
    """``-itsoffset`` that puts ffmpeg's t=0 of the recording at its :class:`Timeline`'s
    origin (pure; nothing when they agree).

    ffmpeg shifts an input by the container's start time, which is not always the earliest
    sample: a Chromium H.264 WebM at a low frame rate (fewer than 7 frames in ffmpeg's
    analysis window) has no decode timestamps for its first frames, so no video start time,
    and the container's start is its audio's (16 ms after the first frame). The recording's
    video, the call end and the audio cuts are all measured from the origin.
    """
    delta = recording.start_time - recording.timeline.origin
    if abs(delta) < 1e-6:
        return []
    return ["-itsoffset", f"{delta:.6f}"]


def hold_last_frame_args(recording: Recording, plan: MergePlan, container: Container) -> list[str]:
    """``-bsf:v setts`` (and the MP4 time base): the last frame lasts to the end (pure).

    The last video packet's duration (a timestamp: the picture is not touched) is set so that
    the video track, and with it the container's duration, end exactly at the end of the
    timeline: a static screen's last frame, seconds before the microphone's last sound, stays
    on screen until then. WebM stores no frame durations (Chromium writes none, ffmpeg's
    muxer neither): left alone, the muxer would use ffmpeg's guess from the frame rate it
    estimated (1 ms to 1 s for the same recorder, changed by resizes and frame drops).

    The expression's units: ffmpeg 5.1 hands the filter the packets in the recording's time
    base or, depending on how its outputs were initialised (one input or two of the
    recording, for example), already in the muxer's, while its ``TB`` stays the recording's.
    The MP4 track keeps the recording's time base (``-video_track_timescale``, exact: every
    frame at its original time), so there both agree; it needs a whole-unit base (1/N). The
    WebM muxer always uses 1/1000: for a video in another time base (VP9 or AV1 in a Chromium
    MP4, 1/30000) the last packet's time tells which unit it came in (the one closer to its
    known time) and its duration is given in that unit.
    A video with B-frames is left as it is (see below).
    """
    video = recording.video
    span = recording.timeline.relative(video.index)
    if span is None:
        return []
    base = video.time_base
    if video.reorder_delay:
        # B-frames (never from a browser, but from uploaded or re-encoded files): ffmpeg
        # 5.1's setts drops the last reordered frames of the copy even with an identity
        # expression, so such a video keeps its own last-frame duration.
        return []
    track: list[str] = []
    if container is MP4:
        if base is None or base.numerator != 1:
            return []
        track = ["-video_track_timescale", str(base.denominator)]
    ms = WEBM_TICKS_PER_SECOND
    if container is MP4 or base is None or base == Fraction(1, ms):
        end = f"{plan.duration:.6f}/TB-PTS"
    else:  # WebM of a video in another time base: milliseconds or TB, as the packet says
        in_ms = f"lt(abs(PTS-{round(span.last * ms)})\\,abs(PTS-{span.last:.6f}/TB))"
        end = f"if({in_ms}\\,{round(plan.duration * ms)}\\,{plan.duration:.6f}/TB)-PTS"
    last_packet = span.packets + span.discarded - 1  # setts counts packets from 0
    # Frames in presentation order decode at their presentation time: given explicitly, as
    # Matroska stores no decode times and ffmpeg invents wrong ones for H.264 frames it read
    # before it had guessed the decoder delay (all at one instant: frames lost in MP4).
    # (setts sets the pts from the dts when only dts= is given: both are spelled out.)
    order = "pts=PTS:dts=PTS:" if span.in_order else ""
    duration = f"duration='if(eq(N\\,{last_packet})\\,{end}\\,DURATION)'"
    return ["-bsf:v", f"setts={order}{duration}", *track]
