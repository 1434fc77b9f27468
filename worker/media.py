"""The media engine (SPEC §5): probe, plan, one-pass merge, thumbnail, post-write check.

Layers, pure core first:

- :func:`container_for`, :func:`plan_merge`, :func:`build_audio_graph`,
  :func:`build_merge_args`, :func:`build_thumbnail_args` are pure functions of probe results
  and options (unit-tested without ffmpeg).
- :func:`probe` runs ffprobe (with the allow-lists of :mod:`worker.ffmpeg`) and reads the
  file's :class:`Timeline` from its packets, the same way with or without a header duration
  (MediaRecorder WebM has none): every packet, or for a long file with a believable header its
  first and last seconds (:func:`scan_intervals`); a header promising clearly more than the
  packets hold is a truncated file.
- :func:`merge` runs one ffmpeg process for the merge, a second short one for the thumbnail,
  then probes the output and rejects it when its duration or streams are wrong.

Timeline (:class:`Timeline`, the one definition): from the earliest timestamp of any stream
(ffmpeg shifts every input so that it is 0) to the end of the last sample of any stream, audio
or video. All durations and offsets here are on that shifted timeline, which is also where
``callEnd`` is measured from (the start of the Komorebi recording). The output covers exactly
that: every video frame stream-copied at its original time, the last one held to the end,
audio exactly as long.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import anyio
import structlog

from worker import ffmpeg, loudness, sync
from worker.config import AlignMode, AudioSettings
from worker.errors import (
    MediaError,
    NoAudioStream,
    NoVideoStream,
    OutputRejected,
    UnsupportedMedia,
)
from worker.observability import CALL_END_CLAMPS, CONNECT_SHORT, FFMPEG_FAILURES

log = structlog.get_logger(__name__)

ProgressCallback = Callable[[float], None]

# A header that claims fewer bits per second than this for the whole file is not believed
# (e.g. "3 hours" on a 400 kB file): screen recordings, even of a static screen, and speech
# audio stay well above it.
MIN_PLAUSIBLE_BITRATE = 4000.0
# A believable header duration this much longer than the packets' timeline means that the file
# was cut (a fragmented MP4's index promising samples that are not there): the larger of the two.
TRUNCATION_MIN_SECONDS = 1.0
TRUNCATION_MIN_SHARE = 0.05
# A file with a believable header duration longer than this is read in two intervals, its
# first seconds (the origin) and its last (the end), not packet by packet: ffprobe seeks with
# the container's index. (MediaRecorder WebM has no header: read whole.)
INTERVAL_MIN_SECONDS = 120.0
HEAD_SECONDS = 20.0
TAIL_SECONDS = 30.0
# Nothing we process is longer than a week (messages.MAX_CALL_END_SECONDS likewise).
MAX_PLAUSIBLE_DURATION = 7 * 24 * 3600.0
# Container timestamp rounding allowed on top of one audio frame in the output check:
# WebM stores milliseconds, and the output's Opus packets start 6.5 ms early (pre-skip).
CONTAINER_ROUNDING_SECONDS = 0.010
PROGRESS_LOG_INTERVAL_SECONDS = 30.0
# Past this call end the recording's audio after callEnd is read from a second, fast-seeked
# input instead of decoding (and discarding) everything before callEnd: on a 60-minute
# recording ending at 45 min that decode was most of the merge's excess over the floor.
SEEK_MIN_CALL_END_SECONDS = 5.0
# The seek lands this far before callEnd (whole seconds, see recording_seek_seconds): room for
# the decoder's preroll after a seek (AAC's first frame, Opus' ~80 ms convergence), which our
# sample-exact atrim then discards, so the result does not depend on seek accuracy.
SEEK_MARGIN_SECONDS = 2.0
THUMBNAIL_AT_SECONDS = 1.0
# The Matroska/WebM muxer's time base (1/1000 s), whatever the input's.
WEBM_TICKS_PER_SECOND = 1000


# --- data ------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class StreamSpan:
    """Where one stream's samples lie on its file's own clock (seconds), from its packets."""

    index: int
    start: float  # the first presented sample (discarded priming and skipped samples excluded)
    end: float  # the end of the last sample: max(pts + duration)
    last: float  # the start of the last sample (for video: the frame held to the end)
    packets: int  # presented packets (frames)
    discarded: int = 0  # packets the demuxer marks discarded (still copied by ffmpeg)
    in_order: bool = True  # presentation times never go back in file order (no reordering)


@dataclass(frozen=True)
class Timeline:
    """The one definition of a file's timeline, used by the plan, the merge and the check.

    ``origin`` is the earliest timestamp of any stream (ffmpeg shifts every input by it, so it
    is t=0 of the merge and of ``callEnd``); ``end`` is the end of the last sample of any
    stream, audio or video: a static screen emits no video frames while the microphone goes on,
    and the last picture stays on screen until the last sound. Both come from the packets
    (:class:`TimelineScan`), the same way for files with and without a header duration.
    """

    streams: tuple[StreamSpan, ...]
    complete: bool = True  # every packet read (False: only the head and the tail; counts partial)

    @property
    def origin(self) -> float:
        """The earliest timestamp of any stream (the file's t=0 for ffmpeg)."""
        return min(span.start for span in self.streams)

    @property
    def end(self) -> float:
        """The end of the last sample of any stream, on the file's own clock."""
        return max(span.end for span in self.streams)

    @property
    def duration(self) -> float:
        """How long the file lasts: from the first sample of any stream to the last's end."""
        return self.end - self.origin

    def stream(self, index: int) -> StreamSpan | None:
        """The span of stream ``index`` (None when it has no packets)."""
        return next((span for span in self.streams if span.index == index), None)

    def relative(self, index: int) -> StreamSpan | None:
        """Stream ``index``'s span with times relative to :attr:`origin`."""
        span = self.stream(index)
        if span is None:
            return None
        o = self.origin
        return replace(span, start=span.start - o, end=span.end - o, last=span.last - o)


@dataclass(frozen=True)
class MediaInfo:
    """A probed file. ``duration`` is its :class:`Timeline`'s duration (when probed; tests
    may build one without a timeline)."""

    path: Path
    format_name: str
    duration: float
    video: StreamInfo | None
    audio: StreamInfo | None
    start_time: float = 0.0
    size_bytes: int = 0
    timeline: Timeline | None = None


@dataclass(frozen=True)
class Container:
    """An output container and the audio codec that goes in it."""

    extension: str
    content_type: str
    audio_codec: str
    muxer: str = ""
    audio_frame_samples: int = 1024  # AAC; Opus frames are 20 ms (see audio_frame_seconds)

    def audio_frame_seconds(self, sample_rate: int) -> float:
        """Duration of one encoded audio frame at ``sample_rate``."""
        if self.audio_codec == "libopus":
            return 0.020
        return self.audio_frame_samples / sample_rate


MP4 = Container("mp4", "video/mp4", "aac", muxer="mp4")
WEBM = Container("webm", "video/webm", "libopus", muxer="webm")
_CONTAINERS = {"h264": MP4, "hevc": MP4, "vp8": WEBM, "vp9": WEBM, "av1": WEBM}
CODECS = frozenset(_CONTAINERS)  # video codecs the merge accepts


@dataclass(frozen=True)
class MergeOptions:
    """How to merge: alignment, output audio format, loudness, time-limit scaling.

    ``align``: ``auto`` measures the call end from the audio (:mod:`worker.sync`) and
    END-aligns on it, falling back to the timestamp; ``end`` END-aligns on the timestamp;
    ``start`` is the Lambda's start alignment. ``loudness_target`` (LUFS): both segments are
    brought to it (:mod:`worker.loudness`); None leaves the levels as they are.
    """

    align: AlignMode = "auto"
    audio: AudioSettings = field(default_factory=AudioSettings)
    loudness_target: float | None = None
    timeout_base_seconds: float = 120.0
    timeout_per_media_second: float = 1.0


@dataclass(frozen=True)
class MergeRequest:
    """One merge: local input files, the call end, where to write the results."""

    recording: Path
    connect_audio: Path
    call_end_seconds: float
    output: Path
    thumbnail: Path | None
    options: MergeOptions = field(default_factory=MergeOptions)
    recording_info: MediaInfo | None = None
    connect_info: MediaInfo | None = None


@dataclass(frozen=True)
class MergeResult:
    """What a merge produced and the numbers stored in the table (SPEC §4)."""

    output: Path
    thumbnail: Path | None
    container: Container
    media_duration_seconds: float
    call_end_seconds: float
    call_end_clamped: bool
    connect_duration_seconds: float
    connect_audio_offset_seconds: float
    sync: sync.SyncResult = sync.TIMESTAMP_ONLY
    loudness: loudness.LoudnessGains | None = None


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

    @property
    def tail_samples(self) -> int:
        """Samples of the recording's own audio after the Connect audio's end."""
        return self.total_samples - self.connect_end_samples


# --- pure core -------------------------------------------------------------------------------


def container_for(video_codec: str) -> Container:
    """The output container for a video codec; :class:`UnsupportedMedia` for any other."""
    try:
        return _CONTAINERS[video_codec]
    except KeyError:
        raise UnsupportedMedia(
            f"video codec {video_codec!r} is not supported (h264, hevc, vp8, vp9, av1)"
        ) from None


def plan_merge(
    recording: MediaInfo,
    connect: MediaInfo,
    call_end: float,
    options: MergeOptions,
    *,
    connect_end: float | None = None,
    drift_ratio: float = 1.0,
) -> MergePlan:
    """Clamp ``call_end`` to the recording and place the Connect audio (pure).

    The recording lasts its :class:`Timeline`'s duration (``MediaInfo.duration``): the output
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
    recording: MediaInfo,
    connect: MediaInfo,
    plan: MergePlan,
    synced: sync.SyncResult,
    options: MergeOptions,
) -> MergePlan:
    """The plan after a confident sync (pure): the Connect audio ends where it was measured.

    The +-5 s search measures the call end itself. The wide search measures where the Connect
    file ends: after the timestamp, that is the call end (the timestamp was early); before it,
    the file stopped early (or the timestamp is late: the audio cannot tell), so the call end
    stays the timestamp's and the recording's own audio covers the rest.
    """
    connect_end = plan.call_end + synced.offset_seconds
    call_end = plan.call_end
    if synced.method == "waveform" or connect_end > plan.call_end:
        call_end = connect_end
    measured = plan_merge(
        recording,
        connect,
        call_end,
        options,
        connect_end=connect_end,
        drift_ratio=synced.drift_ratio,
    )
    return replace(measured, call_end_clamped=plan.call_end_clamped)


def _layout(channels: int) -> str:
    return "mono" if channels == 1 else "stereo"


def _normalize(plan: MergePlan) -> str:
    # One format for both sources so concat (and the encoder) see identical streams.
    return (
        f"aformat=sample_fmts=fltp:sample_rates={plan.sample_rate}"
        f":channel_layouts={_layout(plan.channels)}"
    )


def _resample(plan: MergePlan) -> str:
    # async=1 with first_pts=0 makes the stream continuous from t=0 on its input's timeline:
    # a late start (audio at 0.040 s) or a gap becomes silence instead of shifting the audio,
    # so the original timestamps hold. Small timestamp jitter (below 0.1 s) is left alone.
    return f"aresample={plan.sample_rate}:async=1:first_pts=0"


# Drift (issue 19): the Connect audio's timestamps are scaled by the drift ratio and aresample
# follows them by soft compensation (resampling by at most max_soft_comp, 1000 ppm: above the
# largest drift applied, far below an audible pitch change), correcting whenever the audio is
# more than min_comp (0.5 ms) off its timestamps: within ~1 ms along an hour.
DRIFT_MIN_COMP_SECONDS = 0.0005
DRIFT_MAX_SOFT_COMP = 0.001


def connect_resample_steps(plan: MergePlan) -> list[str]:
    """The Connect chain's resampling: :func:`_resample`, or with the drift applied (pure)."""
    if plan.drift_ratio == 1.0:
        return [_resample(plan)]
    return [
        f"asetpts=PTS*{plan.drift_ratio:.9f}",
        f"aresample={plan.sample_rate}:min_comp={DRIFT_MIN_COMP_SECONDS}"
        f":max_soft_comp={DRIFT_MAX_SOFT_COMP}:first_pts=0",
    ]


def _connect_mix(in_channels: int | None, out_channels: int) -> list[str]:
    """Connect: stereo is customer-left/agent-right; mono output is their average (no clip)."""
    if in_channels == 2:
        if out_channels == 1:
            return ["pan=mono|c0=0.5*c0+0.5*c1"]
        return ["pan=stereo|c0=c0|c1=c1"]
    if in_channels == 1:
        return ["pan=mono|c0=c0"] if out_channels == 1 else ["pan=stereo|c0=c0|c1=c0"]
    return []  # other layouts: aformat's standard downmix


def _mic_mix(in_channels: int | None, out_channels: int) -> list[str]:
    """The recording's microphone is one voice: mono, in both channels of a stereo output."""
    if in_channels == 2:
        mono = "0.5*c0+0.5*c1"
    elif in_channels == 1:
        mono = "c0"
    else:
        return []
    return [f"pan=mono|c0={mono}"] if out_channels == 1 else [f"pan=stereo|c0={mono}|c1={mono}"]


def recording_seek_seconds(plan: MergePlan) -> int:
    """Where the recording's audio input is fast-seeked to (0: not seeked) (pure).

    A whole number of seconds, so that it is a whole number of samples at any integer sample
    rate (the ``[rec]`` chain's ``atrim`` counts samples from it) and ``-ss`` parses exactly.
    """
    if plan.connect_end <= SEEK_MIN_CALL_END_SECONDS or plan.tail_samples <= 0:
        return 0
    return max(0, math.floor(plan.connect_end - SEEK_MARGIN_SECONDS))


def build_audio_graph(
    plan: MergePlan,
    *,
    align: AlignMode,
    recording_audio: StreamInfo | None,
    connect_audio: StreamInfo,
    recording_input: int = 0,
    connect_input: int = 1,
    recording_seek: int = 0,
    gains: loudness.LoudnessGains | None = None,
) -> str:
    """The ``-filter_complex`` graph whose ``[aout]`` is the merged audio (pure).

    ``[aout]`` has exactly ``plan.total_samples`` samples: the Connect segment covers
    [0, callEnd), the recording's own audio covers [callEnd, duration).

    ``recording_seek`` (whole seconds) says that ``recording_input`` was opened with
    ``-ss recording_seek``: ffmpeg then offsets its timestamps by the seek point as well as
    by the file's start time, so its t=0 is ``recording_seek`` on the recording's timeline and
    ``[rec]`` cuts ``callEnd - recording_seek`` seconds instead of ``callEnd``.

    ``align`` ``auto`` is END alignment (on the call end the sync measured, already in
    ``plan``). ``gains`` adds the loudness stage (:func:`loudness_steps`).
    """
    connect_gain, recording_gain, output_steps = loudness_steps(gains)
    chains: list[str] = []
    labels: list[str] = []
    norm = _normalize(plan)
    cs = plan.connect_end_samples
    if cs > 0:
        steps = [*_connect_mix(connect_audio.channels, plan.channels)]
        steps += [*connect_resample_steps(plan), norm]
        steps += connect_gain
        if align != "start":
            if plan.offset_samples < 0:  # Connect longer than callEnd: cut its head
                steps += [f"atrim=start_sample={-plan.offset_samples}", "asetpts=PTS-STARTPTS"]
            elif plan.offset_samples > 0:  # shorter: silence before it
                steps.append(f"adelay=delays={plan.offset_samples}S:all=1")
        # Exactly callEnd long: pad a short Connect with silence, cut a long one.
        steps += [f"apad=whole_len={cs}", f"atrim=end_sample={cs}"]
        chains.append(f"[{connect_input}:{connect_audio.index}]" + ",".join(steps) + "[conn]")
        labels.append("[conn]")
    tail = plan.tail_samples
    if tail > 0:
        if recording_audio is not None:
            # first_pts=0 pads from the input's t=0 (the seek point when seeked), so a late
            # start or a gap stays silence at its original place (see _resample).
            skip = cs - recording_seek * plan.sample_rate
            if skip < 0:
                raise ValueError("recording_seek is past the call end")
            steps = [
                *_mic_mix(recording_audio.channels, plan.channels),
                _resample(plan),
                norm,
                *recording_gain,
                f"atrim=start_sample={skip}",
                "asetpts=PTS-STARTPTS",
                f"apad=whole_len={tail}",
                f"atrim=end_sample={tail}",
            ]
            source = f"[{recording_input}:{recording_audio.index}]"
            # Laid over exact-length silence: when the microphone stopped before the call
            # end, the chain above emits no frame at all (apad has nothing to pad) and the
            # tail would be missing; normalize=0 keeps the samples as they are.
            chains.append(source + ",".join(steps) + "[mic]")
            chains.append(
                f"anullsrc=r={plan.sample_rate}:cl={_layout(plan.channels)},{norm},"
                f"atrim=end_sample={tail}[quiet]"
            )
            steps = ["amix=inputs=2:duration=first:dropout_transition=0:normalize=0"]
            source = "[quiet][mic]"
        else:  # screen recorded without a microphone: silence after the call
            steps = [
                f"anullsrc=r={plan.sample_rate}:cl={_layout(plan.channels)}",
                norm,
                f"atrim=end_sample={tail}",
            ]
            source = ""
        chains.append(source + ",".join(steps) + "[rec]")
        labels.append("[rec]")
    if len(labels) == 2:
        chains.append("[conn][rec]" + ",".join(["concat=n=2:v=0:a=1", *output_steps]) + "[aout]")
    elif labels:
        # A single segment: rename its label (anull is a no-op pass-through).
        chains.append(labels[0] + ",".join(["anull", *output_steps]) + "[aout]")
    else:
        raise MediaError("recording has no duration")
    return ";".join(chains)


def loudness_steps(
    gains: loudness.LoudnessGains | None,
) -> tuple[list[str], list[str], list[str]]:
    """The loudness stage: (Connect chain, recording chain, merged output) filters (pure).

    A static gain per segment, then one delay-free peak limiter over the merged audio (it
    keeps the sample count, so the output's length and the alignment are unchanged). None:
    no filter at all, today's audio exactly.
    """
    if gains is None:
        return [], [], []
    return (
        loudness.volume_step(gains.connect_db),
        loudness.volume_step(gains.recording_db),
        [loudness.limiter_step()],
    )


def chapters_metadata(plan: MergePlan) -> str:
    """FFMETADATA with the chapters "Call" [0, callEnd) and "After Call Work" [callEnd, end)
    (milliseconds; a segment shorter than 1 ms is left out) (pure)."""
    end_ms = round(plan.duration * 1000)
    call_ms = min(end_ms, round(plan.call_end * 1000))
    lines = [";FFMETADATA1"]
    for title, start, stop in (("Call", 0, call_ms), ("After Call Work", call_ms, end_ms)):
        if stop > start:
            lines += ["[CHAPTER]", "TIMEBASE=1/1000", f"START={start}", f"END={stop}"]
            lines.append(f"title={title}")
    return "\n".join(lines) + "\n"


def chapters_input_args(path: Path) -> list[str]:
    """Our own FFMETADATA file as an input: its own demuxer, local file only.

    This input is generated by us (trusted), so it gets ``-f ffmetadata`` and a one-entry
    allow-list of its own; the untrusted inputs keep :data:`worker.ffmpeg.FORMAT_WHITELIST`.
    """
    return [
        "-format_whitelist",
        "ffmetadata",
        "-protocol_whitelist",
        "file",
        "-f",
        "ffmetadata",
        "-i",
        ffmpeg.file_url(path),
    ]


def _base_args() -> list[str]:
    return [ffmpeg.FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"]


def build_merge_args(
    *,
    recording: MediaInfo,
    connect: MediaInfo,
    plan: MergePlan,
    output: Path,
    options: MergeOptions,
    progress: bool = True,
    chapters: Path | None = None,
    gains: loudness.LoudnessGains | None = None,
) -> list[str]:
    """The complete ffmpeg command line of the one-pass merge (pure).

    ``chapters``: an FFMETADATA file (:func:`chapters_metadata`) whose chapters the output
    gets; without it the output has none (the recording's own are never copied).
    """
    if recording.video is None:
        raise NoVideoStream(f"{recording.path.name} has no video stream")
    if connect.audio is None:
        raise NoAudioStream(f"{connect.path.name} has no audio stream")
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
    args = _base_args()
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


def timeline_offset_args(recording: MediaInfo) -> list[str]:
    """``-itsoffset`` that puts ffmpeg's t=0 of the recording at its :class:`Timeline`'s
    origin (pure; nothing when they agree).

    ffmpeg shifts an input by the container's start time, which is not always the earliest
    sample: a Chromium H.264 WebM at a low frame rate (fewer than 7 frames in ffmpeg's
    analysis window) has no decode timestamps for its first frames, so no video start time,
    and the container's start is its audio's (16 ms after the first frame). The recording's
    video, the call end and the audio cuts are all measured from the origin.
    """
    if recording.timeline is None:
        return []
    delta = recording.start_time - recording.timeline.origin
    if abs(delta) < 1e-6:
        return []
    return ["-itsoffset", f"{delta:.6f}"]


def hold_last_frame_args(recording: MediaInfo, plan: MergePlan, container: Container) -> list[str]:
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
    span = recording.timeline.relative(video.index) if recording.timeline and video else None
    if video is None or span is None:
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


def thumbnail_time(duration: float) -> float:
    """Where the thumbnail is taken: min(1 s, duration/2)."""
    return max(0.0, min(THUMBNAIL_AT_SECONDS, duration / 2))


def build_thumbnail_args(
    recording: MediaInfo, thumbnail: Path, *, at: float | None = None
) -> list[str]:
    """One PNG frame at ``at`` (default :func:`thumbnail_time`), with a fast input seek
    (``-ss`` before ``-i``: ffmpeg seeks in the container instead of decoding up to it)."""
    if recording.video is None:
        raise NoVideoStream(f"{recording.path.name} has no video stream")
    when = thumbnail_time(recording.duration) if at is None else at
    args = _base_args()
    args += ["-ss", f"{when:.3f}"]
    args += ffmpeg.input_args(recording.path)
    args += ["-map", f"0:{recording.video.index}", "-frames:v", "1", "-an", "-sn", "-dn"]
    args += ["-c:v", "png", "-f", "image2", "-update", "1", "-y", ffmpeg.file_url(thumbnail)]
    return args


def build_probe_args(path: Path) -> list[str]:
    """ffprobe of format and streams, as JSON (pure)."""
    return [
        ffmpeg.FFPROBE,
        "-hide_banner",
        "-v",
        "error",
        "-show_format",
        "-show_streams",
        "-of",
        "json",
        *ffmpeg.input_args(path),
    ]


def build_timeline_args(path: Path, intervals: str | None = None) -> list[str]:
    """ffprobe listing packets' stream, times, flags and skipped samples (pure).

    Demuxing only (no decoding): a pass over the file at disk speed, or over ``intervals``
    (ffprobe's ``-read_intervals``, see :func:`scan_intervals`). One line per packet, read by
    :class:`TimelineScan`.
    """
    return [
        ffmpeg.FFPROBE,
        "-hide_banner",
        "-v",
        "error",
        *(["-read_intervals", intervals] if intervals else []),
        "-show_entries",
        "packet=stream_index,pts_time,dts_time,duration_time,flags"
        ":packet_side_data=skip_samples,discard_padding",
        "-of",
        "compact=p=0",
        *ffmpeg.input_args(path),
    ]


# --- probing ---------------------------------------------------------------------------------


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fraction(value: Any) -> Fraction | None:
    try:
        number = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None
    return number if number > 0 else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _stream(raw: dict[str, Any]) -> StreamInfo:
    return StreamInfo(
        index=int(raw["index"]),
        codec_type=str(raw.get("codec_type", "")),
        codec_name=str(raw.get("codec_name", "unknown")),
        start_time=_float(raw.get("start_time")) or 0.0,
        duration=_float(raw.get("duration")),
        sample_rate=_int(raw.get("sample_rate")),
        channels=_int(raw.get("channels")),
        width=_int(raw.get("width")),
        height=_int(raw.get("height")),
        time_base=_fraction(raw.get("time_base")),
        reorder_delay=_int(raw.get("has_b_frames")) or 0,
    )


def parse_probe_json(path: Path, text: str, size_bytes: int) -> MediaInfo:
    """MediaInfo from ffprobe's JSON: the first video stream (not a cover picture) and the
    first audio stream. ``duration`` is the header's (0 when absent) until :func:`probe`
    replaces it with the timeline's."""
    try:
        data = json.loads(text)
    except ValueError:
        raise MediaError(f"{path.name}: ffprobe output is not JSON") from None
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    video = next(
        (
            _stream(s)
            for s in streams
            if s.get("codec_type") == "video"
            and not (s.get("disposition") or {}).get("attached_pic")
        ),
        None,
    )
    audio = next((_stream(s) for s in streams if s.get("codec_type") == "audio"), None)
    return MediaInfo(
        path=path,
        format_name=str(fmt.get("format_name", "unknown")),
        duration=_float(fmt.get("duration")) or 0.0,
        video=video,
        audio=audio,
        start_time=_float(fmt.get("start_time")) or 0.0,
        size_bytes=size_bytes,
    )


def header_duration_plausible(duration: float | None, size_bytes: int) -> bool:
    """Whether a header duration can be believed for a file of ``size_bytes``."""
    if duration is None or not 0 < duration <= MAX_PLAUSIBLE_DURATION:
        return False
    return size_bytes * 8 / duration >= MIN_PLAUSIBLE_BITRATE


def looks_truncated(header_duration: float, timeline_duration: float, size_bytes: int) -> bool:
    """Whether a believable header promises clearly more media than the packets hold (pure).

    A header that claims an implausible length (see :func:`header_duration_plausible`) is
    ignored instead: the packets are the truth.
    """
    if not header_duration_plausible(header_duration, size_bytes):
        return False
    missing = header_duration - timeline_duration
    return missing > max(TRUNCATION_MIN_SECONDS, TRUNCATION_MIN_SHARE * header_duration)


def scan_intervals(header_duration: float, size_bytes: int) -> tuple[str, float] | None:
    """``-read_intervals`` for a long file with a believable header, and where its tail
    starts (pure); None: read every packet.

    The head gives the origin (every stream starts there: a muxer interleaves by time), the
    tail, read to the end of the file whatever the header says, gives the end.
    """
    if not header_duration_plausible(header_duration, size_bytes):
        return None
    if header_duration < INTERVAL_MIN_SECONDS:
        return None
    tail = header_duration - TAIL_SECONDS
    return f"%+{HEAD_SECONDS:g},{tail:.3f}%", tail


class TimelineScan:
    """Builds a :class:`Timeline` from ffprobe packet lines (:func:`build_timeline_args`).

    Per stream: the first presented sample is the smallest packet time, where packets that
    the demuxer marks discarded (flag ``D``: MP4 edit-list priming) do not count and an
    audio packet's skipped samples (Opus pre-skip in MP4) move its start; the end is the
    largest ``pts + duration``, less the samples a packet discards at its end (WebM
    DiscardPadding). ``sample_rates`` are the audio streams' rates; other streams' packets
    (subtitles, data, a cover picture) are ignored.
    """

    def __init__(self, streams: dict[int, int | None]) -> None:
        self._rates = streams
        self._spans: dict[int, list[float]] = {}  # index -> [start, end, last, packets]
        self._discarded: dict[int, int] = {}
        self._previous: dict[int, float] = {}  # the last packet's time, in file order
        self._reordered: set[int] = set()

    def feed(self, line: str) -> None:
        """Take one output line (lines without a timed packet are ignored)."""
        values = dict(part.split("=", 1) for part in line.split("|") if "=" in part)
        index = _int(values.get("stream_index"))
        if index not in self._rates:
            return
        if "D" in values.get("flags", ""):
            self._discarded[index] = self._discarded.get(index, 0) + 1
            return
        when = _float(values.get("pts_time"))
        if when is None:
            when = _float(values.get("dts_time"))
        if when is None:
            return
        if when < self._previous.get(index, when):
            self._reordered.add(index)
        self._previous[index] = when
        rate = self._rates[index]
        duration = _float(values.get("duration_time")) or 0.0
        start, end = when, when + duration
        if rate:
            start += (_int(values.get("skip_samples")) or 0) / rate
            end -= (_int(values.get("discard_padding")) or 0) / rate
        span = self._spans.get(index)
        if span is None:
            self._spans[index] = [start, end, when, 1]
        else:
            span[0], span[1], span[2] = min(span[0], start), max(span[1], end), max(span[2], when)
            span[3] += 1

    def timeline(self, *, complete: bool = True) -> Timeline | None:
        """The timeline of what was fed (None when no packet had a time)."""
        if not self._spans:
            return None
        return Timeline(
            tuple(
                StreamSpan(
                    index,
                    start,
                    end,
                    last,
                    int(n),
                    self._discarded.get(index, 0),
                    in_order=index not in self._reordered,
                )
                for index, (start, end, last, n) in sorted(self._spans.items())
            ),
            complete=complete,
        )


async def probe(path: Path, *, timeout: float = 60.0) -> MediaInfo:  # noqa: ASYNC109
    """Probe ``path`` with the allow-lists and read its :class:`Timeline` from its packets
    (all of them, or the head and tail of a long file with a believable header).

    Raises :class:`MediaError` (or a subclass) for files ffprobe refuses or cannot read,
    :class:`worker.errors.MediaTimeout` past ``timeout``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise MediaError(f"{path.name}: cannot read ({error.strerror})") from None
    if size == 0:
        FFMPEG_FAILURES.labels(reason="invalid_data").inc()
        raise MediaError(f"{path.name} is empty (0 bytes)")
    lines: list[str] = []
    await ffmpeg.run(
        build_probe_args(path),
        timeout=timeout,
        what=f"probe of {path.name}",
        on_stdout_line=lines.append,
    )
    info = parse_probe_json(path, "\n".join(lines), size)
    streams = [s for s in (info.video, info.audio) if s is not None]
    if not streams:
        FFMPEG_FAILURES.labels(reason="no_streams").inc()
        raise MediaError(f"{path.name} has neither video nor audio")
    rates = {s.index: s.sample_rate for s in streams}
    # Reading every packet is a demux pass (no decoding): allow for the file's size.
    scan_timeout = timeout + size / 20e6
    timeline: Timeline | None = None
    intervals = scan_intervals(info.duration, size)
    if intervals is not None:
        timeline = await _scan(path, rates, scan_timeout, intervals[0])
        if timeline is not None and not intervals_suffice(timeline, intervals[1], len(rates)):
            timeline = None  # the header misled the seek: read every packet instead
    if timeline is None:
        timeline = await _scan(path, rates, scan_timeout, None)
    if timeline is None or not 0 < timeline.duration <= MAX_PLAUSIBLE_DURATION:
        FFMPEG_FAILURES.labels(reason="invalid_data").inc()
        raise MediaError(f"{path.name}: no readable packets")
    header_duration = info.duration
    if looks_truncated(header_duration, timeline.duration, size):
        FFMPEG_FAILURES.labels(reason="truncated").inc()
        raise MediaError(
            f"{path.name} is truncated: its header says {header_duration:.3f} s, "
            f"its media ends at {timeline.duration:.3f} s"
        )
    info = replace(info, duration=timeline.duration, timeline=timeline)
    log.info(
        "media_probed",
        file=path.name,
        format=info.format_name,
        duration=round(info.duration, 3),
        header_duration=round(header_duration, 3) or None,
        origin=round(timeline.origin, 3),
        streams={
            f"{kind} {s.codec_name}": _span_summary(timeline.relative(s.index))
            for kind, s in (("video", info.video), ("audio", info.audio))
            if s is not None
        },
        video=info.video and f"{info.video.codec_name} {info.video.width}x{info.video.height}",
        audio=info.audio
        and f"{info.audio.codec_name} {info.audio.sample_rate} Hz {info.audio.channels} ch",
    )
    return info


async def _scan(
    path: Path,
    rates: dict[int, int | None],
    timeout: float,  # noqa: ASYNC109
    intervals: str | None,
) -> Timeline | None:
    scanner = TimelineScan(rates)
    await ffmpeg.run(
        build_timeline_args(path, intervals),
        timeout=timeout,
        what=f"packet scan of {path.name}",
        on_stdout_line=scanner.feed,
    )
    return scanner.timeline(complete=intervals is None)


def intervals_suffice(timeline: Timeline, tail_from: float, streams: int) -> bool:
    """Whether the head and tail reads found every stream's start and the file's end: each
    stream began in the head, and the tail held packets (none if the header promised more
    than the file holds, which the full scan then shows)."""
    return (
        len(timeline.streams) == streams
        and all(span.start < tail_from for span in timeline.streams)
        and timeline.end >= tail_from
    )


def _span_summary(span: StreamSpan | None) -> str:
    if span is None:
        return "no packets"
    return f"{span.start:.3f}-{span.end:.3f} s, {span.packets} packets"


# --- merging ---------------------------------------------------------------------------------


def check_output(
    output: MediaInfo,
    recording: MediaInfo,
    plan: MergePlan,
    container: Container,
    frames_written: int | None = None,
) -> None:
    """Reject an output that does not cover the recording's timeline exactly (pure).

    Both files' :class:`Timeline` are measured the same way. The output is written on the
    recording's timeline (its t=0 is the recording's origin, its timestamps are not shifted):
    it must end at ``plan.duration``, its audio must run from 0 to there, and its video must
    hold every frame of the recording's, the first at its original time. Frames are counted in
    the output's packets or, when a long output was read in intervals, taken from the merge's
    ffmpeg (``frames_written``); not compared when the recording was read in intervals. The
    output's own origin is not used: the audio encoder's priming (Opus pre-skip, 6.5 to 13 ms
    before 0) lies before it. Tolerance: one encoded audio frame (AAC 1024 samples, Opus 20 ms) plus
    :data:`CONTAINER_ROUNDING_SECONDS`.
    """
    name = output.path.name
    if output.video is None:
        raise OutputRejected(f"{name}: output has no video stream")
    if output.audio is None:
        raise OutputRejected(f"{name}: output has no audio stream")
    if output.timeline is None or recording.timeline is None or recording.video is None:
        raise OutputRejected(f"{name}: no timeline to check")
    tolerance = container.audio_frame_seconds(plan.sample_rate) + CONTAINER_ROUNDING_SECONDS
    video = output.timeline.stream(output.video.index)
    audio = output.timeline.stream(output.audio.index)
    source = recording.timeline.relative(recording.video.index)
    if video is None or audio is None or source is None:
        raise OutputRejected(f"{name}: output has a stream without packets")
    for what, end in (("output", output.timeline.end), ("audio", audio.end)):
        if abs(end - plan.duration) > tolerance:
            raise OutputRejected(
                f"{name}: {what} ends at {end:.3f} s, the recording at {plan.duration:.3f} s "
                f"(more than {tolerance:.3f} s apart)"
            )
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


def _media_timeout(options: MergeOptions, duration: float) -> float:
    return options.timeout_base_seconds + options.timeout_per_media_second * duration


class _Progress:
    """Parses ``-progress`` lines; reports output seconds; logs every 30 s of wall time."""

    def __init__(self, total: float, callback: ProgressCallback | None) -> None:
        self.total = total
        self.callback = callback
        self.last_log = time.monotonic()
        self.frames: int | None = None  # video packets written so far (ffmpeg's frame=)

    def feed(self, line: str) -> None:
        key, _, value = line.partition("=")
        if key == "frame":
            self.frames = _int(value)
            return
        if key not in ("out_time_us", "out_time_ms"):  # both are microseconds
            return
        micros = _float(value)
        if micros is None:
            return
        seconds = max(0.0, micros / 1e6)
        if self.callback is not None:
            self.callback(seconds)
        now = time.monotonic()
        if now - self.last_log >= PROGRESS_LOG_INTERVAL_SECONDS:
            self.last_log = now
            log.info(
                "merge_progress",
                seconds_written=round(seconds, 1),
                total_seconds=round(self.total, 1),
                percent=round(100 * seconds / self.total, 1) if self.total else None,
            )


def _nonempty_file(path: Path) -> bool:
    # A local stat: fast enough not to need a worker thread.
    return path.is_file() and path.stat().st_size > 0


def _remove(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


async def _thumbnail(recording: MediaInfo, thumbnail: Path, options: MergeOptions) -> None:
    """Write the thumbnail; a very short or sparse video may have no frame after the seek
    point, so fall back to the first frame before giving up."""
    for at in (None, 0.0):
        await ffmpeg.run(
            build_thumbnail_args(recording, thumbnail, at=at),
            timeout=options.timeout_base_seconds,
            what="thumbnail",
        )
        if _nonempty_file(thumbnail):
            return
    FFMPEG_FAILURES.labels(reason="no_thumbnail").inc()
    raise MediaError("thumbnail: ffmpeg wrote no frame")


def check_output_path(recording: MediaInfo, output: Path) -> Container:
    """The container for the recording; :class:`UnsupportedMedia` if ``output`` cannot hold it."""
    if recording.video is None:
        raise NoVideoStream(f"{recording.path.name} has no video stream")
    container = container_for(recording.video.codec_name)
    suffix = output.suffix.lower().lstrip(".")
    if suffix != container.extension:
        raise UnsupportedMedia(
            f"output .{suffix or '(none)'} cannot hold {recording.video.codec_name} video; "
            f"use .{container.extension}"
        )
    return container


async def merge(
    request: MergeRequest, *, on_progress: ProgressCallback | None = None
) -> MergeResult:
    """The SPEC §5 merge of ``request``: one ffmpeg run, thumbnail, output check.

    Raises :class:`NoVideoStream`, :class:`NoAudioStream`, :class:`UnsupportedMedia`,
    :class:`MediaError`, :class:`OutputRejected`, :class:`worker.errors.MediaTimeout`,
    :class:`worker.errors.ScratchFull`. A failed or rejected output is deleted.
    """
    options = request.options
    recording = request.recording_info or await probe(
        request.recording, timeout=options.timeout_base_seconds
    )
    if recording.video is None:
        raise NoVideoStream(f"{request.recording.name} has no video stream")
    container = check_output_path(recording, request.output)
    connect = request.connect_info or await probe(
        request.connect_audio, timeout=options.timeout_base_seconds
    )
    if connect.audio is None:
        raise NoAudioStream(f"{request.connect_audio.name} has no audio stream")
    outputs = {request.output.absolute(), *(p.absolute() for p in [request.thumbnail] if p)}
    if outputs & {request.recording.absolute(), request.connect_audio.absolute()}:
        raise MediaError("an output path is also an input path")

    plan = plan_merge(recording, connect, request.call_end_seconds, options)
    if plan.call_end_clamped:
        CALL_END_CLAMPS.inc()
        log.warning(
            "call_end_clamped",
            call_end=request.call_end_seconds,
            media_duration=round(plan.duration, 3),
        )
    synced, gains = await measure_audio(recording, connect, plan, options)
    if synced.measured:
        # The measured placement drives END alignment (whole samples, as the timestamp did).
        plan = placed_plan(recording, connect, plan, synced, options)
        short = plan.call_end - plan.connect_end
        if short > 0:
            CONNECT_SHORT.labels(reason="early_stop").inc()
            log.warning(
                "connect_audio_short",
                reason="early_stop",
                call_end=round(plan.call_end, 3),
                connect_end=round(plan.connect_end, 3),
                missing_seconds=round(short, 3),
            )
    log.info(
        "merge_plan",
        align=options.align,
        sync_method=synced.method,
        media_duration=round(plan.duration, 3),
        call_end=round(plan.call_end, 3),
        connect_end=round(plan.connect_end, 3),
        drift_ppm=round(synced.drift_ppm, 2),
        connect_duration=round(plan.connect_duration, 3),
        connect_audio_offset=round(plan.offset, 3),
        container=container.extension,
        recording_audio=recording.audio is not None,
        recording_audio_seek=recording_seek_seconds(plan) if recording.audio else 0,
    )
    chapters = request.output.with_name(f".{request.output.name}.chapters")
    args = build_merge_args(
        recording=recording,
        connect=connect,
        plan=plan,
        output=request.output,
        options=options,
        chapters=chapters,
        gains=gains,
    )
    progress = _Progress(plan.duration, on_progress)
    started = time.monotonic()
    try:
        chapters.write_text(chapters_metadata(plan))
        await ffmpeg.run(
            args,
            timeout=_media_timeout(options, plan.duration),
            what="merge",
            on_stdout_line=progress.feed,
        )
        written = await probe(request.output, timeout=options.timeout_base_seconds)
        try:
            check_output(written, recording, plan, container, progress.frames)
        except OutputRejected:
            FFMPEG_FAILURES.labels(reason="output_rejected").inc()
            raise
        if request.thumbnail is not None:
            await _thumbnail(recording, request.thumbnail, options)
    except BaseException:
        # Never leave a partial or rejected file where a caller might upload it.
        # (Synchronous, so a cancellation cannot interrupt it.)
        _remove(request.output)
        _remove(request.thumbnail)
        raise
    finally:
        _remove(chapters)
    log.info(
        "merge_done",
        seconds=round(time.monotonic() - started, 3),
        output_duration=round(written.duration, 3),
        output_bytes=written.size_bytes,
    )
    if on_progress is not None:
        on_progress(plan.duration)
    return MergeResult(
        output=request.output,
        thumbnail=request.thumbnail,
        container=container,
        media_duration_seconds=plan.duration,
        call_end_seconds=plan.call_end,
        call_end_clamped=plan.call_end_clamped,
        connect_duration_seconds=plan.connect_duration,
        connect_audio_offset_seconds=plan.offset,
        sync=synced,
        loudness=gains,
    )


def sync_inputs(recording: MediaInfo, connect: MediaInfo, plan: MergePlan) -> sync.SyncInputs:
    """What :func:`worker.sync.measure` needs, from the probes and the timestamp's plan."""
    if connect.audio is None:
        raise NoAudioStream(f"{connect.path.name} has no audio stream")
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


async def measure_audio(
    recording: MediaInfo, connect: MediaInfo, plan: MergePlan, options: MergeOptions
) -> tuple[sync.SyncResult, loudness.LoudnessGains | None]:
    """The call-end sync (``align`` auto) and the loudness measurement, side by side.

    Both read short stretches next to the timestamp's call end (fast seeks), so their cost
    does not grow with the recording's length.
    """
    connect_audio = connect.audio
    if connect_audio is None:
        raise NoAudioStream(f"{connect.path.name} has no audio stream")
    result: dict[str, Any] = {"sync": sync.TIMESTAMP_ONLY, "gains": None}
    timeout = options.timeout_base_seconds
    audio = recording.audio

    async def measure_sync() -> None:
        inputs = sync_inputs(recording, connect, plan)
        result["sync"] = await sync.measure(inputs, timeout=timeout)

    async def measure_loudness(target: float) -> None:
        near = loudness.stretches_near(plan.call_end, plan.duration, plan.connect_duration)
        rate = [f"aresample={plan.sample_rate}"]  # measured in the output's band
        connect_stretch = loudness.Stretch(
            connect.path,
            connect_audio.index,
            *near[0],
            mix=[*_connect_mix(connect_audio.channels, plan.channels), *rate],
        )
        recording_stretch = None
        if audio is not None:
            recording_stretch = loudness.Stretch(
                recording.path,
                audio.index,
                *near[1],
                mix=[*_mic_mix(audio.channels, plan.channels), *rate],
            )
        result["gains"] = await loudness.measure_gains(
            connect_stretch, recording_stretch, target, timeout=timeout
        )

    async with anyio.create_task_group() as group:
        if options.align == "auto":
            group.start_soon(measure_sync)
        if options.loudness_target is not None:
            group.start_soon(measure_loudness, options.loudness_target)
    synced: sync.SyncResult = result["sync"]
    gains: loudness.LoudnessGains | None = result["gains"]
    return synced, gains
