"""The merge plan: the call end clamped to the recording, the Connect audio placed (pure).

All numbers are on the recording's :class:`~worker.media.timeline.Timeline` (its origin is
t=0 and where ``callEnd`` is measured from), in seconds and in output audio samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from worker.config import AlignMode, AudioSettings
from worker.limits import FFMPEG_TIMEOUT_BASE_SECONDS, FFMPEG_TIMEOUT_PER_MEDIA_SECOND
from worker.media.model import ConnectAudio, Recording

# Past this call end the recording's audio after callEnd is read from a second, fast-seeked
# input instead of decoding (and discarding) everything before callEnd: on a 60-minute
# recording ending at 45 min that decode was most of the merge's excess over the floor.
SEEK_MIN_CALL_END_SECONDS = 5.0
# The seek lands this far before callEnd (whole seconds, see recording_seek_seconds): room for
# the decoder's preroll after a seek (AAC's first frame, Opus' ~80 ms convergence), which our
# sample-exact atrim then discards, so the result does not depend on seek accuracy.
SEEK_MARGIN_SECONDS = 2.0


@dataclass(frozen=True)
class MergeOptions:
    """How to merge: alignment, output audio format, loudness, time-limit scaling.

    ``align``: ``auto`` measures the call end from the audio (:mod:`worker.media.sync`) and
    END-aligns on it, falling back to the timestamp; ``end`` END-aligns on the timestamp;
    ``start`` is the Lambda's start alignment. ``loudness_target`` (LUFS): both segments are
    brought to it (:mod:`worker.media.loudness`); None leaves the levels as they are.
    """

    align: AlignMode = "auto"
    audio: AudioSettings = field(default_factory=AudioSettings)
    loudness_target: float | None = None
    timeout_base_seconds: float = FFMPEG_TIMEOUT_BASE_SECONDS
    timeout_per_media_second: float = FFMPEG_TIMEOUT_PER_MEDIA_SECOND

    def media_timeout(self, duration: float) -> float:
        """The time limit of an ffmpeg run over ``duration`` seconds of media."""
        return self.timeout_base_seconds + self.timeout_per_media_second * duration


@dataclass(frozen=True)
class MergePlan:
    """The numbers of one merge, in seconds and in output audio samples."""

    duration: float
    call_end: float
    call_end_clamped: bool
    connect_duration: float
    offset: float  # callEnd - connectDuration (END alignment's placement of the Connect audio)
    sample_rate: int
    channels: int
    total_samples: int
    call_end_samples: int
    offset_samples: int
    # Where the Connect audio ends (issue 19): the call end, unless the sync found a Connect
    # file that stopped before it (the recording's own audio from here on).
    connect_end: float
    connect_end_samples: int
    # Recording seconds per Connect second (clock drift the sync measured; 1: none).
    drift_ratio: float = 1.0
    # Samples of the recording's own audio before the Connect audio's first sample (issue 19:
    # a measured placement only, see placed_plan). 0: the output starts with the Connect
    # segment, SPEC §5's silence before its audio.
    head_samples: int = 0

    @property
    def tail_samples(self) -> int:
        """Samples of the recording's own audio after the Connect audio's end."""
        return self.total_samples - self.connect_end_samples

    @property
    def connect_samples(self) -> int:
        """Samples of the Connect segment: [head_samples, connect_end_samples)."""
        return self.connect_end_samples - self.head_samples


def plan_merge(
    recording: Recording,
    connect: ConnectAudio,
    call_end: float,
    options: MergeOptions,
    *,
    connect_end: float | None = None,
    drift_ratio: float = 1.0,
) -> MergePlan:
    """Clamp ``call_end`` to the recording and place the Connect audio (pure).

    The recording lasts its :class:`Timeline`'s duration (``Recording.duration``): the output
    audio is exactly that many samples, from the recording's origin. The Connect audio ends at
    ``connect_end`` (default: the call end; never after it) and lasts its duration times
    ``drift_ratio`` (issue 19).
    """
    if not math.isfinite(call_end) or call_end < 0:
        raise ValueError("call end must be a finite number >= 0")
    rate = options.audio.sample_rate
    duration = recording.duration
    clamped = call_end > duration
    end = min(call_end, duration)
    total = round(duration * rate)
    end_samples = min(round(end * rate), total)
    connect_to = end if connect_end is None else max(0.0, min(connect_end, end))
    offset = connect_to - connect.duration * drift_ratio
    return MergePlan(
        duration=duration,
        call_end=end,
        call_end_clamped=clamped,
        connect_duration=connect.duration,
        offset=offset,
        sample_rate=rate,
        channels=options.audio.channels,
        total_samples=total,
        call_end_samples=end_samples,
        offset_samples=round(offset * rate),
        connect_end=connect_to,
        connect_end_samples=min(round(connect_to * rate), total),
        drift_ratio=drift_ratio,
    )


def placed_plan(
    recording: Recording,
    connect: ConnectAudio,
    plan: MergePlan,
    options: MergeOptions,
    *,
    offset_seconds: float,
    measures_call_end: bool,
    drift_ratio: float = 1.0,
) -> MergePlan:
    """The plan after a confident sync (pure): the Connect audio where it was measured.

    ``offset_seconds`` is the sync's measured minus timestamp. The +-5 s search
    (``measures_call_end``) measures the call end itself. The wide search measures where the
    Connect file ends: after the timestamp, that is the call end (the timestamp was early);
    before it, the file stopped early (or the timestamp is late: the audio cannot tell), so the
    call end stays the timestamp's and the recording's own audio covers the rest. (Plain
    numbers rather than the sync's result: this core module never imports the sync adapter.)

    Where the output has no Connect audio, the recording's own audio plays (issue 19, "Sync
    anywhere"): after the Connect file's last sample (above) and, END-aligned, before its first
    (``head_samples``): a Connect file that starts late in the call (a contact flow that starts
    recording late), or simply a recording begun before the call (the agent idle, or the
    seconds before the agent answered). The audio cannot tell those apart (the call's start
    is not in the media nor in the message), so the whole span before the Connect audio is the
    microphone's and no late start is counted. Only a measured placement does this: with the
    timestamp alone the placement may be wrong, and the microphone beside a misplaced Connect
    file would play the call twice (SPEC §5's silence stays, :func:`plan_merge`). A span
    suspended (``SuspendContactRecording``) is silence inside the Connect file, so it stays
    silence: the microphone is never used inside the Connect file's span.
    """
    connect_end = plan.call_end + offset_seconds
    call_end = plan.call_end
    if measures_call_end or connect_end > plan.call_end:
        call_end = connect_end
    measured = plan_merge(
        recording,
        connect,
        call_end,
        options,
        connect_end=connect_end,
        drift_ratio=drift_ratio,
    )
    head = 0
    if options.align != "start":  # START alignment places the Connect audio at 0 (no head)
        head = min(max(0, measured.offset_samples), measured.connect_end_samples)
    return replace(measured, call_end_clamped=plan.call_end_clamped, head_samples=head)


def recording_seek_seconds(plan: MergePlan) -> int:
    """Where the recording's audio input is fast-seeked to (0: not seeked) (pure).

    A whole number of seconds, so that it is a whole number of samples at any integer sample
    rate (the ``[rec]`` chain's ``atrim`` counts samples from it) and ``-ss`` parses exactly.
    """
    if plan.connect_end <= SEEK_MIN_CALL_END_SECONDS or plan.tail_samples <= 0:
        return 0
    return max(0, math.floor(plan.connect_end - SEEK_MARGIN_SECONDS))


def recording_head_seconds(plan: MergePlan) -> int:
    """How much of the recording (whole seconds, from its start) the microphone before the
    Connect audio reads (0: none) (pure).

    The head is read from the recording opened once more with ``-t`` (an input of its own
    whose reading stops there), so that a recording seeked for the tail is not decoded whole
    for its first seconds. :data:`SEEK_MARGIN_SECONDS` past the head: room for the cut at a
    whole sample, whatever the container's packet boundaries.
    """
    if plan.head_samples <= 0:
        return 0
    return math.ceil(plan.head_samples / plan.sample_rate + SEEK_MARGIN_SECONDS)
