"""The merge's MP4 output read from its ``moov`` equals ffprobe's read (issue 18).

Every recording of ``tests/data`` that an MP4 can hold and the generated H.264 recordings
(B-frames: ``ctts``; late audio; no audio) are merged to MP4 (their output check already
ran through the ``moov`` reader); the output is then read both ways: ffprobe's packets
(every one, in one run) and :func:`worker.media.mp4_tracks.mp4_probe`. Track starts, ends,
last frames and the track's end agree to ffprobe's printed precision (1 us), packet and
discarded counts exactly. An output whose video ffmpeg cut is read by the ``moov`` reader
and rejected by the check.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from tests.harness.fixtures_media import DATA_DIR
from tests.harness.media_checks import assert_moov_reads_as_ffprobe, moov_info, run_merge
from tests.harness.media_tools import ffmpeg
from worker import media
from worker.errors import OutputRejected
from worker.media.probing import probe

MP4_VIDEO = ("avc1", "avc3", "h264")  # recordings an MP4 output can hold (not VP8/VP9/AV1)
DATA = sorted(
    p.name
    for p in DATA_DIR.iterdir()
    if p.suffix in (".webm", ".mp4") and any(c in p.name for c in MP4_VIDEO)
)
GENERATED = ("h264-aac", "h264-aac-late", "h264-noaudio", "h264-bframes-aac", "hevc-aac")


def _assert_same(output: Path, expected: float) -> None:
    theirs = anyio.run(lambda: probe(output, one_run=True))  # ffprobe: every packet
    assert_moov_reads_as_ffprobe(output, expected, theirs)


@pytest.mark.parametrize("name", DATA)
def test_a_recordings_output_reads_the_same_from_itsmoov_info(name: str, tmp_path: Path) -> None:
    result = run_merge(DATA_DIR / name, DATA_DIR / "connect-8k-stereo-5s.wav", 3.0, tmp_path,
                       ext="mp4")  # fmt: skip
    _assert_same(result.output, result.media_duration_seconds)


@pytest.mark.parametrize("name", GENERATED)
def test_a_generated_output_reads_the_same_from_itsmoov_info(
    name: str, generated: Callable[[str], Path], tmp_path: Path
) -> None:
    result = run_merge(generated(name), generated("connect-8k-mono-2s"), 1.0, tmp_path,
                       ext="mp4")  # fmt: skip
    _assert_same(result.output, result.media_duration_seconds)
    if "bframes" in name:  # frames reordered: the moov's composition offsets (ctts) were read
        info = moov_info(result.output, result.media_duration_seconds)
        assert info.timeline is not None and info.video is not None
        span = info.timeline.stream(info.video.index)
        assert span is not None and not span.in_order


def test_an_output_with_its_video_cut_fails_the_check_through_themoov_info(
    generated: Callable[[str], Path], tmp_path: Path
) -> None:
    recording_path = generated("h264-aac")
    result = run_merge(recording_path, generated("connect-8k-mono-2s"), 1.0, tmp_path, ext="mp4")
    cut = tmp_path / "cut.mp4"
    # The video's last 2 s lost, the audio whole (stream copy, faststart as the merge writes).
    ffmpeg("-t", "2", "-i", str(result.output), "-i", str(result.output), "-map", "0:v",
           "-map", "1:a", "-c", "copy", "-movflags", "+faststart", str(cut))  # fmt: skip
    recording = media.Recording.of(anyio.run(probe, recording_path))
    connect = media.ConnectAudio.of(anyio.run(probe, generated("connect-8k-mono-2s")))
    plan = media.plan_merge(recording, connect, 1.0, media.MergeOptions())
    moov_info(cut, plan.duration)  # read from its moov, not by ffprobe
    output = anyio.run(lambda: probe(cut, expected_duration=plan.duration))
    with pytest.raises(OutputRejected, match=r"video ends at 2\.0"):
        media.check_output(output, recording, plan, media.MP4)
    # The whole output passes the same check.
    whole = anyio.run(lambda: probe(result.output, expected_duration=plan.duration))
    media.check_output(whole, recording, plan, media.MP4)
