"""The pure argument builders of worker.media: no ffmpeg is run here."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest

from tests.harness.media_models import connect, recording, stream
from worker import media
from worker.config import AudioSettings
from worker.errors import MediaError, NoAudioStream, NoVideoStream, OutputRejected, UnsupportedMedia
from worker.ffmpeg import FORMAT_WHITELIST, PROTOCOL_WHITELIST, StderrTail, classify
from worker.media import run as media_run


def build(
    rec: media.Recording,
    conn: media.ConnectAudio,
    call_end: float,
    *,
    align: str = "end",
    audio: AudioSettings | None = None,
    output: str = "/out/recording.webm",
) -> tuple[list[str], media.MergePlan]:
    options = media.MergeOptions(align=align, audio=audio or AudioSettings())  # type: ignore[arg-type]
    plan = media.plan_merge(rec, conn, call_end, options)
    args = media.build_merge_args(
        recording=rec, connect=conn, plan=plan, output=Path(output), options=options
    )
    return args, plan


# The last step of a WebM output's audio graph: the Opus priming stamped from 0.
OPUS_STAMP = ",asetpts=PTS+round(312/(48000*TB))"


def graph_of(args: list[str]) -> str:
    return args[args.index("-filter_complex") + 1]


def value_after(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


@pytest.mark.parametrize(
    ("codec", "ext", "content_type", "audio_codec"),
    [
        ("h264", "mp4", "video/mp4", "aac"),
        ("hevc", "mp4", "video/mp4", "aac"),
        ("vp8", "webm", "video/webm", "libopus"),
        ("vp9", "webm", "video/webm", "libopus"),
        ("av1", "webm", "video/webm", "libopus"),
    ],
)
def test_container_for(codec: str, ext: str, content_type: str, audio_codec: str) -> None:
    container = media.container_for(codec)
    assert (container.extension, container.content_type, container.audio_codec) == (
        ext,
        content_type,
        audio_codec,
    )


@pytest.mark.parametrize("codec", ["mpeg4", "mjpeg", "theora", "prores", ""])
def test_container_for_refuses_other_codecs(codec: str) -> None:
    with pytest.raises(UnsupportedMedia):
        media.container_for(codec)


@pytest.mark.parametrize(("call_end", "n_inputs"), [(4.0, 2), (6.0, 3)])
def test_every_input_has_the_allow_lists_and_file_prefix(call_end: float, n_inputs: int) -> None:
    args, _ = build(recording(), connect(), call_end)
    inputs = [i for i, a in enumerate(args) if a == "-i"]
    assert len(inputs) == n_inputs
    for i in inputs:
        assert args[i - 4 : i] == [
            "-format_whitelist",
            FORMAT_WHITELIST,
            "-protocol_whitelist",
            PROTOCOL_WHITELIST,
        ]
        assert args[i + 1].startswith("file:/")
    assert set(FORMAT_WHITELIST.split(",")) == {
        "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "wav"
    }  # fmt: skip
    assert PROTOCOL_WHITELIST == "file,pipe"
    assert args[:2] == ["ffmpeg", "-nostdin"]
    assert "-hide_banner" in args
    # -y appears once, right before our own output.
    assert args.count("-y") == 1
    assert args[-2:] == ["-y", "file:/out/recording.webm"]


def test_path_that_looks_like_a_url_stays_a_file() -> None:
    rec = recording()
    rec = replace(rec, path=Path("http:evil.webm"))
    args, _ = build(rec, connect(), 6.0)
    first_input = args[args.index("-i") + 1]
    assert first_input.startswith("file:/") and first_input.endswith("/http:evil.webm")


def test_video_is_stream_copied_and_mapped_by_index() -> None:
    args, _ = build(recording(), connect(), 6.0)
    assert value_after(args, "-c:v") == ["copy"]
    assert value_after(args, "-map") == ["0:0", "[aout]"]
    assert "-vf" not in args and "-r" not in args


def test_mp4_output_has_aac_and_faststart() -> None:
    args, _ = build(recording("h264"), connect(), 6.0, output="/out/recording.mp4")
    assert value_after(args, "-c:a") == ["aac"]
    assert value_after(args, "-movflags") == ["+faststart"]
    assert value_after(args, "-f") == ["mp4"]


def test_webm_output_has_opus_no_faststart() -> None:
    args, _ = build(recording("vp9"), connect(), 6.0)
    assert value_after(args, "-c:a") == ["libopus"]
    assert "-movflags" not in args
    assert value_after(args, "-f") == ["webm"]


def test_audio_settings_reach_the_encoder() -> None:
    audio = AudioSettings(channels=2, sample_rate=48000, bitrate="64k")
    args, _ = build(recording(), connect(), 6.0, audio=audio)
    assert value_after(args, "-b:a") == ["64k"]
    assert value_after(args, "-ar") == ["48000"]
    assert value_after(args, "-ac") == ["2"]
    assert value_after(args, "-cutoff") == ["20000"]  # Opus' full band


@pytest.mark.parametrize(("rate", "cutoff"), [(8000, 4000), (16000, 8000), (24000, 12000)])
def test_opus_is_encoded_at_48_khz_in_the_band_of_the_configured_rate(
    rate: int, cutoff: int
) -> None:
    # ffmpeg 5.1's WebM muxer stores the Opus priming as the track's CodecDelay right only
    # when the encoder runs at 48 kHz; the band stays what the configured rate carries.
    audio = AudioSettings(sample_rate=rate)
    args, plan = build(recording(), connect(), 6.0, audio=audio)
    assert plan.sample_rate == rate  # the graph still counts samples at the configured rate
    assert value_after(args, "-ar") == ["48000"]
    assert value_after(args, "-cutoff") == [str(cutoff)]
    args, _ = build(recording("h264"), connect(), 6.0, audio=audio, output="/out/recording.mp4")
    assert value_after(args, "-ar") == [str(rate)]  # AAC: the configured rate itself
    assert "-cutoff" not in args


def test_webm_opus_priming_is_stamped_from_zero_and_nothing_is_negative() -> None:
    args, _ = build(recording("vp9"), connect(), 8.0)
    graph = value_after(args, "-filter_complex")[0]
    # The last step before the encoder moves the audio's timestamps by the Opus pre-skip
    # (312 samples at 48 kHz, 6.5 ms) so that its priming starts at 0 (WebM's CodecDelay
    # puts the first sample back at 0); the muxer then shifts nothing.
    assert graph.endswith(f"{OPUS_STAMP}[aout]")
    assert OPUS_STAMP == ",asetpts=PTS+round(312/(48000*TB))"
    assert value_after(args, "-avoid_negative_ts") == ["make_non_negative"]
    mp4, _ = build(recording("h264"), connect(), 8.0, output="/out/recording.mp4")
    assert "asetpts=PTS+round" not in value_after(mp4, "-filter_complex")[0]
    assert "-avoid_negative_ts" not in mp4  # AAC's priming is an MP4 edit list


def test_end_alignment_connect_shorter_pads_with_silence() -> None:
    args, plan = build(recording(duration=8.0), connect(5.0), 6.0)
    assert plan.offset == pytest.approx(1.0)
    assert (plan.total_samples, plan.call_end_samples, plan.offset_samples) == (
        128000,
        96000,
        16000,
    )
    graph = graph_of(args)
    conn, rec, join = chains(graph)
    assert conn.startswith("[1:0]pan=mono|c0=0.5*c0+0.5*c1,aresample=16000:async=1:first_pts=0")
    assert "aformat=sample_fmts=fltp:sample_rates=16000:channel_layouts=mono" in conn
    assert "adelay=delays=16000S:all=1" in conn
    assert "atrim=start_sample" not in conn
    assert conn.endswith("apad=whole_len=96000,atrim=end_sample=96000[conn]")
    # callEnd 6 s > 5 s: the recording's audio comes from input 2, seeked to 4 s, so the cut
    # is (6 - 4) s = 32000 samples into it.
    assert rec.startswith("[2:1]pan=mono|c0=0.5*c0+0.5*c1,aresample=16000:async=1:first_pts=0")
    assert (
        "atrim=start_sample=32000,asetpts=PTS-STARTPTS,apad=whole_len=32000,"
        "atrim=end_sample=32000[rec]" in rec
    )
    assert join == f"[conn][rec]concat=n=2:v=0:a=1{OPUS_STAMP}[aout]"


def test_end_alignment_connect_longer_cuts_its_head() -> None:
    args, plan = build(recording(duration=8.0), connect(5.0), 3.0)
    assert plan.offset == pytest.approx(-2.0)
    conn = chains(graph_of(args))[0]
    assert "atrim=start_sample=32000,asetpts=PTS-STARTPTS" in conn
    assert "adelay" not in conn
    assert conn.endswith("apad=whole_len=48000,atrim=end_sample=48000[conn]")


def test_end_alignment_exact_fit_needs_neither() -> None:
    args, plan = build(recording(duration=8.0), connect(5.0), 5.0)
    conn = chains(graph_of(args))[0]
    assert plan.offset_samples == 0
    assert "adelay" not in conn and "atrim=start_sample" not in conn


def test_start_alignment_ignores_the_offset() -> None:
    args, plan = build(recording(duration=8.0), connect(5.0), 3.0, align="start")
    conn = chains(graph_of(args))[0]
    assert plan.offset == pytest.approx(-2.0)  # still reported
    assert "adelay" not in conn and "atrim=start_sample" not in conn
    assert conn.endswith("apad=whole_len=48000,atrim=end_sample=48000[conn]")
    args, _ = build(recording(duration=8.0), connect(2.0), 3.0, align="start")
    conn = chains(graph_of(args))[0]
    assert "adelay" not in conn
    assert conn.endswith("apad=whole_len=48000,atrim=end_sample=48000[conn]")


def test_recording_without_audio_uses_generated_silence() -> None:
    args, _ = build(recording(audio=False), connect(), 6.0)
    graph = graph_of(args)
    assert "[0:" not in graph
    rec = chains(graph)[1]
    assert rec.startswith("anullsrc=r=16000:cl=mono,")
    assert rec.endswith("atrim=end_sample=32000[rec]")


def test_stereo_output_keeps_sides_and_centres_the_mic() -> None:
    audio = AudioSettings(channels=2, sample_rate=48000)
    args, _ = build(recording(), connect(), 4.0, audio=audio)
    conn, rec, _join = chains(graph_of(args))
    assert conn.startswith("[1:0]pan=stereo|c0=c0|c1=c1,")
    assert "channel_layouts=stereo" in conn
    assert rec.startswith("[0:1]pan=stereo|c0=0.5*c0+0.5*c1|c1=0.5*c0+0.5*c1,")


def test_mono_connect_into_stereo_output_is_duplicated() -> None:
    audio = AudioSettings(channels=2, sample_rate=48000)
    args, _ = build(recording(audio_channels=1), connect(channels=1), 4.0, audio=audio)
    conn, rec, _ = chains(graph_of(args))
    assert conn.startswith("[1:0]pan=stereo|c0=c0|c1=c0,")
    assert rec.startswith("[0:1]pan=stereo|c0=c0|c1=c0,")


def test_call_end_zero_is_only_the_recording() -> None:
    args, _plan = build(recording(), connect(), 0.0)
    graph = graph_of(args)
    assert "[conn]" not in graph and "concat" not in graph
    assert graph.endswith(f"[rec]anull{OPUS_STAMP}[aout]")
    assert "atrim=start_sample=0," in graph


def test_call_end_beyond_the_end_is_clamped() -> None:
    args, plan = build(recording(duration=8.0), connect(5.0), 20.0)
    assert plan.call_end_clamped and plan.call_end == 8.0
    assert plan.offset == pytest.approx(3.0)
    graph = graph_of(args)
    assert "[rec]" not in graph.replace(f"[conn]anull{OPUS_STAMP}[aout]", "")
    assert graph.endswith(f"[conn]anull{OPUS_STAMP}[aout]")
    assert "apad=whole_len=128000,atrim=end_sample=128000[conn]" in graph


def input_options(args: list[str]) -> list[list[str]]:
    """Each input's own options (everything after the previous input's path) and its path."""
    groups: list[list[str]] = []
    start = args.index("-nostdin") + 1
    for i, a in enumerate(args):
        if a == "-i":
            groups.append(args[start : i + 2])
            start = i + 2
    return groups


def test_long_call_end_reads_recording_audio_from_a_fast_seeked_second_input() -> None:
    rec = recording("h264", duration=3600.0)
    args, plan = build(rec, connect(600.0), 2700.0, output="/out/recording.mp4")
    assert media.recording_seek_seconds(plan) == 2698
    first, second, third = input_options(args)
    assert first[-1] == third[-1] == "file:/in/rec.webm"
    assert second[-1] == "file:/in/connect.wav"
    assert "-ss" not in first and "-ss" not in second
    # -ss before -i (a container seek), then the same allow-lists as every input.
    assert third[-8:] == [
        "-ss", "2698",
        "-format_whitelist", FORMAT_WHITELIST,
        "-protocol_whitelist", PROTOCOL_WHITELIST,
        "-i", "file:/in/rec.webm",
    ]  # fmt: skip
    # Video still from input 0 (stream copy); the seeked input only feeds [rec].
    assert value_after(args, "-map") == ["0:0", "[aout]"]
    assert value_after(args, "-c:v") == ["copy"]
    conn, rec_chain, join = chains(graph_of(args))
    assert conn.startswith("[1:0]")
    assert rec_chain.startswith("[2:1]")
    assert "[0:" not in graph_of(args)  # input 0's audio is never decoded
    # The cut counts from the seek point: (2700 - 2698) s at 16 kHz.
    assert plan.call_end_samples == 2700 * 16000
    assert "atrim=start_sample=32000,asetpts=PTS-STARTPTS" in rec_chain
    assert rec_chain.endswith(f"apad=whole_len={900 * 16000},atrim=end_sample={900 * 16000}[rec]")
    assert join == "[conn][rec]concat=n=2:v=0:a=1[aout]"  # MP4: no Opus stamp


def test_seek_cut_is_whole_samples_at_44_1_khz() -> None:
    audio = AudioSettings(channels=1, sample_rate=44100)
    args, plan = build(recording(duration=20.0), connect(), 10.5, audio=audio)
    assert media.recording_seek_seconds(plan) == 8
    rec_chain = chains(graph_of(args))[1]
    assert f"atrim=start_sample={round(10.5 * 44100) - 8 * 44100}," in rec_chain


@pytest.mark.parametrize(
    ("call_end", "seek"),
    [(0.0, 0), (3.0, 0), (5.0, 0), (5.5, 3), (6.0, 4), (7.99, 5)],
)
def test_recording_seek_point(call_end: float, seek: int) -> None:
    _, plan = build(recording(duration=8.0), connect(), call_end)
    assert media.recording_seek_seconds(plan) == seek


@pytest.mark.parametrize("call_end", [0.0, 4.0, 5.0])
def test_short_call_end_has_no_third_input(call_end: float) -> None:
    args, plan = build(recording(duration=8.0), connect(), call_end)
    assert len(input_options(args)) == 2
    assert "-ss" not in args
    graph = graph_of(args)
    assert "[2:" not in graph
    rec_chain = chains(graph)[-2 if call_end else 0]
    assert rec_chain.startswith("[0:1]")
    assert f"atrim=start_sample={plan.call_end_samples}," in rec_chain


def test_no_seeked_input_when_nothing_needs_the_recording_audio() -> None:
    # No microphone: silence is generated. callEnd at (or past) the end: no tail at all.
    for rec, call_end in [(recording(audio=False), 7.0), (recording(duration=8.0), 20.0)]:
        args, _ = build(rec, connect(), call_end)
        assert len(input_options(args)) == 2
        assert "-ss" not in args


def test_audio_graph_refuses_a_seek_past_the_call_end() -> None:
    options = media.MergeOptions()
    plan = media.plan_merge(recording(), connect(), 6.0, options)
    rec_audio, conn_audio = recording().audio, connect().audio
    assert rec_audio is not None and conn_audio is not None
    with pytest.raises(ValueError):
        media.build_audio_graph(
            plan,
            align="end",
            recording_audio=rec_audio,
            connect_audio=conn_audio,
            recording_seek=7,
        )


def test_plan_rejects_negative_call_end() -> None:
    with pytest.raises(ValueError):
        media.plan_merge(recording(), connect(), -1.0, media.MergeOptions())


def test_missing_streams() -> None:
    # The inputs are validated once, into types that hold what the merge needs.
    no_video = media.MediaInfo(Path("/a.webm"), "matroska,webm", 8.0, None, None)
    with pytest.raises(NoVideoStream, match=r"a\.webm has no video stream"):
        media.Recording.of(no_video)
    with pytest.raises(NoVideoStream, match="recording r1 has no video stream"):
        media.Recording.of(no_video, name="recording r1")
    silent = media.MediaInfo(Path("/c.wav"), "wav", 5.0, None, None)
    with pytest.raises(NoAudioStream, match=r"c\.wav has no audio stream"):
        media.ConnectAudio.of(silent)
    # A recording must have been probed: its timeline is what the merge covers.
    unprobed = media.MediaInfo(Path("/a.webm"), "matroska,webm", 8.0, recording().video, None)
    with pytest.raises(MediaError, match="no timeline"):
        media.Recording.of(unprobed)
    rec = recording()
    info = media.MediaInfo(
        rec.path, "matroska,webm", 8.0, rec.video, rec.audio, 0.5, 9, rec.timeline
    )
    assert media.Recording.of(info) == replace(rec, start_time=0.5)


def test_output_path_must_fit_the_codec() -> None:
    assert media.check_output_path(recording("vp8"), Path("/o/x.webm")).extension == "webm"
    with pytest.raises(UnsupportedMedia, match=r"use \.webm"):
        media.check_output_path(recording("vp8"), Path("/o/x.mp4"))
    with pytest.raises(UnsupportedMedia, match=r"use \.mp4"):
        media.check_output_path(recording("h264"), Path("/o/x.webm"))


@pytest.mark.parametrize(("duration", "at"), [(8.0, "1.000"), (1.0, "0.500"), (0.2, "0.100")])
def test_thumbnail_fast_seek(duration: float, at: str) -> None:
    args = media.build_thumbnail_args(recording(duration=duration), Path("/out/t.png"))
    assert args.index("-ss") < args.index("-i")  # input seek: no decoding up to the frame
    assert value_after(args, "-ss") == [at]
    assert value_after(args, "-frames:v") == ["1"]
    assert value_after(args, "-c:v") == ["png"]
    i = args.index("-i")
    assert args[i - 4 : i] == [
        "-format_whitelist",
        FORMAT_WHITELIST,
        "-protocol_whitelist",
        PROTOCOL_WHITELIST,
    ]
    assert args[-2:] == ["-y", "file:/out/t.png"]


def test_probe_args_have_the_allow_lists() -> None:
    for args in (
        media.build_probe_args(Path("/in/x.mp4")),
        media.build_timeline_args(Path("/in/x.mp4")),
    ):
        assert args[0] == "ffprobe"
        i = args.index("-i")
        assert args[i - 4 : i] == [
            "-format_whitelist",
            FORMAT_WHITELIST,
            "-protocol_whitelist",
            PROTOCOL_WHITELIST,
        ]
        assert args[i + 1] == "file:/in/x.mp4"


@pytest.mark.parametrize(
    ("duration", "size", "plausible"),
    [
        (None, 10**6, False),
        (0.0, 10**6, False),
        (8.0, 400_000, True),
        (3 * 3600.0, 400_000, False),  # "hours" on a tiny file
        (3600.0, 50_000_000, True),
        (8 * 24 * 3600.0, 10**12, False),
    ],
)
def test_header_duration_plausibility(duration: float | None, size: int, plausible: bool) -> None:
    assert media.header_duration_plausible(duration, size) is plausible


@pytest.mark.parametrize(
    ("header", "timeline", "size", "truncated"),
    [
        (3.364, 2.247, 130_000, True),  # a cut fragmented MP4
        (11.966, 11.945, 207_000, False),  # the header counts the last frame's duration
        (11.9, 11.972, 283_000, False),  # the header is shorter: nothing missing
        (0.0, 8.0, 400_000, False),  # no header duration (MediaRecorder WebM)
        (3 * 3600.0, 2.0, 60_000, False),  # an implausible header: the packets win
        (3600.0, 3400.0, 10**9, True),  # 200 s of an hour missing (over 1 s and 5 %)
        (3600.0, 3590.0, 10**9, False),  # 10 s: under 5 %
    ],
)
def test_truncation(header: float, timeline: float, size: int, truncated: bool) -> None:
    assert media.looks_truncated(header, timeline, size) is truncated


def scan(lines: list[str], rates: dict[int, int | None]) -> media.Timeline:
    scanner = media.TimelineScan(rates)
    for line in lines:
        scanner.feed(line)
    timeline = scanner.timeline()
    assert timeline is not None
    return timeline


def test_timeline_is_first_sample_to_end_of_last_sample_of_any_stream() -> None:
    # A static screen: the last frame at 6.986 s, the microphone on to 11.974 s.
    timeline = scan(
        [
            "stream_index=0|pts_time=0.030000|dts_time=0.030000|duration_time=N/A|flags=K_|",
            "",
            "stream_index=1|pts_time=0.000000|dts_time=0.000000|duration_time=0.033000|flags=K_",
            "stream_index=1|pts_time=6.986000|dts_time=6.986000|duration_time=0.001000|flags=__",
            "stream_index=0|pts_time=11.914000|dts_time=11.914000|duration_time=0.060000|flags=K_",
            "stream_index=1|pts_time=N/A|dts_time=3.000000|duration_time=0.033000|flags=__",
            "stream_index=2|pts_time=-5.0|duration_time=99|flags=K_",  # not a stream we use
            "garbage",
        ],
        {0: 48000, 1: None},
    )
    assert timeline.origin == 0.0
    assert timeline.end == pytest.approx(11.974)
    assert timeline.duration == pytest.approx(11.974)
    audio, video = timeline.stream(0), timeline.stream(1)
    assert audio is not None and video is not None
    assert (audio.start, audio.packets) == (pytest.approx(0.03), 2)
    assert (video.start, video.end, video.last, video.packets) == (
        0.0,
        pytest.approx(6.987),
        6.986,
        3,
    )
    assert timeline.stream(2) is None


def test_timeline_origin_is_the_earliest_stream_and_relative_spans_use_it() -> None:
    # Firefox: the audio starts 1 ms before the video.
    timeline = scan(
        [
            "stream_index=0|pts_time=0.000000|duration_time=0.008000|flags=K_",
            "stream_index=1|pts_time=-0.001000|duration_time=0.020000|flags=K_",
            "stream_index=0|pts_time=10.057000|duration_time=0.008000|flags=__",
            "stream_index=1|pts_time=9.939000|duration_time=0.020000|flags=K_",
        ],
        {0: None, 1: 48000},
    )
    assert timeline.origin == -0.001
    assert timeline.duration == pytest.approx(10.066)
    video = timeline.relative(0)
    assert video is not None
    assert (video.start, video.end, video.last) == (
        pytest.approx(0.001),
        pytest.approx(10.066),
        pytest.approx(10.058),
    )


def test_timeline_skips_priming_the_demuxer_discards_and_samples_it_trims() -> None:
    timeline = scan(
        [
            # MP4 AAC priming (edit list): a discarded packet before 0.
            "stream_index=1|pts_time=-0.021333|duration_time=0.021333|flags=KD|",
            # Opus in MP4: 312 samples of pre-skip in the first packet.
            "stream_index=2|pts_time=-0.006500|duration_time=0.020000|flags=K_|skip_samples=312",
            "stream_index=0|pts_time=0.000000|duration_time=0.066667|flags=K_",
            "stream_index=1|pts_time=0.000000|duration_time=0.021333|flags=K_",
            # WebM DiscardPadding: the last packet's last 480 samples are not played.
            "stream_index=2|pts_time=3.993500|duration_time=0.020000|flags=K_|discard_padding=480",
        ],
        {0: None, 1: 48000, 2: 48000},
    )
    assert timeline.origin == 0.0
    aac, opus = timeline.stream(1), timeline.stream(2)
    assert aac is not None and opus is not None
    assert (aac.packets, aac.discarded) == (1, 1)
    assert opus.start == pytest.approx(0.0)
    assert opus.end == pytest.approx(4.0035)


def test_timeline_scan_without_packets_is_none() -> None:
    scanner = media.TimelineScan({0: None})
    scanner.feed("stream_index=0|pts_time=N/A|dts_time=N/A|duration_time=N/A|flags=K_")
    assert scanner.timeline() is None


def span(index: int, start: float, end: float, last: float, packets: int) -> media.StreamSpan:
    return media.StreamSpan(index, start, end, last, packets)


def probed(
    path: str,
    video_span: media.StreamSpan,
    audio_span: media.StreamSpan | None,
    *,
    time_base: str = "1/1000",
) -> media.MediaInfo:
    from fractions import Fraction

    spans = tuple(s for s in (video_span, audio_span) if s is not None)
    timeline = media.Timeline(spans)
    video = replace(stream(video_span.index, "video", "vp8"), time_base=Fraction(time_base))
    audio = stream(audio_span.index, "audio", "opus") if audio_span else None
    return media.MediaInfo(
        Path(path), "matroska,webm", timeline.duration, video, audio, timeline=timeline
    )


STATIC_END = media.Recording.of(
    probed("/in/rec.webm", span(1, 0.0, 6.987, 6.986, 210), span(0, 0.03, 11.974, 11.914, 199))
)


def check(out: media.MediaInfo, container: media.Container = media.WEBM) -> None:
    options = media.MergeOptions()
    plan = media.plan_merge(STATIC_END, connect(5.0), 6.0, options)
    media.check_output(out, STATIC_END, plan, container)


def test_output_check_accepts_the_whole_timeline() -> None:
    assert media.plan_merge(STATIC_END, connect(), 6.0, media.MergeOptions()).duration == (
        pytest.approx(11.974)
    )
    # The output's Opus starts 8 ms early (encoder pre-skip); the video holds to the end.
    check(
        probed("/o/x.webm", span(0, 0.0, 11.974, 6.986, 210), span(1, -0.008, 11.972, 11.95, 600))
    )


@pytest.mark.parametrize(
    ("video", "audio", "reason"),
    [
        # The old bug: the output cut at the last frame, the ACW audio after it lost.
        (span(0, 0.0, 6.987, 6.986, 210), span(1, 0.0, 6.987, 6.96, 350), "ends at 6.987 s"),
        # A frame lost in the copy.
        (span(0, 0.0, 11.974, 6.986, 209), span(1, 0.0, 11.974, 11.95, 600), "209 video frames"),
        # Video moved off its original time.
        (span(0, 0.5, 11.974, 6.986, 210), span(1, 0.0, 11.974, 11.95, 600), "video starts"),
        # Audio short of the end.
        (span(0, 0.0, 11.974, 6.986, 210), span(1, 0.0, 11.9, 11.88, 595), "audio ends"),
        # Audio shifted late (its start after the first frame).
        (span(0, 0.0, 11.974, 6.986, 210), span(1, 0.05, 11.974, 11.95, 600), "audio starts"),
    ],
)
def test_output_check_rejects(
    video: media.StreamSpan, audio: media.StreamSpan, reason: str
) -> None:
    with pytest.raises(OutputRejected, match=reason):
        check(probed("/o/x.webm", video, audio))


def test_output_check_tolerance_is_one_audio_frame_and_rounding() -> None:
    def out(end: float) -> media.MediaInfo:
        return probed("/o/x.mp4", span(0, 0.0, end, 6.986, 210), span(1, 0.0, end, end - 0.06, 600))

    check(out(11.974 + 0.060), media.MP4)  # 60 ms < 64 ms (AAC frame at 16 kHz) + 10 ms
    with pytest.raises(OutputRejected):
        check(out(11.974 + 0.080), media.MP4)
    with pytest.raises(OutputRejected):
        check(out(11.974 + 0.060), media.WEBM)  # Opus: 20 ms + 10 ms
    no_audio = replace(out(11.974), audio=None)
    with pytest.raises(OutputRejected, match="no audio"):
        check(no_audio, media.MP4)


def test_last_frame_is_held_to_the_end_of_the_timeline() -> None:
    plan = media.plan_merge(STATIC_END, connect(), 6.0, media.MergeOptions())
    args = media.hold_last_frame_args(STATIC_END, plan, media.WEBM)
    # Packet 209 (the last, counted from 0, at 6.986 s) lasts until 11.974 s; no other packet
    # changes; every frame decodes at its presentation time.
    assert args == [
        "-bsf:v",
        "setts=pts=PTS:dts=PTS:duration="
        "'if(eq(N\\,209)*gte(PTS\\,6.985500/TB)\\,11.974000/TB-PTS\\,DURATION)'",
    ]
    merge_args, _ = build(STATIC_END, connect(), 6.0)
    assert merge_args[merge_args.index("-bsf:v") - 2 : merge_args.index("-bsf:v")] == [
        "-c:v",
        "copy",
    ]
    # WebM: never negative timestamps (Chromium cannot seek them); nothing is negative to
    # shift, the Opus priming being stamped from 0 (see the test above).
    assert value_after(merge_args, "-avoid_negative_ts") == ["make_non_negative"]


def test_mp4_track_keeps_the_recordings_time_base_for_the_held_frame() -> None:
    rec = media.Recording.of(
        probed("/in/rec.webm", span(1, 0.0, 6.987, 6.986, 210), span(0, 0.0, 11.974, 11.9, 199))
    )
    rec = replace(rec, video=replace(rec.video, codec_name="h264"))
    plan = media.plan_merge(rec, connect(), 6.0, media.MergeOptions())
    args = media.hold_last_frame_args(rec, plan, media.MP4)
    assert args[-2:] == ["-video_track_timescale", "1000"]
    merge_args, _ = build(rec, connect(), 6.0, output="/out/recording.mp4")
    assert "-avoid_negative_ts" not in merge_args


def chromium_mp4() -> media.Recording:
    """A Chromium MP4's static screen: video in 1/30000, the last frame at 6.986 s."""
    return media.Recording.of(
        probed(
            "/in/rec.mp4",
            span(1, 0.0, 6.987, 6.986, 210),
            span(0, 0.0, 11.974, 11.9, 199),
            time_base="1/30000",
        )
    )


def test_webm_output_of_video_in_another_time_base_is_held_in_the_packets_unit() -> None:
    # VP9 or AV1 in a Chromium MP4 (1/30000) into WebM: ffmpeg hands setts the packets in
    # 1/30000 or already in WebM's 1/1000 (TB stays 1/30000); the last one's known time
    # (6.986 s) tells which, and its duration is given in that unit.
    rec = chromium_mp4()
    plan = media.plan_merge(rec, connect(), 6.0, media.MergeOptions())
    (setts,) = value_after(media.hold_last_frame_args(rec, plan, media.WEBM), "-bsf:v")
    in_ms = "lt(abs(PTS-6986)\\,abs(PTS-6.986000/TB))"
    assert setts == (
        "setts=pts=PTS:dts=PTS:duration='if(eq(N\\,209)*"
        f"if({in_ms}\\,lte(abs(PTS-6986)\\,1)\\,gte(PTS\\,6.985500/TB))\\,"
        f"if({in_ms}\\,11974\\,11.974000/TB)-PTS"
        "\\,DURATION)'"
    )


def test_mp4_output_keeps_the_recordings_time_base() -> None:
    rec = chromium_mp4()
    rec = replace(rec, video=replace(rec.video, codec_name="h264"))
    plan = media.plan_merge(rec, connect(), 6.0, media.MergeOptions())
    args = media.hold_last_frame_args(rec, plan, media.MP4)
    assert ",11.974000/TB-PTS\\," in args[1]
    assert args[-2:] == ["-video_track_timescale", "30000"]
    odd = replace(rec, video=replace(rec.video, time_base=Fraction(1001, 30000)))
    assert media.hold_last_frame_args(odd, plan, media.MP4) == []


def test_reordered_video_keeps_its_decode_times() -> None:
    # B-frames (presentation order differs from file order): dts is not pts.
    reordered = replace(span(1, 0.0, 6.987, 6.986, 210), in_order=False)
    rec = media.Recording.of(probed("/in/rec.webm", reordered, span(0, 0.03, 11.974, 11.914, 199)))
    plan = media.plan_merge(rec, connect(), 6.0, media.MergeOptions())
    (setts,) = value_after(media.hold_last_frame_args(rec, plan, media.WEBM), "-bsf:v")
    assert setts.startswith("setts=duration=")


def test_the_scan_sees_reordered_frames() -> None:
    lines = [
        "stream_index=0|pts_time=0.000000|dts_time=-0.033000|duration_time=0.033000|flags=K_",
        "stream_index=0|pts_time=0.100000|dts_time=0.000000|duration_time=0.033000|flags=__",
        "stream_index=0|pts_time=0.033000|dts_time=0.033000|duration_time=0.033000|flags=__",
        "stream_index=1|pts_time=0.000000|duration_time=0.020000|flags=K_",
        "stream_index=1|pts_time=0.020000|duration_time=0.020000|flags=K_",
    ]
    timeline = scan(lines, {0: None, 1: 48000})
    video, audio = timeline.stream(0), timeline.stream(1)
    assert video is not None and audio is not None
    assert not video.in_order and audio.in_order


def test_ffmpegs_t0_of_the_recording_is_its_timeline_origin() -> None:
    # Chromium H.264 WebM at 1 fps: no video start time, the container's is the audio's.
    rec = replace(STATIC_END, start_time=0.03)
    rec = replace(
        rec,
        timeline=media.Timeline(
            (span(1, 0.0, 6.987, 6.986, 210), span(0, 0.03, 11.974, 11.914, 199))
        ),
    )
    assert media.timeline_offset_args(rec) == ["-itsoffset", "0.030000"]
    assert media.timeline_offset_args(STATIC_END) == []  # start time 0 = origin
    args, _ = build(rec, connect(), 8.0)  # seeked: the second recording input too
    inputs = [i for i, a in enumerate(args) if a == "-i"]
    assert [args[i - 6 : i - 4] for i in (inputs[0], inputs[2])] == [["-itsoffset", "0.030000"]] * 2
    assert "-itsoffset" not in args[inputs[0] + 1 : inputs[1]]  # not the Connect audio


def test_stderr_tail_is_bounded_and_picks_the_reason() -> None:
    tail = StderrTail(limit=3)
    for i in range(100):
        tail.add(f"line {i}")
    tail.add("[out#0] No space left on device")
    tail.add("Conversion failed!")
    assert list(tail.lines) == ["line 99", "[out#0] No space left on device", "Conversion failed!"]
    assert tail.most_relevant() == "[out#0] No space left on device"
    assert classify(tail) == "scratch_full"


def test_error_details_keep_file_names_not_directories() -> None:
    from worker.ffmpeg import strip_directories

    line = "file:/tmp/scratch/job-1-rec-x/recording-input.mp4: Invalid data found"
    assert strip_directories(line) == "recording-input.mp4: Invalid data found"
    assert strip_directories("open /var/lib/x/connect-audio.wav failed") == (
        "open connect-audio.wav failed"
    )


def chains(graph: str) -> list[str]:
    """The graph's chains as [head], [conn], [rec], join: a microphone chain is shown with the
    label the silence overlay gives it (its own output is [recmic], laid over [recquiet])."""
    kept = [c for c in graph.split(";") if "quiet]" not in c]
    return [c.replace("[recmic]", "[rec]").replace("[headmic]", "[head]") for c in kept]


def test_recording_audio_is_laid_over_exact_length_silence() -> None:
    # A microphone that stopped before the call end gives the [rec] chain no frames at all:
    # the silence underneath still makes the tail exactly as long as the recording.
    args, plan = build(recording(duration=8.0), connect(5.0), 6.0)
    graph = graph_of(args)
    tail = plan.tail_samples
    assert (
        f"anullsrc=r=16000:cl=mono,aformat=sample_fmts=fltp:sample_rates=16000:channel_layouts=mono,atrim=end_sample={tail}[recquiet]"
        in graph
    )
    assert (
        "[recquiet][recmic]amix=inputs=2:duration=first:dropout_transition=0:normalize=0[rec]"
        in graph
    )


@pytest.mark.parametrize(
    ("header", "size", "intervals"),
    [
        (8.0, 400_000, None),  # short: every packet
        (0.0, 10**8, None),  # no header (MediaRecorder WebM): every packet
        (3 * 3600.0, 400_000, None),  # an implausible header: every packet
        (600.0, 14_000_000, ("%+20,570.000%", 570.0)),  # head 20 s, tail from 30 s before
    ],
)
def test_long_files_with_a_believable_header_are_read_in_two_intervals(
    header: float, size: int, intervals: tuple[str, float] | None
) -> None:
    assert media.scan_intervals(header, size) == intervals
    args = media.build_timeline_args(Path("/in/x.mp4"), intervals[0] if intervals else None)
    assert ("-read_intervals" in args) is (intervals is not None)


@pytest.mark.parametrize(
    ("spans", "enough"),
    [
        ((span(0, 0.0, 600.0, 599.9, 40), span(1, 0.02, 599.98, 599.9, 80)), True),
        ((span(0, 0.0, 19.9, 19.8, 40), span(1, 0.02, 19.98, 19.9, 80)), False),  # empty tail
        ((span(0, 0.0, 600.0, 599.9, 40), span(1, 575.0, 599.98, 599.9, 8)), False),  # late
        ((span(0, 0.0, 600.0, 599.9, 40),), False),  # a stream missing
    ],
)
def test_intervals_suffice_or_every_packet_is_read(
    spans: tuple[media.StreamSpan, ...], enough: bool
) -> None:
    timeline = media.Timeline(spans, complete=False)
    assert media.intervals_suffice(timeline, 570.0, 2) is enough


def test_output_read_in_intervals_counts_the_frames_ffmpeg_wrote() -> None:
    rec = STATIC_END
    out = probed("/o/x.webm", span(0, 0.0, 11.974, 6.986, 3), span(1, 0.0, 11.974, 11.95, 9))
    partial = replace(out, timeline=replace(out.timeline, complete=False))  # type: ignore[arg-type]
    plan = media.plan_merge(rec, connect(), 6.0, media.MergeOptions())
    media.check_output(partial, rec, plan, media.WEBM, 210)
    with pytest.raises(OutputRejected, match="209 video frames"):
        media.check_output(partial, rec, plan, media.WEBM, 209)
    # A recording read in intervals has no frame count to compare with.
    unknown = replace(rec, timeline=replace(rec.timeline, complete=False))
    media.check_output(partial, unknown, plan, media.WEBM, 209)
    progress = media_run.Progress(12.0, None)
    for line in ("frame=209", "fps=0.0", "out_time_us=11974000", "frame=210", "progress=end"):
        progress.feed(line)
    assert progress.frames == 210


def test_chapters_are_our_own_ffmetadata_input_with_its_own_allow_list() -> None:
    rec, conn = recording(), connect()
    options = media.MergeOptions(align="end")
    for call_end, n_inputs in ((4.0, 3), (6.0, 4)):
        plan = media.plan_merge(rec, conn, call_end, options)
        args = media.build_merge_args(
            recording=rec, connect=conn, plan=plan, output=Path("/out/r.webm"),
            options=options, chapters=Path("/out/.r.webm.chapters"),
        )  # fmt: skip
        inputs = [i for i, a in enumerate(args) if a == "-i"]
        assert len(inputs) == n_inputs
        *untrusted, ours = inputs
        for i in untrusted:  # the media inputs keep the allow-list of untrusted input
            assert args[i - 4 : i] == ["-format_whitelist", FORMAT_WHITELIST,
                                       "-protocol_whitelist", PROTOCOL_WHITELIST]  # fmt: skip
        assert args[ours - 6 : ours + 2] == [
            "-format_whitelist", "ffmetadata", "-protocol_whitelist", "file",
            "-f", "ffmetadata", "-i", "file:/out/.r.webm.chapters",
        ]  # fmt: skip
        assert value_after(args, "-map_chapters") == [str(n_inputs - 1)]
    # Without a chapters file the recording's own chapters are still dropped.
    args, _ = build(rec, conn, 6.0)
    assert value_after(args, "-map_chapters") == ["-1"]


@pytest.mark.parametrize(
    ("call_end", "titles"),
    [(3.25, ["Call", "After Call Work"]), (0.0, ["After Call Work"]), (8.0, ["Call"])],
)
def test_chapters_metadata(call_end: float, titles: list[str]) -> None:
    plan = media.plan_merge(recording(duration=8.0), connect(), call_end, media.MergeOptions())
    text = media.chapters_metadata(plan)
    assert text.startswith(";FFMETADATA1\n")
    assert [line[6:] for line in text.splitlines() if line.startswith("title=")] == titles
    bounds = [int(line[len("START=") :]) for line in text.splitlines() if line.startswith("START")]
    assert bounds == ([0, 3250] if len(titles) == 2 else [0])


def test_loudness_stage_is_a_static_gain_per_segment_and_one_limiter() -> None:
    from worker.media.loudness import LoudnessGains

    rec, conn = recording(), connect()
    options = media.MergeOptions(align="end", loudness_target=-18.0)
    plan = media.plan_merge(rec, conn, 6.0, options)
    gains = LoudnessGains(-18.0, 12.5, -3.25, -30.5, -14.75)
    args = media.build_merge_args(
        recording=rec, connect=conn, plan=plan, output=Path("/out/r.webm"), options=options,
        gains=gains,
    )  # fmt: skip
    conn_chain, *_, out_chain = graph_of(args).split(";")
    assert "volume=12.50dB" in conn_chain and "volume=-3.25dB" in graph_of(args)
    assert out_chain.startswith("[conn][rec]concat=n=2:v=0:a=1,alimiter=")
    assert "level=0" in out_chain and "latency=1" in out_chain  # no auto-gain, no delay
    # Off (None): exactly today's graph.
    plain = media.build_merge_args(
        recording=rec, connect=conn, plan=plan, output=Path("/out/r.webm"), options=options
    )
    assert "volume=" not in graph_of(plain) and "alimiter" not in graph_of(plain)
    assert graph_of(plain).endswith(f"[conn][rec]concat=n=2:v=0:a=1{OPUS_STAMP}[aout]")


def test_loudness_summary_parsing_and_gain_rule() -> None:
    from worker.media import loudness

    summary = ["[Parsed_ebur128_0 @ 0x1] Summary:", "Integrated loudness:",
               "I:         -27.3 LUFS", "Threshold: -37.6 LUFS"]  # fmt: skip
    assert loudness.parse_integrated(summary) == -27.3
    assert loudness.parse_integrated(["I:         -70.0 LUFS"]) is None  # silence
    assert loudness.parse_integrated(["nothing"]) is None
    assert loudness.gain_for(-27.3, -18.0) == pytest.approx(9.3)
    assert loudness.gain_for(None, -18.0) == 0.0
    assert loudness.gain_for(-90.0, -18.0) == loudness.MAX_GAIN_DB
    (c_start, c_len), (r_start, r_len) = loudness.stretches_near(600.0, 900.0, 580.0)
    assert (c_start, c_len) == (520.0, 60.0)
    assert (r_start, r_len) == (570.0, 60.0)  # centred on the call end
