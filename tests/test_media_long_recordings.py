"""Long recordings (read by their head and tail) hold their last frame to the end.

A 200 s recording whose screen went static at 150 s or at 60 s (no frames after it) while
the microphone went on to 200 s: the probe reads only its first and last seconds, so the
merge must find the last frame by its time and the output check must see each track's end
from the tail it reads. Real ffmpeg on small generated media (160x120 at 5 fps, mono audio:
seconds to make), MP4 (H.264) and WebM (VP8).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest

from tests.media_tools import framemd5, make_recording, make_tone_wav, stream_end, stream_ends
from worker import media
from worker.errors import OutputRejected
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
    return {
        (ext, stop): long_recording(directory, ext, stop)
        for ext in ENCODERS
        for stop in (150.0, 60.0)
    }


@pytest.fixture(scope="module")
def connect_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tone_wav(tmp_path_factory.mktemp("connect") / "connect.wav", [(60.0, [440.0])])


@pytest.mark.parametrize("ext", list(ENCODERS))
@pytest.mark.parametrize("video_stops", [150.0, 60.0])
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
    # The last frame (at video_stops - 0.2 s) lasts until the microphone's last sound: the
    # video track ends there (WebM: its DURATION tag; its packets have no durations).
    assert stream_end(recording, "v:0") == pytest.approx(video_stops, abs=0.02)
    ends = stream_ends(out)
    assert ends["video"] == pytest.approx(LENGTH, abs=END_TOLERANCE)
    assert ends["audio"] == pytest.approx(LENGTH, abs=END_TOLERANCE)
    if ext == "mp4":  # the held frame's own duration
        assert stream_end(out, "v:0") == pytest.approx(LENGTH, abs=END_TOLERANCE)
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
