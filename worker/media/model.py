"""What a probe says about a file, and the inputs of a merge once validated (pure types).

:class:`MediaInfo` is a probed file: its streams, its :class:`~worker.media.timeline.Timeline`
(read from the packets) and, as a field of its own, the duration its header claims. The merge
validates its inputs once, into types that say what they hold: a :class:`Recording` has a
video stream and a timeline, a :class:`ConnectAudio` has an audio stream. Everything after
that (plan, graph, arguments, sync) takes these types and never checks again.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from worker.errors import MediaError, NoAudioStream, NoVideoStream
from worker.media.timeline import Timeline


@dataclass(frozen=True)
class StreamInfo:
    """One stream of a probed file (times in seconds, on the file's own timeline)."""

    index: int
    codec_type: str
    codec_name: str
    start_time: float
    duration: float | None
    sample_rate: int | None
    channels: int | None
    width: int | None
    height: int | None
    time_base: Fraction | None = None
    reorder_delay: int = 0  # ffprobe's has_b_frames: frames decoded before the first shown
    # Where the container says the track ends, on the file's clock: MP4 start + duration,
    # Matroska the track's DURATION tag (the end of a held last frame: WebM stores no frame
    # durations, see worker.media.check). None: not said.
    track_end: float | None = None


@dataclass(frozen=True)
class ProbeHeader:
    """What ffprobe's format and stream listing says, before any packet is read.

    ``video`` is the first video stream that is not a cover picture, ``audio`` the first
    audio stream. ``duration`` is the header's claim (None when absent or zero: MediaRecorder
    WebM has none); it is believed only as far as :mod:`worker.media.timeline` says.
    """

    path: Path
    format_name: str
    duration: float | None
    video: StreamInfo | None
    audio: StreamInfo | None
    start_time: float
    size_bytes: int


@dataclass(frozen=True)
class MediaInfo:
    """A probed file. ``duration`` is its :class:`Timeline`'s duration (tests may build one
    without a timeline); ``header_duration`` is what its header claimed (None: nothing)."""

    path: Path
    format_name: str
    duration: float
    video: StreamInfo | None
    audio: StreamInfo | None
    start_time: float = 0.0
    size_bytes: int = 0
    timeline: Timeline | None = None
    header_duration: float | None = None


@dataclass(frozen=True)
class Recording:
    """A screen recording the merge can use: a video stream and the timeline of its packets.

    ``start_time`` is the container's (where ffmpeg puts the input's t=0, not always the
    timeline's origin: see :func:`worker.media.video.timeline_offset_args`).
    """

    path: Path
    video: StreamInfo
    audio: StreamInfo | None  # the microphone (None: the screen was recorded without one)
    timeline: Timeline
    start_time: float = 0.0

    @classmethod
    def of(cls, info: MediaInfo, *, name: str | None = None) -> Recording:
        """Validate ``info``: :class:`NoVideoStream` without a video stream, :class:`MediaError`
        without a timeline (a file that was not probed). ``name`` names it in the error
        (default: the file's name)."""
        what = name or info.path.name
        if info.video is None:
            raise NoVideoStream(f"{what} has no video stream")
        if info.timeline is None:
            raise MediaError(f"{what}: no timeline (not probed)")
        return cls(info.path, info.video, info.audio, info.timeline, info.start_time)

    @property
    def duration(self) -> float:
        """The timeline's duration: what the output covers."""
        return self.timeline.duration


@dataclass(frozen=True)
class ConnectAudio:
    """The Amazon Connect call recording: a file with an audio stream."""

    path: Path
    audio: StreamInfo
    duration: float  # its timeline's

    @classmethod
    def of(cls, info: MediaInfo, *, name: str | None = None) -> ConnectAudio:
        """Validate ``info``: :class:`NoAudioStream` without an audio stream."""
        if info.audio is None:
            raise NoAudioStream(f"{name or info.path.name} has no audio stream")
        return cls(info.path, info.audio, info.duration)
