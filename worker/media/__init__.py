"""The media engine (SPEC §5): probe, plan, one-pass merge, thumbnail, post-write check.

One concept per module, pure core first:

- :mod:`~worker.media.timeline`: the one definition of a file's timeline, read from its
  packets (:class:`Timeline`, :class:`TimelineScan`), and when a header can be believed.
- :mod:`~worker.media.model`: a probed file (:class:`MediaInfo`) and the merge's inputs
  validated once (:class:`Recording`: a video and a timeline; :class:`ConnectAudio`: an audio
  stream).
- :mod:`~worker.media.containers`: the output container for a video codec.
- :mod:`~worker.media.plan`: the call end clamped, the Connect audio placed
  (:class:`MergePlan`).
- :mod:`~worker.media.graph`: the audio ``-filter_complex`` graph.
- :mod:`~worker.media.video`, :mod:`~worker.media.chapters`, :mod:`~worker.media.commands`:
  the video track's timestamps, the chapters, the merge's command line.
- :mod:`~worker.media.check`: the output covers the recording's timeline exactly.
- :mod:`~worker.media.sync`, :mod:`~worker.media.loudness`: the call end and the levels,
  measured from the audio; :mod:`~worker.media.measure` runs both side by side.
- :mod:`~worker.media.probing`, :mod:`~worker.media.thumbnail`, :mod:`~worker.media.run`:
  the ffprobe/ffmpeg runs (every one through :mod:`worker.ffmpeg`, the only module that spawns
  a process) and :func:`merge`, which ties it all together.

Timeline: from the earliest timestamp of any stream (ffmpeg shifts every input so that it is
0) to the end of the last sample of any stream, audio or video. All durations and offsets are
on that shifted timeline, which is also where ``callEnd`` is measured from (the start of the
Komorebi recording). The output covers exactly that, on the same clock (its t=0 is the
recording's origin): every video frame stream-copied at its original time, the last one held
to the end, audio exactly as long. No timestamp in the file is negative: the Opus encoder's
priming is stored from 0 and declared as the WebM track's CodecDelay
(:func:`~worker.media.commands.encoder_timing_steps`), AAC's is an MP4 edit list.
"""

from worker.media.chapters import chapters_input_args, chapters_metadata
from worker.media.check import CONTAINER_ROUNDING_SECONDS, check_output
from worker.media.commands import build_merge_args
from worker.media.containers import (
    CODECS,
    MP4,
    WEBM,
    Container,
    check_output_path,
    container_for,
)
from worker.media.graph import build_audio_graph, loudness_steps
from worker.media.measure import measure_audio, sync_inputs
from worker.media.model import ConnectAudio, MediaInfo, ProbeHeader, Recording, StreamInfo
from worker.media.plan import (
    MergeOptions,
    MergePlan,
    plan_merge,
    recording_head_seconds,
    recording_seek_seconds,
)
from worker.media.probing import build_probe_args, build_timeline_args, parse_probe_json, probe
from worker.media.run import MergeRequest, MergeResult, ProgressCallback, merge, probe_inputs
from worker.media.thumbnail import build_thumbnail_args, thumbnail_time
from worker.media.timeline import (
    StreamSpan,
    Timeline,
    TimelineScan,
    header_duration_plausible,
    intervals_suffice,
    looks_truncated,
    scan_intervals,
)
from worker.media.video import hold_last_frame_args, timeline_offset_args

__all__ = [
    "CODECS",
    "CONTAINER_ROUNDING_SECONDS",
    "MP4",
    "WEBM",
    "ConnectAudio",
    "Container",
    "MediaInfo",
    "MergeOptions",
    "MergePlan",
    "MergeRequest",
    "MergeResult",
    "ProbeHeader",
    "ProgressCallback",
    "Recording",
    "StreamInfo",
    "StreamSpan",
    "Timeline",
    "TimelineScan",
    "build_audio_graph",
    "build_merge_args",
    "build_probe_args",
    "build_thumbnail_args",
    "build_timeline_args",
    "chapters_input_args",
    "chapters_metadata",
    "check_output",
    "check_output_path",
    "container_for",
    "header_duration_plausible",
    "hold_last_frame_args",
    "intervals_suffice",
    "looks_truncated",
    "loudness_steps",
    "measure_audio",
    "merge",
    "parse_probe_json",
    "plan_merge",
    "probe",
    "probe_inputs",
    "recording_head_seconds",
    "recording_seek_seconds",
    "scan_intervals",
    "sync_inputs",
    "thumbnail_time",
    "timeline_offset_args",
]
