"""Media fixtures (real files, real ffmpeg).

- ``data_dir``: ``tests/data`` (copies of the real browser recordings of ``../shared/fixtures``).
- ``media_dir``: one session-scoped temporary folder for generated media (never in git).
- ``generated``: a session-scoped factory of small synthetic recordings and Connect WAVs made
  with ffmpeg's lavfi sources, cached by name so each is generated once per session.
- ``hostile_files``: playlists and scripts disguised as ``.mp4``, empty/truncated/text files.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.media_tools import make_recording, make_tone_wav

DATA_DIR = Path(__file__).resolve().parents[1] / "data"

# Real browser recordings and the Connect-shaped WAV (see tests/data/README.md).
CHROME_VP8_OPUS = "chrome-vp8-opus-8s.webm"
CHROME_H264_OPUS_WEBM = "chrome-h264-opus-8s.webm"
CHROME_AVC1_OPUS_MP4 = "chrome-avc1-opus-8s.mp4"
CHROME_VP8_NOAUDIO = "chrome-vp8-noaudio-8s.webm"
CONNECT_WAV = "connect-8k-stereo-5s.wav"

# Tone plan of every synthetic file: recording 1000 Hz; Connect 440 left / 660 right
# (mono Connect: 440); the head of a "long" Connect file: 300 Hz.
RECORDING_TONE = 1000.0
CUSTOMER_TONE = 440.0
AGENT_TONE = 660.0
HEAD_TONE = 300.0

_RECORDINGS: dict[str, tuple[str, dict[str, object]]] = {
    # name: (suffix, make_recording kwargs)
    "h264-aac": ("mp4", {"video_codec": "libx264", "audio_codec": "aac"}),
    "h264-aac-late": ("mp4", {"video_codec": "libx264", "audio_codec": "aac", "audio_delay": 0.5}),
    "h264-noaudio": ("mp4", {"video_codec": "libx264", "audio_codec": None}),
    "vp9-opus": ("webm", {"video_codec": "libvpx-vp9", "audio_codec": "libopus"}),
    "vp9-opus-late": (
        "webm",
        {"video_codec": "libvpx-vp9", "audio_codec": "libopus", "audio_delay": 0.5},
    ),
    "mpeg4-aac": ("mp4", {"video_codec": "mpeg4", "audio_codec": "aac", "duration": 1.0}),
    # Not from a browser: uploaded or re-encoded files, with B-frames (frames reordered).
    "h264-bframes-aac": (
        "mp4",
        {"video_codec": "libx264", "audio_codec": "aac", "video_args": ["-bf", "3", "-g", "30"]},
    ),
    "hevc-aac": (
        "mp4",
        {
            "video_codec": "libx265",
            "audio_codec": "aac",
            "video_args": ["-preset", "ultrafast", "-x265-params", "log-level=error:bframes=3"],
        },
    ),
}

_CONNECTS: dict[str, tuple[list[tuple[float, list[float]]], int]] = {
    # name: (segments, sample rate)
    "connect-8k-mono-2s": ([(2.0, [CUSTOMER_TONE])], 8000),
    "connect-16k-stereo-2s": ([(2.0, [CUSTOMER_TONE, AGENT_TONE])], 16000),
    "connect-44k-stereo-2s": ([(2.0, [CUSTOMER_TONE, AGENT_TONE])], 44100),
    # 1 s of a distinct head tone, then the call: END alignment must cut the head away.
    "connect-8k-stereo-head-4s": (
        [(1.0, [HEAD_TONE, HEAD_TONE]), (3.0, [CUSTOMER_TONE, AGENT_TONE])],
        8000,
    ),
}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``tests/data``: real browser recordings and the Connect-shaped WAV."""
    return DATA_DIR


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide scratch folder for generated media."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def generated(media_dir: Path) -> Callable[[str], Path]:
    """``generated(name)``: a synthetic recording or Connect WAV, made once per session.

    Recordings (4 s, 160x120, 1000 Hz tone): h264-aac, h264-aac-late (audio from 0.5 s),
    h264-noaudio, vp9-opus, vp9-opus-late, mpeg4-aac (unsupported codec).
    Connect WAVs: connect-8k-mono-2s, connect-16k-stereo-2s, connect-44k-stereo-2s,
    connect-8k-stereo-head-4s (300 Hz for 1 s, then 440/660 Hz for 3 s).
    """
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name in cache:
            return cache[name]
        if name in _RECORDINGS:
            suffix, kwargs = _RECORDINGS[name]
            path = make_recording(media_dir / f"{name}.{suffix}", **kwargs)  # type: ignore[arg-type]
        elif name in _CONNECTS:
            segments, rate = _CONNECTS[name]
            path = make_tone_wav(media_dir / f"{name}.wav", segments, rate=rate)
        else:
            raise KeyError(f"no generated media named {name!r}")
        cache[name] = path
        return path

    return make


@pytest.fixture(scope="session")
def hostile_files(media_dir: Path, data_dir: Path) -> dict[str, Path]:
    """Files that must be refused: playlists/scripts disguised as .mp4, broken media."""
    folder = media_dir / "hostile"
    folder.mkdir(exist_ok=True)
    files = {
        "hls-file": "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n"
        "#EXT-X-ENDLIST\n",
        "ffconcat": "ffconcat version 1.0\nfile /etc/passwd\nfile /etc/hostname\n",
        "text": "this is not a video, just some text\n" * 20,
        "empty": "",
    }
    out: dict[str, Path] = {}
    for name, text in files.items():
        path = folder / f"{name}.mp4"
        path.write_text(text)
        out[name] = path
    source = (data_dir / CHROME_AVC1_OPUS_MP4).read_bytes()
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(source[: len(source) // 3])
    out["truncated"] = truncated
    return out


def hls_playlist_to(url: str, path: Path) -> Path:
    """Write an HLS playlist whose only segment is ``url``, disguised as ``path``."""
    path.write_text(
        f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{url}\n"
        "#EXT-X-ENDLIST\n"
    )
    return path


def copy_fixture(data_dir: Path, name: str, dest: Path) -> Path:
    """Copy a tests/data file to ``dest`` (a folder), returning the copy's path."""
    return Path(shutil.copy(data_dir / name, dest / name))
