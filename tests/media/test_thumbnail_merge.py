"""The thumbnail written by the merge's own run, and taken on its own only when that run's
window (a second after the thumbnail's time) has no frame."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.harness.media_tools import count_runs, ffmpeg, framemd5, make_recording, make_tone_wav
from worker import media
from worker.media import commands


def _merge_counting(
    recording: Path, connect: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[media.MergeResult, list[str]]:
    """The merge of ``recording`` with a thumbnail, and what each of its processes was."""
    runs = count_runs(monkeypatch)
    request = media.MergeRequest(
        recording=recording,
        connect_audio=connect,
        call_end_seconds=3.0,
        output=out_dir / f"out{recording.suffix}",
        thumbnail=out_dir / "thumb.png",
        options=media.MergeOptions(align="end"),
    )
    return anyio.run(media.merge, request), runs


def _frame_at(recording: Path, seconds: float, out: Path) -> list[str]:
    """The frame a separate thumbnail run takes at ``seconds`` (fast seek), hashed."""
    ffmpeg("-ss", f"{seconds:.3f}", "-i", str(recording), "-frames:v", "1", "-c:v", "png", str(out))
    return framemd5(out)


@pytest.mark.parametrize(("codec", "ext"), [("libx264", "mp4"), ("libvpx", "webm")])
def test_the_merge_writes_the_thumbnail_in_its_own_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: str, ext: str
) -> None:
    recording = make_recording(
        tmp_path / f"rec.{ext}", video_codec=codec, audio_codec="aac" if ext == "mp4" else "libopus"
    )
    connect = make_tone_wav(tmp_path / "connect.wav", [(2.5, [440, 660])])
    result, runs = _merge_counting(recording, connect, tmp_path, monkeypatch)
    assert "thumbnail" not in runs and runs.count("merge") == 1, runs
    assert result.thumbnail is not None
    assert framemd5(result.thumbnail) == _frame_at(recording, 1.0, tmp_path / "ref.png")


def test_a_static_screen_gets_the_next_frame_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames at 0, 3 and 6 s only (a static screen): the first frame after 1 s is the one at
    3 s, beyond the window, and the merge's run still takes it (as a run of its own did)."""
    recording = tmp_path / "sparse.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=1/3:duration=9",
           "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000:duration=9",
           "-map", "0:v", "-map", "1:a", "-c:a", "aac", "-c:v", "libx264", "-preset",
           "ultrafast", "-pix_fmt", "yuv420p", str(recording))  # fmt: skip
    connect = make_tone_wav(tmp_path / "connect.wav", [(2.5, [440, 660])])
    result, runs = _merge_counting(recording, connect, tmp_path, monkeypatch)
    assert "thumbnail" not in runs, runs
    assert result.thumbnail is not None
    at_three = _frame_at(recording, 3.0, tmp_path / "at3.png")
    assert framemd5(result.thumbnail) == at_three
    assert at_three != _frame_at(recording, 0.0, tmp_path / "at0.png")


def test_no_frame_after_the_thumbnails_time_falls_back_to_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Video for 0.5 s, audio for 4 s: no frame after 1 s, so the merge's run writes no
    thumbnail and it is taken on its own, of the first frame (as before: at 1 s, then 0)."""
    recording = make_recording(tmp_path / "short.mp4", duration=4.0, video_duration=0.5)
    connect = make_tone_wav(tmp_path / "connect.wav", [(2.5, [440, 660])])
    result, runs = _merge_counting(recording, connect, tmp_path, monkeypatch)
    assert runs.count("thumbnail") == 2, runs
    assert result.thumbnail is not None
    assert framemd5(result.thumbnail) == _frame_at(recording, 0.0, tmp_path / "at0.png")


def test_a_recording_past_the_limit_takes_the_thumbnail_in_its_own_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past THUMBNAIL_IN_MERGE_MAX_SECONDS (made 2 s here) the merge's run has no thumbnail
    input (its memory grows with the recording's index): one run of its own, as before."""
    monkeypatch.setattr(commands, "THUMBNAIL_IN_MERGE_MAX_SECONDS", 2.0)
    recording = make_recording(tmp_path / "rec.mp4")
    connect = make_tone_wav(tmp_path / "connect.wav", [(2.5, [440, 660])])
    result, runs = _merge_counting(recording, connect, tmp_path, monkeypatch)
    assert runs.count("thumbnail") == 1, runs
    assert result.thumbnail is not None
    assert framemd5(result.thumbnail) == _frame_at(recording, 1.0, tmp_path / "ref.png")
