"""Hostile media through the merge engine alone (the same files through a real worker:
tests/e2e/test_hostile_media_worker.py).

Engine level (no AWS): each hostile recording goes through ``worker.media.merge`` with a valid
Connect WAV and must fail with its typed error and a one-line reason — or, for headers that lie
about the duration, succeed with the real duration. Playlists and concat scripts point at
``/etc/passwd`` and at a listening socket that must see no connection.

End to end: the corpus cases of kind ``media``, ``connect`` and ``row`` (harness/hostile_corpus.py)
run through one ``komorebi-worker run`` process; each case's outcome is checked here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.harness import hostile_support as hs
from worker.errors import MediaError, NoVideoStream
from worker.media import MergeRequest, merge


@pytest.fixture(scope="module")
def trap() -> Iterator[hs.ListeningTrap]:
    """A listening socket hostile files point at; it must never see a connection."""
    listener = hs.ListeningTrap()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Valid inputs to derive hostile files from."""
    folder = tmp_path_factory.mktemp("hostile-media")
    hs.make_recording(folder / "rec.mp4")
    hs.make_webm(folder / "rec.webm")
    hs.make_connect_wav(folder / "connect.wav")
    hs.make_png(folder / "image.png")
    hs.make_audio_only(folder / "audio.m4a")
    return folder


def _hostile(name: str, folder: Path, trap_port: int) -> bytes:
    rec = (folder / "rec.mp4").read_bytes()
    url = f"http://127.0.0.1:{trap_port}/segment"
    makers = {
        "zero_bytes": lambda: b"",
        "truncated_mp4_no_moov": lambda: hs.truncate_before_moov(rec),
        "truncated_webm": lambda: (hs.FIXTURES / "chrome-vp8-opus-8s.webm").read_bytes()[:1500],
        "truncated_fragmented_mp4": lambda: (hs.FIXTURES / "chrome-avc1-opus-8s.mp4").read_bytes()[
            :20000
        ],
        "png_image": lambda: (folder / "image.png").read_bytes(),
        "audio_only": lambda: (folder / "audio.m4a").read_bytes(),
        "wav_renamed_mp4": lambda: (hs.FIXTURES / "connect-8k-stereo-5s.wav").read_bytes(),
        "hls_file_passwd": lambda: hs.hls_playlist("file:///etc/passwd"),
        "hls_http_local": lambda: hs.hls_playlist(url),
        "ffconcat_file_passwd": lambda: hs.ffconcat_script("file:///etc/passwd"),
        "ffconcat_http_local": lambda: hs.ffconcat_script(url),
        "passwd_text": lambda: Path("/etc/passwd").read_bytes(),
    }
    return makers[name]()


# name -> (expected error class, expected reason)
ENGINE_FAILURES = {
    "zero_bytes": (MediaError, "media_invalid"),
    "truncated_mp4_no_moov": (MediaError, "media_invalid"),
    "truncated_webm": (MediaError, "media_invalid"),
    # The fragment index promises 3.4 s, the packets stop at 2.2 s: refused at the probe.
    "truncated_fragmented_mp4": (MediaError, "media_invalid"),
    "png_image": (MediaError, "media_not_allowed"),
    "audio_only": (NoVideoStream, "media_no_video"),
    "wav_renamed_mp4": (NoVideoStream, "media_no_video"),
    "hls_file_passwd": (MediaError, "media_not_allowed"),
    "hls_http_local": (MediaError, "media_not_allowed"),
    "ffconcat_file_passwd": (MediaError, "media_not_allowed"),
    "ffconcat_http_local": (MediaError, "media_not_allowed"),
    "passwd_text": (MediaError, "media_invalid"),
}


@pytest.mark.parametrize("name", sorted(ENGINE_FAILURES))
def test_engine_rejects_hostile_recording(
    name: str, media_dir: Path, trap: hs.ListeningTrap, tmp_path: Path
) -> None:
    """Each hostile recording fails with its typed error, one line, nothing leaked."""
    recording = tmp_path / "recording.mp4"
    recording.write_bytes(_hostile(name, media_dir, trap.port))
    output, thumbnail = tmp_path / "out.mp4", tmp_path / "thumb.png"
    request = MergeRequest(
        recording=recording,
        connect_audio=media_dir / "connect.wav",
        call_end_seconds=1.0,
        output=output,
        thumbnail=thumbnail,
    )
    error_class, reason = ENGINE_FAILURES[name]
    with pytest.raises(MediaError) as caught:
        anyio.run(merge, request)
    assert isinstance(caught.value, error_class), repr(caught.value)
    assert caught.value.reason == reason
    message = str(caught.value)
    assert "\n" not in message and 0 < len(message) < 500
    assert hs.leaks(message) == []
    assert not output.exists() and not thumbnail.exists(), "a failed merge left a file behind"
    assert trap.connections == 0, "ffmpeg connected to the URL in a hostile file"


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_engine_ignores_header_claiming_hours(
    container: str, media_dir: Path, tmp_path: Path
) -> None:
    """A 2 s file whose header claims 3 hours merges to 2 s, not hours (and not a hang)."""
    source = (media_dir / f"rec.{container}").read_bytes()
    lying = hs.claim_hours_mp4(source) if container == "mp4" else hs.claim_hours_webm(source)
    recording = tmp_path / f"recording.{container}"
    recording.write_bytes(lying)
    claimed = hs.probe_file(recording).duration
    assert claimed > 3600, "the patch must make the header claim hours"
    output = tmp_path / f"out.{container}"
    result = anyio.run(
        merge,
        MergeRequest(
            recording=recording,
            connect_audio=media_dir / "connect.wav",
            call_end_seconds=1.0,
            output=output,
            thumbnail=tmp_path / "thumb.png",
        ),
    )
    assert result.media_duration_seconds == pytest.approx(2.0, abs=0.1)
    assert hs.probe_file(output).duration == pytest.approx(2.0, abs=0.1)
    # By content: every frame of the honest file, the call's tones, then the recording's.
    assert hs.small_contact_problems(output, media_dir / f"rec.{container}") == []
