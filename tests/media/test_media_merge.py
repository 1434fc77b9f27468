"""The SPEC §5 merge on real media with the real ffmpeg, checked by content.

Every merged file is checked for: duration equal to the recording's (+- one audio frame and
container rounding), decoded video frames hash-equal to the input's (stream copy), and an
audio timeline of tones: silence / Connect 440+660 Hz / the recording's 1000 Hz, window by
window (FFT band energy), with 50 ms guards at the boundaries.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import psutil
import pytest

from tests.harness.fixtures_media import (
    CHROME_AVC1_OPUS_MP4,
    CHROME_H264_OPUS_WEBM,
    CHROME_VP8_NOAUDIO,
    CHROME_VP8_OPUS,
    CONNECT_WAV,
    HEAD_TONE,
    RECORDING_TONE,
    hls_playlist_to,
)
from tests.harness.media_checks import (
    assert_same_video_and_duration,
    assert_timeline,
    decoded,
    expected_segments,
    run_merge,
)
from tests.harness.media_tools import (
    band_share,
    decode_pcm,
    ffprobe_json,
    make_recording,
    make_tone_wav,
    rms,
    stream_end,
    timeline_duration,
    window,
)
from worker import ffmpeg as ffmpeg_module
from worker import media
from worker.config import AudioSettings
from worker.errors import (
    ConfigError,
    MediaError,
    MediaTimeout,
    NoAudioStream,
    NoVideoStream,
    ScratchFull,
    UnsupportedMedia,
)
from worker.media import run as media_run
from worker.observability import CALL_END_CLAMPS, FFMPEG_FAILURES

FIXTURE_CASES = [
    (CHROME_VP8_OPUS, "webm", 0.040),
    (CHROME_H264_OPUS_WEBM, "mp4", 0.021),
    (CHROME_AVC1_OPUS_MP4, "mp4", 0.0),
    (CHROME_VP8_NOAUDIO, "webm", None),
]


@pytest.mark.parametrize(("name", "ext", "audio_start"), FIXTURE_CASES)
def test_browser_fixture_end_aligned(
    data_dir: Path, tmp_path: Path, name: str, ext: str, audio_start: float | None
) -> None:
    """Connect (5 s) shorter than callEnd (6 s): 1 s of silence, the call, then the ACW."""
    recording = data_dir / name
    result = run_merge(recording, data_dir / CONNECT_WAV, 6.0, tmp_path, ext=ext, thumbnail=True)
    assert result.output.suffix == f".{ext}"
    assert result.container.extension == ext
    assert result.connect_duration_seconds == pytest.approx(5.0, abs=0.001)
    assert result.connect_audio_offset_seconds == pytest.approx(1.0, abs=0.001)
    assert result.media_duration_seconds == pytest.approx(8.0, abs=0.05)
    assert not result.call_end_clamped
    assert_same_video_and_duration(result.output, recording, result, AudioSettings())
    assert_timeline(
        result.output,
        expected_segments(
            result.media_duration_seconds, 6.0, 5.0, recording_audio_start=audio_start
        ),
    )
    # Boundaries to the millisecond scale (the window checks above skip 50 ms guards):
    # the Connect audio starts at offset = 1 s, the recording's tone takes over at 6 s.
    pcm = decoded(result.output, 1)[:, 0]
    onset = int(np.argmax(np.abs(pcm) > 0.02)) / 16000
    assert onset == pytest.approx(1.0, abs=0.010)
    if audio_start is not None:
        takeover = next(
            t / 1000
            for t in range(5900, 6100)
            if band_share(pcm[t * 16 : t * 16 + 160], 16000, RECORDING_TONE, 100) > 0.5
        )
        assert takeover == pytest.approx(6.0, abs=0.010)
    assert result.thumbnail is not None
    thumb = ffprobe_json(result.thumbnail)["streams"][0]  # type: ignore[index]
    assert (thumb["codec_name"], thumb["width"], thumb["height"]) == ("png", 640, 360)


def test_webm_without_header_duration_uses_packets(data_dir: Path) -> None:
    info = anyio.run(media.probe, data_dir / CHROME_VP8_OPUS)
    assert info.timeline is not None
    # The audio ends 26 ms after the last frame: the recording lasts until then.
    assert info.duration == pytest.approx(stream_end(data_dir / CHROME_VP8_OPUS, "a:0"), abs=0.001)
    assert info.duration > stream_end(data_dir / CHROME_VP8_OPUS, "v:0") + 0.02
    assert info.video is not None and info.video.codec_name == "vp8"
    assert info.audio is not None and info.audio.start_time == pytest.approx(0.040)


@pytest.mark.parametrize(
    "name",
    ["chrome-avc1-opus-8s.mp4", CHROME_VP8_OPUS, "connect-8k-stereo-5s.wav"],
)
def test_one_run_probe_reads_what_two_runs_read(data_dir: Path, name: str) -> None:
    """Format, streams and packets from one ffprobe run (issue 18): the same header and the
    same timeline, to the packet (Opus skip samples in MP4 included), as the two-run read."""
    path = data_dir / name
    two = anyio.run(media.probe, path)
    one = anyio.run(functools.partial(media.probe, path, one_run=True))
    expected = anyio.run(functools.partial(media.probe, path, expected_duration=two.duration))
    for info in (one, expected):
        assert (info.format_name, info.video, info.audio) == (two.format_name, two.video, two.audio)
        assert (info.header_duration, info.start_time) == (two.header_duration, two.start_time)
        assert info.timeline == two.timeline


def test_side_by_side_errors_come_in_turn() -> None:
    """The first call's error is raised (the second cancelled); the second's is handed back."""
    cancelled: list[bool] = []

    async def fail() -> int:
        raise MediaError("first")

    async def slow() -> int:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise
        return 2

    async def second_fails() -> int:
        raise NoAudioStream("second")

    async def one() -> int:
        return 1

    with pytest.raises(MediaError, match="first"):
        anyio.run(media_run.side_by_side, fail, slow)
    assert cancelled == [True]
    first, second = anyio.run(media_run.side_by_side, one, second_fails)
    assert first == 1 and isinstance(second, NoAudioStream)


def test_connect_longer_than_call_end_head_is_cut(
    data_dir: Path, generated: Callable[[str], Path], tmp_path: Path
) -> None:
    """Connect 4 s (first second 300 Hz), callEnd 2.5 s: the 300 Hz head must be gone."""
    recording = data_dir / CHROME_VP8_OPUS
    result = run_merge(recording, generated("connect-8k-stereo-head-4s"), 2.5, tmp_path, ext="webm")
    assert result.connect_audio_offset_seconds == pytest.approx(-1.5, abs=0.001)
    segs = expected_segments(result.media_duration_seconds, 2.5, 4.0, head=1.0)
    assert [s.kind for s in segs] == ["connect", "recording"]
    assert_timeline(result.output, segs)
    pcm = decode_pcm(result.output)
    assert band_share(window(pcm, 16000, 0.0, 2.5), 16000, HEAD_TONE) < 0.01


@pytest.mark.parametrize(
    ("name", "ext", "call_end"),
    [("h264-aac", "mp4", 3.0), ("vp9-opus", "webm", 2.5)],
)
def test_generated_recordings(
    generated: Callable[[str], Path], tmp_path: Path, name: str, ext: str, call_end: float
) -> None:
    recording = generated(name)
    connect = generated("connect-16k-stereo-2s")
    result = run_merge(recording, connect, call_end, tmp_path, ext=ext)
    assert result.media_duration_seconds == pytest.approx(4.0, abs=0.07)
    assert_same_video_and_duration(result.output, recording, result, AudioSettings())
    assert_timeline(result.output, expected_segments(result.media_duration_seconds, call_end, 2.0))


@pytest.mark.parametrize(
    ("name", "ext", "call_end"),
    [("h264-aac-late", "mp4", 0.0), ("vp9-opus-late", "webm", 0.25)],
)
def test_late_recording_audio_keeps_its_timestamps(
    generated: Callable[[str], Path], tmp_path: Path, name: str, ext: str, call_end: float
) -> None:
    """Recording audio starting at 0.5 s stays at 0.5 s (silence before it, not shifted)."""
    recording = generated(name)
    result = run_merge(recording, generated("connect-8k-mono-2s"), call_end, tmp_path, ext=ext)
    segs = expected_segments(
        result.media_duration_seconds, call_end, 2.0, recording_audio_start=0.5
    )
    assert "silence" in [s.kind for s in segs]
    assert_same_video_and_duration(result.output, recording, result, AudioSettings())
    assert_timeline(result.output, segs)


@pytest.mark.parametrize("name", ["h264-bframes-aac", "hevc-aac"])
def test_video_with_b_frames_keeps_every_frame(
    generated: Callable[[str], Path], tmp_path: Path, name: str
) -> None:
    """Reordered frames (B-frames, from uploads rather than browsers) are all copied."""
    recording = generated(name)
    streams = ffprobe_json(recording)["streams"]
    assert isinstance(streams, list)
    assert any(s.get("has_b_frames", 0) > 0 for s in streams), "fixture lost its B-frames"
    result = run_merge(recording, generated("connect-8k-mono-2s"), 2.0, tmp_path, ext="mp4")
    assert_same_video_and_duration(result.output, recording, result, AudioSettings())
    assert_timeline(result.output, expected_segments(result.media_duration_seconds, 2.0, 2.0))


def test_recording_without_audio_gets_silence(
    generated: Callable[[str], Path], tmp_path: Path
) -> None:
    recording = generated("h264-noaudio")
    result = run_merge(recording, generated("connect-8k-mono-2s"), 2.0, tmp_path, ext="mp4")
    segs = expected_segments(result.media_duration_seconds, 2.0, 2.0, recording_audio_start=None)
    assert [s.kind for s in segs] == ["connect", "silence"]
    assert_same_video_and_duration(result.output, recording, result, AudioSettings())
    assert_timeline(result.output, segs)


@pytest.mark.parametrize(
    # 16 kHz stereo is covered by test_generated_recordings.
    "connect_name",
    ["connect-8k-mono-2s", "connect-44k-stereo-2s"],
)
def test_connect_formats(
    generated: Callable[[str], Path], tmp_path: Path, connect_name: str
) -> None:
    """Any Connect rate/layout combines: 8k mono, 16k and 44.1k stereo."""
    recording = generated("h264-aac")
    result = run_merge(recording, generated(connect_name), 3.0, tmp_path, ext="mp4")
    assert result.connect_duration_seconds == pytest.approx(2.0, abs=0.01)
    assert_timeline(result.output, expected_segments(result.media_duration_seconds, 3.0, 2.0))


def test_call_end_beyond_end_is_clamped(generated: Callable[[str], Path], tmp_path: Path) -> None:
    before = CALL_END_CLAMPS._value.get()
    recording = generated("h264-aac")
    result = run_merge(recording, generated("connect-16k-stereo-2s"), 20.0, tmp_path, ext="mp4")
    assert result.call_end_clamped
    assert result.call_end_seconds == pytest.approx(result.media_duration_seconds)
    assert CALL_END_CLAMPS._value.get() == before + 1
    duration = result.media_duration_seconds
    assert result.connect_audio_offset_seconds == pytest.approx(duration - 2.0, abs=0.001)
    assert_same_video_and_duration(result.output, recording, result, AudioSettings())
    segs = expected_segments(duration, 20.0, 2.0)
    assert [s.kind for s in segs] == ["silence", "connect"]
    assert_timeline(result.output, segs)


def test_call_end_zero_is_all_recording_audio(
    generated: Callable[[str], Path], tmp_path: Path
) -> None:
    recording = generated("vp9-opus")
    result = run_merge(recording, generated("connect-16k-stereo-2s"), 0.0, tmp_path, ext="webm")
    segs = expected_segments(result.media_duration_seconds, 0.0, 2.0)
    assert [s.kind for s in segs] == ["recording"]
    assert_same_video_and_duration(result.output, recording, result, AudioSettings())
    assert_timeline(result.output, segs)


@pytest.mark.parametrize(
    ("connect_name", "call_end", "head", "connect_duration", "kinds"),
    [
        ("connect-8k-stereo-head-4s", 2.5, 1.0, 4.0, ["head", "connect", "recording"]),
        ("connect-16k-stereo-2s", 3.0, 0.0, 2.0, ["connect", "silence", "recording"]),
    ],
)
def test_start_alignment(
    generated: Callable[[str], Path],
    tmp_path: Path,
    connect_name: str,
    call_end: float,
    head: float,
    connect_duration: float,
    kinds: list[str],
) -> None:
    """The Lambda's behaviour: Connect from t=0 for callEnd seconds (padded if shorter)."""
    recording = generated("h264-aac")
    result = run_merge(
        recording, generated(connect_name), call_end, tmp_path, ext="mp4", align="start"
    )
    segs = expected_segments(
        result.media_duration_seconds, call_end, connect_duration, align="start", head=head
    )
    assert [s.kind for s in segs] == kinds
    assert_timeline(result.output, segs)


def test_stereo_output_keeps_customer_left_agent_right(data_dir: Path, tmp_path: Path) -> None:
    audio = AudioSettings(channels=2, sample_rate=48000, bitrate="96k")
    recording = data_dir / CHROME_H264_OPUS_WEBM
    result = run_merge(recording, data_dir / CONNECT_WAV, 6.0, tmp_path, ext="mp4", audio=audio)
    stream = next(
        s
        for s in ffprobe_json(result.output)["streams"]  # type: ignore[union-attr]
        if s["codec_type"] == "audio"  # type: ignore[index]
    )
    assert (stream["channels"], stream["sample_rate"]) == (2, "48000")  # type: ignore[index]
    assert_same_video_and_duration(result.output, recording, result, audio)
    segs = expected_segments(result.media_duration_seconds, 6.0, 5.0, recording_audio_start=0.021)
    assert_timeline(result.output, segs, stereo=True)


def test_mono_downmix_is_half_left_half_right_not_clipped(data_dir: Path, tmp_path: Path) -> None:
    # The same merge as test_browser_fixture_end_aligned's VP8 case (reused when cached).
    result = run_merge(
        data_dir / CHROME_VP8_OPUS,
        data_dir / CONNECT_WAV,
        6.0,
        tmp_path,
        ext="webm",
        thumbnail=True,
    )
    pcm = decoded(result.output, 1)
    call = window(pcm, 16000, 2.0, 5.0)
    source = decode_pcm(data_dir / CONNECT_WAV, channels=2)
    expected = rms((source[16000:64000, 0] + source[16000:64000, 1]) / 2)
    assert rms(call) == pytest.approx(expected, rel=0.15)
    assert abs(call).max() < 0.99


# --- errors ----------------------------------------------------------------------------------


def test_recording_without_video(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NoVideoStream):
        run_merge(data_dir / CONNECT_WAV, data_dir / CONNECT_WAV, 1.0, tmp_path, ext="mp4")


def test_connect_without_audio(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NoAudioStream):
        run_merge(
            data_dir / CHROME_VP8_OPUS, data_dir / CHROME_VP8_NOAUDIO, 1.0, tmp_path, ext="webm"
        )
    assert not (tmp_path / "recording.webm").exists()


def test_unsupported_video_codec(
    generated: Callable[[str], Path], data_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedMedia, match="mpeg4"):
        run_merge(generated("mpeg4-aac"), data_dir / CONNECT_WAV, 0.5, tmp_path, ext="mp4")


def test_output_extension_must_fit_codec(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedMedia, match=r"\.webm"):
        run_merge(data_dir / CHROME_VP8_OPUS, data_dir / CONNECT_WAV, 1.0, tmp_path, ext="mp4")


@pytest.mark.parametrize("name", ["hls-file", "ffconcat", "empty", "text", "truncated"])
@pytest.mark.parametrize("role", ["recording", "connect"])
def test_hostile_inputs_are_refused(
    hostile_files: dict[str, Path], data_dir: Path, tmp_path: Path, name: str, role: str
) -> None:
    bad = hostile_files[name]
    recording, connect = (
        (bad, data_dir / CONNECT_WAV) if role == "recording" else (data_dir / CHROME_VP8_OPUS, bad)
    )
    if name == "truncated" and role == "recording":
        # A truncated MP4 may probe fine (moov first) and fail in the merge or its check.
        pass
    with pytest.raises(MediaError) as caught:
        run_merge(recording, connect, 1.0, tmp_path, ext="webm" if role == "connect" else "mp4")
    message = str(caught.value)
    assert "\n" not in message and message
    if name in ("hls-file", "ffconcat"):
        assert "not an allowed media container" in message
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing leaked


def test_hls_playlist_never_connects(data_dir: Path, tmp_path: Path) -> None:
    """A playlist pointing at a listening local port: refused, and no connection is made."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        playlist = hls_playlist_to(f"http://127.0.0.1:{port}/seg.ts", tmp_path / "in.mp4")
        out = tmp_path / "out"
        out.mkdir()
        for role in ("recording", "connect"):
            rec, conn = (
                (playlist, data_dir / CONNECT_WAV)
                if role == "recording"
                else (data_dir / CHROME_VP8_OPUS, playlist)
            )
            with pytest.raises(MediaError, match="not an allowed media container"):
                run_merge(rec, conn, 1.0, out, ext="webm")
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody ever connected
        assert list(out.iterdir()) == []
    finally:
        server.close()


def test_passwd_never_leaks_through_playlist(
    tmp_path: Path, hostile_files: dict[str, Path]
) -> None:
    with pytest.raises(MediaError, match="not an allowed"):
        anyio.run(media.probe, hostile_files["hls-file"])
    with pytest.raises(MediaError, match="not an allowed"):
        anyio.run(media.probe, hostile_files["ffconcat"])


def test_timeout_kills_ffmpeg(data_dir: Path, tmp_path: Path) -> None:
    before = FFMPEG_FAILURES.labels(reason="timeout")._value.get()
    options = media.MergeOptions(timeout_base_seconds=0.001, timeout_per_media_second=0.0)

    async def go() -> None:
        recording = await media.probe(data_dir / CHROME_VP8_OPUS)
        request = media.MergeRequest(
            data_dir / CHROME_VP8_OPUS,
            data_dir / CONNECT_WAV,
            6.0,
            tmp_path / "recording.webm",
            None,
            options,
            recording_info=recording,
        )
        await media.merge(request)

    with pytest.raises(MediaTimeout):
        anyio.run(go)
    assert FFMPEG_FAILURES.labels(reason="timeout")._value.get() == before + 1
    assert not _ffmpeg_children()
    assert not (tmp_path / "recording.webm").exists()


def test_cancellation_kills_ffmpeg(data_dir: Path, tmp_path: Path) -> None:
    """Cancelling the caller's scope mid-merge kills and reaps ffmpeg, leaves no output."""
    seen: list[int] = []
    finished: list[bool] = []

    async def go() -> None:
        async with anyio.create_task_group() as group:
            request = media.MergeRequest(
                data_dir / CHROME_VP8_OPUS,
                data_dir / CONNECT_WAV,
                6.0,
                tmp_path / "recording.webm",
                None,
            )

            async def do_merge() -> None:
                await media.merge(request)
                finished.append(True)

            group.start_soon(do_merge)
            # Wait until the merge's ffmpeg (not a probe) runs, then cancel everything.
            while not finished:
                running = [p for p in _ffmpeg_children() if p.name() == "ffmpeg"]
                if running:
                    seen.extend(p.pid for p in running)
                    group.cancel_scope.cancel()
                    break
                await anyio.sleep(0.005)

    anyio.run(go)
    assert seen and not finished, "the merge finished before it could be cancelled"
    assert not _ffmpeg_children()
    assert not any(_is_live(pid) for pid in seen)
    assert not (tmp_path / "recording.webm").exists()


def _ffmpeg_children() -> list[psutil.Process]:
    me = psutil.Process(os.getpid())
    return [p for p in me.children(recursive=True) if p.name() in ("ffmpeg", "ffprobe")]


def _is_live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_disk_full_is_scratch_full(data_dir: Path, tmp_path: Path) -> None:
    """ENOSPC while writing (output symlinked to /dev/full) -> ScratchFull, not a media error."""
    (tmp_path / "recording.webm").symlink_to("/dev/full")
    with pytest.raises(ScratchFull, match="no space left"):
        run_merge(data_dir / CHROME_VP8_OPUS, data_dir / CONNECT_WAV, 6.0, tmp_path, ext="webm")
    assert not (tmp_path / "recording.webm").is_symlink()


def test_header_claiming_hours_is_not_trusted(
    generated: Callable[[str], Path], data_dir: Path, tmp_path: Path
) -> None:
    """A WebM whose header says 3 hours but holds 4 s: the real end comes from packets."""
    source = generated("vp9-opus").read_bytes()
    at = source.find(b"\x44\x89\x88")  # Matroska Duration element, 8-byte float (ms)
    assert at > 0
    lying = bytearray(source)
    struct.pack_into(">d", lying, at + 3, 3 * 3600 * 1000.0)
    path = tmp_path / "lying.webm"
    path.write_bytes(bytes(lying))
    info = anyio.run(media.probe, path)
    assert info.duration == pytest.approx(timeline_duration(path), abs=0.001)
    assert info.duration < 5
    out = tmp_path / "out"
    out.mkdir()
    result = run_merge(path, data_dir / CONNECT_WAV, 2.0, out, ext="webm")
    assert result.media_duration_seconds == pytest.approx(info.duration)
    assert_same_video_and_duration(result.output, path, result, AudioSettings())


def test_missing_ffprobe_is_a_config_error(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ffmpeg_module, "FFPROBE", "ffprobe-not-installed-here")
    with pytest.raises(ConfigError, match="not installed"):
        anyio.run(media.probe, data_dir / CONNECT_WAV)


@pytest.mark.anyio
async def test_process_killed_by_a_signal_is_transient_not_bad_media() -> None:
    # The OOM killer's SIGKILL says nothing about the media: the job must be retried.
    from worker.errors import MediaProcessKilled, TransientError

    with pytest.raises(MediaProcessKilled, match="signal 9") as caught:
        await ffmpeg_module.run(["sh", "-c", "kill -9 $$"], timeout=10, what="ffmpeg (merge)")
    assert isinstance(caught.value, TransientError)


@pytest.mark.parametrize("call_end", [2.0, 8.0])
def test_microphone_that_stopped_early_leaves_silence_not_a_short_output(
    tmp_path: Path, call_end: float
) -> None:
    # 12 s of screen, but the microphone track ends at 3 s (muted or unplugged): the tail is
    # the mic where there was one and silence after, and the output is still 12 s long.
    recording = make_recording(tmp_path / "mic-stops.mp4", duration=12, audio_duration=3)
    connect = make_tone_wav(tmp_path / "connect.wav", [(2.0, [440, 440])])
    out = tmp_path / "out"
    out.mkdir()
    result = anyio.run(
        media.merge,
        media.MergeRequest(recording, connect, call_end, out / "recording.mp4", None),
    )
    assert result.media_duration_seconds == pytest.approx(12.0, abs=0.1)
    assert stream_end(result.output, "a:0") == pytest.approx(12.0, abs=0.08)
    pcm = decode_pcm(result.output)
    if call_end < 3.0:  # the mic is there until 3 s
        assert band_share(window(pcm, 16000, call_end + 0.1, 2.9), 16000, 1000) > 0.8
    assert rms(window(pcm, 16000, max(call_end, 3.0) + 0.2, 11.8)) < 1e-3


def test_every_probe_of_a_merge_uses_the_configured_time_limit(
    generated: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FFMPEG_TIMEOUT_BASE_SECONDS, not a hard-coded 60 s: the output probe of a long recording
    # on a loaded host needs the same room as the input probes.
    real_probe = media.probe
    limits: dict[str, float] = {}

    async def spy(path: Path, *, timeout: float = 60.0, **how: Any) -> media.MediaInfo:
        limits[path.name] = timeout
        return await real_probe(path, timeout=timeout, **how)

    monkeypatch.setattr(media_run, "probe", spy)
    request = media.MergeRequest(
        recording=generated("h264-aac"),
        connect_audio=generated("connect-8k-mono-2s"),
        call_end_seconds=2.0,
        output=tmp_path / "recording.mp4",
        thumbnail=None,
        options=media.MergeOptions(timeout_base_seconds=7.5),
    )
    anyio.run(media.merge, request)
    assert limits.keys() >= {"recording.mp4", request.recording.name, "connect-8k-mono-2s.wav"}
    assert set(limits.values()) == {7.5}, limits
