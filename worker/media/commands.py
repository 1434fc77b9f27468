"""The merge's ffmpeg command line (pure): inputs, the audio graph, the video copy, the muxer."""

from __future__ import annotations

from pathlib import Path

from worker import ffmpeg_inputs as ffmpeg
from worker.media import loudness
from worker.media.chapters import chapters_input_args
from worker.media.containers import (
    MP4,
    OPUS_BANDS,
    OPUS_PRE_SKIP,
    OPUS_SAMPLE_RATE,
    Container,
    container_for,
)
from worker.media.graph import build_audio_graph
from worker.media.model import ConnectAudio, Recording
from worker.media.plan import (
    MergeOptions,
    MergePlan,
    recording_head_seconds,
    recording_seek_seconds,
)
from worker.media.video import hold_last_frame_args, timeline_offset_args

THUMBNAIL_AT_SECONDS = 1.0
# The merge's own run takes the thumbnail from this much of the recording after the thumbnail's
# time (:func:`thumbnail_input_args`): ffmpeg 5.1 decodes an input to its end (or ``-t``) even
# once the PNG has its frame, so the window bounds that decode to about a second of video.
THUMBNAIL_WINDOW_SECONDS = 1.0
# Recordings up to this long get the thumbnail from the merge's own run. Its third opening of
# the recording holds the file's index, which grows with the length: about 20 MB more in the
# merge's ffmpeg at 10 minutes (the job's peak unchanged, 155-157 MB), 27 MB at 60 (the
# merge's peak 166 -> 193 MB, past what a 200 MB job allows). Longer ones take it in a run
# of its own after the merge, as before: there a process start is under 1% of the merge.
THUMBNAIL_IN_MERGE_MAX_SECONDS = 20 * 60.0


def base_args() -> list[str]:
    """How every ffmpeg run of ours starts: no stdin, no banner, errors only."""
    return [ffmpeg.FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"]


def thumbnail_time(duration: float) -> float:
    """Where the thumbnail is taken: min(1 s, duration/2)."""
    return max(0.0, min(THUMBNAIL_AT_SECONDS, duration / 2))


def thumbnail_in_merge(duration: float) -> bool:
    """Whether the merge's own run writes the thumbnail of a recording of ``duration``
    seconds (:data:`THUMBNAIL_IN_MERGE_MAX_SECONDS`)."""
    return duration <= THUMBNAIL_IN_MERGE_MAX_SECONDS


def thumbnail_input_args(recording: Recording, *, window: float | None) -> list[str]:
    """The recording as the merge's thumbnail input (pure): fast-seeked (``-ss`` before ``-i``:
    a container seek, nothing decoded before the key frame) to :func:`thumbnail_time`, read for
    ``window`` seconds after it (``-t``; all of it when None), decoded on one thread (one
    frame is wanted: frame threads would only add their buffers to the merge's memory)."""
    args = ["-ss", f"{thumbnail_time(recording.duration):.3f}"]
    if window is not None:
        args += ["-t", f"{window:.3f}"]
    return [*args, "-threads", "1", *ffmpeg.input_args(recording.path)]


def thumbnail_output_args(input_index: int, video_index: int, thumbnail: Path) -> list[str]:
    """One PNG frame of input ``input_index``'s stream ``video_index``, written to
    ``thumbnail`` (pure); nothing is written when that input has no frame."""
    args = ["-map", f"{input_index}:{video_index}", "-frames:v", "1", "-an", "-sn", "-dn"]
    return [*args, "-c:v", "png", "-f", "image2", "-update", "1", "-y", ffmpeg.file_url(thumbnail)]


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
    thumbnail: Path | None = None,
) -> list[str]:
    """The complete ffmpeg command line of the one-pass merge (pure).

    ``chapters``: an FFMETADATA file (:func:`~worker.media.chapters.chapters_metadata`) whose
    chapters the output gets; without it the output has none (the recording's own are never
    copied). ``gains``: the loudness stage (:func:`~worker.media.graph.loudness_steps`).
    ``thumbnail``: a second output, the PNG of the first frame in the
    :data:`THUMBNAIL_WINDOW_SECONDS` after :func:`thumbnail_time` (from a last input,
    :func:`thumbnail_input_args`): no process of its own (each costs a job about 0.1 s of CPU
    to start, issue 18); when that window has no frame nothing is written, and the caller
    takes it on its own (:func:`worker.media.thumbnail.write_thumbnail`).
    """
    container = container_for(recording.video.codec_name)
    has_audio = recording.audio is not None
    seek = recording_seek_seconds(plan) if has_audio else 0
    head = recording_head_seconds(plan) if has_audio else 0
    head_input = 2 + bool(seek)  # inputs: see _input_args
    graph = build_audio_graph(
        plan,
        align=options.align,
        recording_audio=recording.audio,
        connect_audio=connect.audio,
        recording_input=2 if seek else 0,
        connect_input=1,
        recording_seek=seek,
        head_input=head_input if head else None,
        gains=gains,
        encoder_steps=encoder_timing_steps(container),
    )
    args = base_args()
    if progress:
        args += ["-nostats", "-progress", "pipe:1", "-stats_period", "1"]
    args += _input_args(recording, connect, seek=seek, head=head, chapters=chapters)
    if thumbnail is not None:
        args += thumbnail_input_args(recording, window=THUMBNAIL_WINDOW_SECONDS)
    args += ["-filter_complex", graph]
    args += ["-map", f"0:{recording.video.index}", "-map", "[aout]"]
    args += ["-c:v", "copy", *hold_last_frame_args(recording, plan, container)]
    args += ["-c:a", container.audio_codec, "-b:a", options.audio.bitrate]
    args += [*audio_rate_args(container, plan.sample_rate), "-ac", str(plan.channels)]
    args += ["-map_chapters", str(head_input + bool(head)) if chapters is not None else "-1"]
    args += ["-dn", "-sn", *_muxer_args(container), "-y", ffmpeg.file_url(output)]
    if thumbnail is not None:
        inputs = head_input + bool(head) + (chapters is not None)  # the thumbnail's is last
        args += thumbnail_output_args(inputs, recording.video.index, thumbnail)
    return args


def _muxer_args(container: Container) -> list[str]:
    """The output's muxer and its options (pure)."""
    if container is MP4:
        return ["-movflags", "+faststart", "-f", container.muxer]
    # No negative timestamp in the file: Chromium fails to decode after a seek in a WebM
    # whose Opus blocks start before 0 (issue 19). None arrives here (the video starts
    # at or after the origin, the Opus priming at 0: encoder_timing_steps), so nothing
    # is shifted; should one, every stream moves alike (and the output check sees it).
    return ["-avoid_negative_ts", "make_non_negative", "-f", container.muxer]


def _input_args(
    recording: Recording, connect: ConnectAudio, *, seek: int, head: int, chapters: Path | None
) -> list[str]:
    """The merge's inputs, in order (pure).

    Input 0: the recording (video, stream-copied; its audio when not seeked). Input 1: the
    Connect audio. Next, only when ``seek``: the recording again, fast-seeked (``-ss`` before
    ``-i``: a container seek, nothing decoded before it), feeding only ``[rec]``. Next, only
    when ``head`` (the microphone plays before the Connect audio): the recording again, read
    for its first ``head`` seconds only (``-t`` before ``-i``), feeding only ``[head]``.
    Last, ``chapters``.
    """
    origin = timeline_offset_args(recording)
    args = [*origin, *ffmpeg.input_args(recording.path)]
    args += ffmpeg.input_args(connect.path)
    if seek:
        args += ["-ss", str(seek), *origin, *ffmpeg.input_args(recording.path)]
    if head:
        args += ["-t", str(head), *origin, *ffmpeg.input_args(recording.path)]
    if chapters is not None:
        args += chapters_input_args(chapters)
    return args


def encoder_timing_steps(container: Container) -> tuple[str, ...]:
    """The last filter of the audio graph for ``container``'s encoder (pure): for Opus, its
    timestamps start at the encoder's priming (pre-skip), so that the priming starts at 0.

    An Opus encoder emits :data:`OPUS_PRE_SKIP` priming samples before the first real one,
    stamped before it: with audio from t=0, packets from -6.5 ms. WebM keeps block times at or
    after 0 and says how much of the start is priming in the track's CodecDelay, which every
    reader subtracts from the block times (Matroska's definition; ffmpeg's demuxer does, and
    the decoder drops the pre-skip): stamped 6.5 ms later here, the priming is stored from 0
    and the first real sample still plays at t=0, beside the untouched video. Without it the
    file starts with negative block times (Chromium: PIPELINE_ERROR_DECODE after a seek), or,
    when the muxer shifts them away, every stream moves 7 ms off its original time.
    AAC in MP4 needs nothing: its priming is an edit list. Requires the encoder at 48 kHz
    (:func:`audio_rate_args`).
    """
    if container.audio_codec != "libopus":
        return ()
    # In the graph's time base, whatever it is (TB), rounded to a whole tick.
    return (f"asetpts=PTS+round({OPUS_PRE_SKIP}/({OPUS_SAMPLE_RATE}*TB))",)


def audio_rate_args(container: Container, sample_rate: int) -> list[str]:
    """The audio encoder's sample rate (and for Opus its band) for ``sample_rate`` (pure).

    AAC is encoded at ``sample_rate``. Opus codes 48 kHz inside whatever its input (RFC 7845:
    decoders output 48 kHz) and is given 48 kHz, because ffmpeg 5.1's WebM muxer reads the
    encoder's priming as 48 kHz samples for the track's CodecDelay: at 16 kHz it would store
    2.2 ms instead of 6.5 ms, and readers would put the audio 4.3 ms late (see
    :func:`encoder_timing_steps`). ``-cutoff`` keeps the coded band that of ``sample_rate``
    (Opus' bandwidths: 4, 6, 8, 12, 20 kHz), as the encoder had at that rate.
    """
    if container.audio_codec != "libopus":
        return ["-ar", str(sample_rate)]
    band = max((b for b in OPUS_BANDS if b <= sample_rate // 2), default=OPUS_BANDS[0])
    return ["-ar", str(OPUS_SAMPLE_RATE), "-cutoff", str(band)]
