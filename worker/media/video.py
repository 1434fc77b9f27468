"""The video track's arguments: the recording's timeline origin and its last frame held (pure).

The video is stream-copied, every frame at its original time; only timestamps are touched.
"""

from __future__ import annotations

from fractions import Fraction

from worker.media.containers import MP4, WEBM_TICKS_PER_SECOND, Container
from worker.media.model import Recording
from worker.media.plan import MergePlan
from worker.media.timeline import StreamSpan


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


def holds_last_frame(recording: Recording, container: Container) -> bool:
    """Whether :func:`hold_last_frame_args` stretches the recording's last frame to the end
    of its timeline (pure): not for B-frames, nor into an MP4 track whose time base is not a
    whole unit (1/N); such video keeps its own last-frame duration."""
    video = recording.video
    if recording.timeline.stream(video.index) is None or video.reorder_delay:
        return False
    base = video.time_base
    return container is not MP4 or (base is not None and base.numerator == 1)


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
    known time) and its duration is given in that unit. The last packet is found by its time
    (:func:`_is_last_packet`).
    A video with B-frames is left as it is (see :func:`holds_last_frame`).
    """
    video = recording.video
    span = recording.timeline.relative(video.index)
    if span is None or not holds_last_frame(recording, container):
        # B-frames (never from a browser, but from uploaded or re-encoded files): ffmpeg
        # 5.1's setts drops the last reordered frames of the copy even with an identity
        # expression, so such a video keeps its own last-frame duration.
        return []
    base = video.time_base
    track = ["-video_track_timescale", str(base.denominator)] if base and container is MP4 else []
    ms = WEBM_TICKS_PER_SECOND
    if container is MP4 or base is None or base == Fraction(1, ms):
        end = f"{plan.duration:.6f}/TB-PTS"
    else:  # WebM of a video in another time base: milliseconds or TB, as the packet says
        end = f"if({_in_ms(span.last)}\\,{round(plan.duration * ms)}\\,{plan.duration:.6f}/TB)-PTS"
    # Frames in presentation order decode at their presentation time: given explicitly, as
    # Matroska stores no decode times and ffmpeg invents wrong ones for H.264 frames it read
    # before it had guessed the decoder delay (all at one instant: frames lost in MP4).
    # (setts sets the pts from the dts when only dts= is given: both are spelled out.)
    order = "pts=PTS:dts=PTS:" if span.in_order else ""
    last = _is_last_packet(span, base, container, complete=recording.timeline.complete)
    return ["-bsf:v", f"setts={order}duration='if({last}\\,{end}\\,DURATION)'", *track]


def _in_ms(last: float) -> str:
    """Whether the packet came in milliseconds rather than in TB: its time is closer to the
    last packet's in that unit (see :func:`hold_last_frame_args`)."""
    return f"lt(abs(PTS-{round(last * WEBM_TICKS_PER_SECOND)})\\,abs(PTS-{last:.6f}/TB))"


def _is_last_packet(
    span: StreamSpan, base: Fraction | None, container: Container, *, complete: bool
) -> str:
    """setts's test for the recording's last video packet: by its TIME (pure).

    ``span.last`` is known from the packets read, all of them or, for a long file, the head
    and the tail (whose read seeks back to a keyframe and so holds the last frames) or a read
    further back when the tail had no video (:mod:`worker.media.probing`): a packet count
    there covers only the packets read, not the file's. Video in presentation order has its
    last packet at the greatest time, so it is the first at or after ``span.last`` (less half
    a millisecond: its time in the packets' unit may round; frames are more than 1 ms apart).
    After a complete read the last packet's index is known too (``N`` counts from 0 and
    includes the discarded ones ffmpeg copies): also required there, so that an early packet
    whose time in one unit equals the last's in the other (WebM of a 1/30000 video, below)
    cannot match. (After a partial read the count is not a bound: the head and tail reads
    may overlap, so only the time decides.)
    """
    at = f"{span.last - 0.0005:.6f}/TB"
    ms = WEBM_TICKS_PER_SECOND
    if container is MP4 or base is None or base == Fraction(1, ms):
        late = f"gte(PTS\\,{at})"
    else:  # milliseconds or TB, as the packet says (in ms: within the rounding, 1 ms)
        in_ms = f"lte(abs(PTS-{round(span.last * ms)})\\,1)"
        late = f"if({_in_ms(span.last)}\\,{in_ms}\\,gte(PTS\\,{at}))"
    if not complete:
        return late
    return f"eq(N\\,{span.packets + span.discarded - 1})*{late}"
