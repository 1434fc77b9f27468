"""Long recordings (read by their head and tail) hold their last frame to the end.

A 200 s recording whose screen went static at 150 s or at 60 s (no frames after it) while
the microphone went on to 200 s: the probe reads only its first and last seconds, so the
merge must find the last frame by its time and the output check must see each track's end
from the tail it reads. Real ffmpeg on small generated media (160x120 at 5 fps, mono audio:
seconds to make), MP4 (H.264) and WebM (VP8).
"""

from __future__ import annotations

import itertools
import subprocess
from dataclasses import replace
from fractions import Fraction
from functools import partial
from pathlib import Path

import anyio
import pytest

from tests.harness.media_checks import assert_moov_reads_as_ffprobe
from tests.harness.media_tools import (
    count_runs,
    framemd5,
    make_recording,
    make_tone_wav,
    packet_counts,
    packet_durations,
    stream_end,
    stream_ends,
)
from worker import media
from worker.errors import OutputRejected
from worker.media import probing, timeline
from worker.media._parse import parse_clock
from worker.media.probing import probe

LENGTH = 200.0  # longer than timeline.INTERVAL_MIN_SECONDS: read by head and tail
CALL_END = 120.0
# Video end against the timeline's: one audio frame plus container rounding (the check's).
END_TOLERANCE = 0.03

ENCODERS = {
    "mp4": ("libx264", "aac", ("-ar", "16000", "-ac", "1", "-b:a", "24k"), ()),
    "webm": (
        "libvpx",
        "libopus",
        ("-ac", "1", "-b:a", "16k"),
        ("-deadline", "realtime", "-cpu-used", "16", "-lag-in-frames", "0", "-threads", "1"),
    ),
}

# Where the video stops: before the tail (170-200 s), long before it, and inside the head
# (the head and tail reads then show no video past the head: it is read from further back;
# and, the tail read seeking back to a keyframe inside the head, they overlap, so a count of
# the packets read is more than the file holds).
CASES = [("mp4", 150.0), ("mp4", 60.0), ("webm", 150.0), ("webm", 60.0), ("webm", 10.0)]


def long_recording(directory: Path, ext: str, video_stops: float) -> Path:
    """A ``LENGTH`` s recording whose video stops at ``video_stops``, its audio at the end."""
    video, audio, audio_args, video_args = ENCODERS[ext]
    return make_recording(
        directory / f"static-from-{video_stops:g}.{ext}",
        video_codec=video,
        audio_codec=audio,
        duration=LENGTH,
        video_duration=video_stops,
        fps=5,
        size="160x120",
        audio_args=audio_args,
        video_args=video_args,
    )


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, float], Path]:
    directory = tmp_path_factory.mktemp("long")
    return {(ext, stop): long_recording(directory, ext, stop) for ext, stop in CASES}


@pytest.fixture(scope="module")
def connect_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tone_wav(tmp_path_factory.mktemp("connect") / "connect.wav", [(60.0, [440.0])])


@pytest.mark.parametrize(("ext", "video_stops"), CASES)
def test_long_recording_holds_its_last_frame_to_the_end(
    recordings: dict[tuple[str, float], Path],
    connect_wav: Path,
    tmp_path: Path,
    ext: str,
    video_stops: float,
) -> None:
    recording = recordings[(ext, video_stops)]
    info = anyio.run(probe, recording)
    assert info.timeline is not None and not info.timeline.complete  # head and tail only
    # END alignment on the timestamp: the sync's analysis is not what is tested here.
    options = media.MergeOptions(align="end")
    request = media.MergeRequest(
        recording, connect_wav, CALL_END, tmp_path / f"recording.{ext}", None, options
    )
    result = anyio.run(media.merge, request)
    out = result.output
    if ext == "mp4":  # its check read the moov: as ffprobe's head and tail (issue 19 item 3)
        expected = result.media_duration_seconds
        theirs = anyio.run(probing._read_in_one_run, out, 60.0, expected)
        assert theirs is not None and not theirs[1].complete
        info = media.MediaInfo(out, "mp4", expected, theirs[0].video, theirs[0].audio,
                               timeline=theirs[1], header_duration=theirs[0].duration)  # fmt: skip
        assert_moov_reads_as_ffprobe(out, expected, info, packet_counts(out))
    # The last frame (at video_stops - 0.2 s) lasts until the microphone's last sound: the
    # video track ends there (WebM: its DURATION tag; its packets have no durations).
    assert stream_end(recording, "v:0") == pytest.approx(video_stops, abs=0.02)
    ends = stream_ends(out)
    assert ends["video"] == pytest.approx(LENGTH, abs=END_TOLERANCE)
    assert ends["audio"] == pytest.approx(LENGTH, abs=END_TOLERANCE)
    if ext == "mp4":  # the held frame's own duration
        assert stream_end(out, "v:0") == pytest.approx(LENGTH, abs=END_TOLERANCE)
    # Only the last frame is held: none before it lasts past the next one's time.
    packets = packet_durations(out)
    for (pts, duration), (after, _) in itertools.pairwise(packets):
        assert pts + duration <= after + 0.002, f"the frame at {pts} s lasts {duration} s"
    # Every frame copied, the last one the recording's.
    frames, copied = framemd5(recording), framemd5(out)
    assert len(copied) == len(frames) == round(video_stops * 5)
    assert copied[-1] == frames[-1]


def test_output_check_rejects_a_long_output_whose_video_ends_early(
    recordings: dict[tuple[str, float], Path], connect_wav: Path, tmp_path: Path
) -> None:
    """A 200 s output whose video stops at 150 s (the last frame not held): a plain copy of
    the recording, audio and all, read by its head and tail like any long output."""
    source = recordings[("mp4", 150.0)]
    crafted = tmp_path / "recording.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(source), "-c", "copy", "-y", str(crafted)],
        check=True,
    )
    recording = media.Recording.of(anyio.run(probe, source))
    connect = media.ConnectAudio.of(anyio.run(probe, connect_wav))
    plan = media.plan_merge(recording, connect, CALL_END, media.MergeOptions())
    output = anyio.run(probe, crafted)
    assert output.timeline is not None and not output.timeline.complete
    with pytest.raises(OutputRejected, match=r"video ends at 150\.0"):
        media.check_output(output, recording, plan, media.MP4)


def test_the_last_frame_is_read_from_further_back_when_the_tail_shows_no_video(
    recordings: dict[tuple[str, float], Path],
) -> None:
    """A head read alone (as when a tail read shows no video: a screen static for longer than
    the tail in a file whose seek does not go back to a keyframe) does not show the last
    frame; the read from further back finds it, reading the video only."""
    for ext in ENCODERS:
        path = recordings[(ext, 60.0)]
        header = anyio.run(probing._read_header, path, 60.0)
        assert header.video is not None and header.audio is not None
        rates = {header.video.index: None, header.audio.index: header.audio.sample_rate}
        head = anyio.run(probing._scan, path, rates, 60.0, "%+20")
        assert head is not None
        index = header.video.index
        assert timeline.last_video_unseen(head, index)
        found = anyio.run(probing._read_back_video, path, index, head, LENGTH - 30, 60.0)
        video = found.stream(index)
        assert video is not None
        assert video.last - found.origin == pytest.approx(59.8, abs=0.02), ext
        assert not timeline.last_video_unseen(found, index)
        # The rest of the head's timeline is as it was.
        assert found.stream(header.audio.index) == head.stream(header.audio.index)


def test_reads_further_back_double_their_distance_down_to_the_head() -> None:
    assert timeline.read_back_starts(170.0, 20.0) == [140.0, 110.0, 50.0, 20.0]
    assert timeline.read_back_starts(30.0, 20.0) == [20.0]


def span(index: int, end: float, last: float, packets: int = 100) -> media.StreamSpan:
    return media.StreamSpan(index, 0.0, end, last, packets)


def test_the_last_frame_is_unseen_when_no_video_lies_past_the_head() -> None:
    head_only = media.Timeline((span(0, 19.9, 19.8), span(1, 200.0, 199.98)), complete=False)
    assert timeline.last_video_unseen(head_only, 0)
    assert not timeline.last_video_unseen(head_only, 1)
    found = timeline.with_last_packet(head_only, span(0, 60.0, 59.8, 30))
    assert found.stream(0) == span(0, 60.0, 59.8)  # its count stays the head's
    assert found.stream(1) == head_only.stream(1) and not found.complete


def long_recording_info(time_base: str = "1/1000", codec: str = "vp8") -> media.Recording:
    """A 200 s recording read by head and tail: the video's last frame at 149.8 s."""
    video = media.StreamInfo(0, "video", codec, 0.0, None, None, None, 160, 120)
    audio = media.StreamInfo(1, "audio", "opus", 0.0, None, 48000, 1, None, None)
    spans = (span(0, 150.0, 149.8, 180), span(1, 200.0, 199.98, 2500))
    return media.Recording(
        Path("/in/rec.webm"),
        replace(video, time_base=Fraction(time_base)),
        audio,
        media.Timeline(spans, complete=False),
    )


def plan_of(recording: media.Recording) -> media.MergePlan:
    assert recording.audio is not None
    connect = media.ConnectAudio(Path("/in/c.wav"), replace(recording.audio, index=0), 60.0)
    return media.plan_merge(recording, connect, CALL_END, media.MergeOptions())


def test_a_partial_read_finds_the_last_frame_by_its_time_alone() -> None:
    rec = long_recording_info()
    (setts,) = value_after(media.hold_last_frame_args(rec, plan_of(rec), media.WEBM), "-bsf:v")
    # No packet count (the 180 read are not the file's 750): the packet at 149.8 s.
    assert setts == (
        "setts=pts=PTS:dts=PTS:duration="
        "'if(gte(PTS\\,149.799500/TB)\\,200.000000/TB-PTS\\,DURATION)'"
    )
    rec = long_recording_info("1/30000")  # WebM: milliseconds or TB, as the packet says
    (setts,) = value_after(media.hold_last_frame_args(rec, plan_of(rec), media.WEBM), "-bsf:v")
    assert "N" not in setts.replace("DURATION", "")
    assert "lte(abs(PTS-149800)\\,1)\\,gte(PTS\\,149.799500/TB)" in setts


def value_after(args: list[str], flag: str) -> list[str]:
    return [args[args.index(flag) + 1]]


def output_info(
    video_end: float, track_end: float | None, *, last: float = 149.8
) -> media.MediaInfo:
    """A 200 s output as read by head and tail."""
    rec = long_recording_info()
    spans = (span(0, video_end, last, 200), span(1, 200.0, 199.98, 2500))
    return media.MediaInfo(
        Path("/o/recording.webm"),
        "matroska,webm",
        200.0,
        replace(rec.video, track_end=track_end),
        rec.audio,
        timeline=media.Timeline(spans, complete=False),
    )


def test_output_check_takes_the_video_end_from_its_track() -> None:
    rec = long_recording_info()
    # WebM packets carry no held duration (the demuxer guesses one frame): the track's end
    # (without one, the packets').
    media.check_output(output_info(150.0, 200.0), rec, plan_of(rec), media.WEBM)
    with pytest.raises(OutputRejected, match=r"video ends at 150\.000"):
        media.check_output(output_info(150.0, 150.0), rec, plan_of(rec), media.WEBM)
    with pytest.raises(OutputRejected, match=r"video ends at 150\.000"):
        media.check_output(output_info(150.0, None), rec, plan_of(rec), media.WEBM)


def test_output_check_of_a_video_not_held_wants_its_last_frame() -> None:
    rec = long_recording_info(codec="h264")
    rec = replace(rec, video=replace(rec.video, reorder_delay=2))  # B-frames: not held
    out = output_info(150.0, None)
    media.check_output(out, rec, plan_of(rec), media.MP4)
    early = output_info(140.0, None, last=139.8)
    with pytest.raises(OutputRejected, match=r"last frame at 139\.800"):
        media.check_output(early, rec, plan_of(rec), media.MP4)


def test_matroska_duration_tags_are_read() -> None:
    assert parse_clock("00:03:20.008000000") == pytest.approx(200.008)
    assert parse_clock("1:00:00.5") == pytest.approx(3600.5)
    assert parse_clock("N/A") is None and parse_clock(None) is None


def test_an_mp4_recording_is_probed_in_one_run_with_the_same_result(
    recordings: dict[tuple[str, float], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The movie header's duration (read before ffprobe runs) lets one run read header, head
    and tail; the result is the two-run read's (every span's start, end and last frame)."""
    runs = count_runs(monkeypatch)
    for (ext, stop), path in recordings.items():
        runs.clear()
        two = anyio.run(probe, path)
        two_runs = len(runs)
        runs.clear()
        one = anyio.run(partial(probe, path, hint=True))
        # The MP4 in one run (two when its last frame is read from further back); a WebM has
        # no movie header: read as without the hint.
        assert len(runs) == (two_runs - 1 if ext == "mp4" else two_runs), (ext, stop, runs)
        assert replace(one, timeline=None) == replace(two, timeline=None)
        assert one.timeline is not None and two.timeline is not None
        assert one.timeline.complete == two.timeline.complete
        assert [replace(s, packets=0) for s in one.timeline.streams] == [
            replace(s, packets=0) for s in two.timeline.streams
        ]
