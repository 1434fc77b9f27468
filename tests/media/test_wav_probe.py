"""The Connect audio's probe read from its RIFF header (no ffprobe run) gives what ffprobe's
run gives; any other WAV still goes to ffprobe, with the same result or error."""

from __future__ import annotations

import functools
from pathlib import Path

import anyio
import pytest

from tests.harness.media_tools import count_runs, ffmpeg
from worker import media
from worker.errors import MediaError
from worker.media import probing


def _probe_counting(
    path: Path, monkeypatch: pytest.MonkeyPatch, *, python: bool = True
) -> tuple[media.MediaInfo | MediaError, list[str]]:
    """The Connect audio's probe of ``path`` (or its error) and the processes it ran; with
    ``python`` False, as before: ffprobe only."""
    with monkeypatch.context() as patch:
        runs = count_runs(patch)
        if not python:
            patch.setattr(probing, "wav_probe", lambda *_: None)
        try:
            return anyio.run(functools.partial(media.probe, path, one_run=True)), runs
        except MediaError as error:
            return error, runs


def _wav(path: Path, seconds: str, rate: int, channels: int, *extra: str) -> Path:
    layout = "mono" if channels == 1 else "stereo"
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={rate}:duration={seconds}",
           "-ac", str(channels), "-channel_layout", layout, *extra, str(path))  # fmt: skip
    return path


PLAIN = [
    ("8k-stereo", "5", 8000, 2, ()),
    ("8k-mono-odd", "3.000125", 8000, 1, ()),
    ("16k-mono", "2.5", 16000, 1, ("-bitexact",)),  # no LIST chunk
    ("44k1-stereo-odd", "1.2345", 44100, 2, ()),
    ("48k-stereo", "0.01", 48000, 2, ()),
]


@pytest.mark.parametrize(("name", "seconds", "rate", "channels", "extra"), PLAIN,
                         ids=[p[0] for p in PLAIN])  # fmt: skip
def test_a_plain_pcm_wav_is_probed_without_a_process(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    seconds: str,
    rate: int,
    channels: int,
    extra: tuple[str, ...],
) -> None:
    path = _wav(tmp_path / f"{name}.wav", seconds, rate, channels, *extra)
    read, runs = _probe_counting(path, monkeypatch)
    assert runs == []
    probed, ffprobe_runs = _probe_counting(path, monkeypatch, python=False)
    assert ffprobe_runs == [f"probe of {path.name}"]
    assert read == probed


def _patched(source: Path, out: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(source.read_bytes())
    raw[offset : offset + len(data)] = data
    out.write_bytes(bytes(raw))
    return out


def _unusual(tmp_path: Path, kind: str) -> Path:
    """A WAV the header reader leaves to ffprobe (``kind``), made from a plain one."""
    plain = _wav(tmp_path / "plain.wav", "2", 8000, 2, "-bitexact")  # fmt, then data at 36
    out = tmp_path / f"{kind}.wav"
    size = plain.stat().st_size
    if kind == "alaw":
        return _wav(out, "2", 8000, 2, "-c:a", "pcm_alaw")
    if kind == "24-bit":
        return _wav(out, "2", 8000, 2, "-c:a", "pcm_s24le")
    if kind == "truncated":  # the data chunk claims more than the file holds
        out.write_bytes(plain.read_bytes()[: size - 8000])
        return out
    if kind == "trailing":  # a chunk after the data
        out.write_bytes(plain.read_bytes() + b"junk\x04\x00\x00\x00abcd")
        return out
    if kind == "odd-block":  # half a sample frame at the end
        raw = bytearray(plain.read_bytes()[: size - 2])
        raw[40:44] = (size - 2 - 44).to_bytes(4, "little")
        out.write_bytes(bytes(raw))
        return out
    if kind == "zero-data":
        raw = bytearray(plain.read_bytes()[:44])
        raw[40:44] = bytes(4)
        out.write_bytes(bytes(raw))
        return out
    if kind == "not-wav":
        out.write_bytes(b"RIFX" + plain.read_bytes()[4:])
        return out
    assert kind == "wrong-byte-rate"
    return _patched(plain, out, 28, (12345).to_bytes(4, "little"))


UNUSUAL = ["alaw", "24-bit", "truncated", "trailing", "odd-block", "zero-data", "not-wav",
           "wrong-byte-rate"]  # fmt: skip


@pytest.mark.parametrize("kind", UNUSUAL)
def test_any_other_wav_goes_to_ffprobe_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path = _unusual(tmp_path, kind)
    read, runs = _probe_counting(path, monkeypatch)
    before, runs_before = _probe_counting(path, monkeypatch, python=False)
    assert runs == runs_before and runs[0] == f"probe of {path.name}"
    if isinstance(before, MediaError):
        assert type(read) is type(before) and str(read) == str(before)
        assert "\n" not in str(read)
    else:
        assert read == before


def test_the_unusual_cases_include_refused_files(tmp_path: Path) -> None:
    """The comparison above covers errors too: these are refused, with a one-line reason."""
    for kind in ("zero-data", "not-wav"):
        with pytest.raises(MediaError, match=r"^[^\n]+$"):
            anyio.run(functools.partial(media.probe, _unusual(tmp_path, kind), one_run=True))
