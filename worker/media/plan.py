"""The merge plan: the call end clamped to the recording, the Connect audio placed (pure).

All numbers are on the recording's :class:`~worker.media.timeline.Timeline` (its origin is
t=0 and where ``callEnd`` is measured from), in seconds and in output audio samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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

    @property
    def tail_samples(self) -> int:
        """Samples of the recording's own audio after the call end."""
        return self.total_samples - self.call_end_samples


def plan_merge(
    recording: Recording, connect: ConnectAudio, call_end: float, options: MergeOptions
) -> MergePlan:
    """Clamp ``call_end`` to the recording and place the Connect audio (pure).

    The recording lasts its :class:`Timeline`'s duration (``Recording.duration``): the output
    audio is exactly that many samples, from the recording's origin.
    """
    if not math.isfinite(call_end) or call_end < 0:
        raise ValueError("call end must be a finite number >= 0")
    rate = options.audio.sample_rate
    duration = recording.duration
    clamped = call_end > duration
    end = min(call_end, duration)
    total = round(duration * rate)
    end_samples = min(round(end * rate), total)
    offset = end - connect.duration
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
    )


def recording_seek_seconds(plan: MergePlan) -> int:
    """Where the recording's audio input is fast-seeked to (0: not seeked) (pure).

    A whole number of seconds, so that it is a whole number of samples at any integer sample
    rate (the ``[rec]`` chain's ``atrim`` counts samples from it) and ``-ss`` parses exactly.
    """
    if plan.call_end <= SEEK_MIN_CALL_END_SECONDS or plan.tail_samples <= 0:
        return 0
    return max(0, math.floor(plan.call_end - SEEK_MARGIN_SECONDS))
