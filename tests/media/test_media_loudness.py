"""Both loudness stretches measured in one ffmpeg run give exactly the numbers of one run
each (real ffmpeg, real media): the Connect audio's stretch and the recording's microphone."""

from __future__ import annotations

import subprocess
from functools import partial
from pathlib import Path

import anyio
import pytest

from tests.harness.media_tools import make_recording, make_tone_wav
from worker.media import loudness
from worker.media.measure import measure_gains


def separately(stretch: loudness.Stretch) -> float | None:
    """The measurement as one run of its own (ffmpeg's whole stderr)."""
    run = subprocess.run(loudness.build_measure_args(stretch), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-500:]
    return loudness.parse_integrated(run.stderr.splitlines())


def test_one_run_gives_each_stretch_its_own_run_s_numbers(tmp_path: Path) -> None:
    # A quiet 440 Hz then a louder 660 Hz on the Connect side; the microphone's 1 kHz tone.
    connect = make_tone_wav(
        tmp_path / "connect.wav", [(20.0, [440.0, 0.0]), (20.0, [660.0, 660.0])]
    )
    recording = make_recording(tmp_path / "recording.mp4", duration=30.0, tone=1000.0)
    connect_stretch = loudness.Stretch(
        connect, 0, 10.0, 25.0, ["pan=mono|c0=0.5*c0+0.5*c1", "aresample=16000"]
    )
    recording_stretch = loudness.Stretch(recording, 1, 5.0, 20.0, ["aresample=16000"])
    gains = anyio.run(
        partial(measure_gains, connect_stretch, recording_stretch, -18.0, timeout=60.0)
    )
    expected = separately(connect_stretch), separately(recording_stretch)
    assert None not in expected
    assert (gains.connect_lufs, gains.recording_lufs) == expected
    assert gains.connect_lufs != gains.recording_lufs  # two different measurements
    assert gains.connect_db == pytest.approx(-18.0 - expected[0])  # type: ignore[operator]


def test_a_recording_without_audio_measures_the_connect_stretch_alone(tmp_path: Path) -> None:
    connect = make_tone_wav(tmp_path / "connect.wav", [(10.0, [440.0])])
    stretch = loudness.Stretch(connect, 0, 0.0, 10.0, ["aresample=16000"])
    gains = anyio.run(partial(measure_gains, stretch, None, -18.0, timeout=60.0))
    assert gains.connect_lufs == separately(stretch) and gains.connect_lufs is not None
    assert (gains.recording_lufs, gains.recording_db) == (None, 0.0)
