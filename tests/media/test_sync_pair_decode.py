"""A sync window's two stretches decoded in one ffmpeg run (issue 18: one process start fewer
per window) give the very samples of the two separate decodes, on real browser recordings and
the Connect-shaped WAV: same values, same lengths, a stretch its file ends early included."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

from worker.media.sync_decode import decode, decode_stretches
from worker.media.sync_plan import (
    StretchSource,
    build_decode_args,
    build_pair_decode_args,
    build_stretches_decode_args,
)

CONNECT = "connect-8k-stereo-5s.wav"  # 5 s, stereo: the agent is the right channel

# (recording, its audio stream, channels, Connect seek/seconds, recording seek/seconds)
CASES = [
    # Both whole inside their files; the microphone the longer (padding on the Connect side).
    ("chrome-avc1-opus-8s.mp4", 1, 2, 0.5, 3.0, 1, 6.0),
    # Both cut short by their files' ends, a mono microphone first in its file.
    ("chrome-vp9-silent-lead-10s.webm", 0, 1, 1.25, 30.0, 2, 50.0),
    # The Connect stretch the longer (padding on the microphone's side), a late video.
    ("chrome-avc1-late-video-10s.mp4", 0, 1, 0.0, 4.5, 5, 3.0),
    # The Connect seek past its end: an empty stretch (too short), the other one whole.
    ("firefox-vp8-opus-10s.webm", 1, 1, 9.0, 4.0, 0, 6.0),
]


def _separate(source: StretchSource) -> np.ndarray:
    args = build_decode_args(
        source.path, source.stream_index, channels=source.channels, agent=source.agent,
        seek=source.seek, seconds=source.seconds,
    )  # fmt: skip
    return anyio.run(lambda: decode(args, timeout=60, what="separate decode"))


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_one_run_equals_the_two_separate_decodes(
    data_dir: Path, case: tuple[str, int, int, float, float, int, float]
) -> None:
    name, index, channels, connect_seek, connect_seconds, seek, seconds = case
    connect = StretchSource(data_dir / CONNECT, 0, 2, True, connect_seek, connect_seconds)
    recording = StretchSource(data_dir / name, index, channels, False, seek, seconds)
    args = build_pair_decode_args(connect, recording)
    reference, signal = anyio.run(lambda: decode_stretches(args, 2, timeout=60))
    for paired, source in ((reference, connect), (signal, recording)):
        alone = _separate(source)
        assert paired.size == alone.size <= round(source.seconds * 8000)
        np.testing.assert_array_equal(paired, alone)
    # The cases mean what they say: the right stretches really are short or empty.
    expected_short = {"chrome-vp9-silent-lead-10s.webm": (True, True),
                      "firefox-vp8-opus-10s.webm": (True, False)}  # fmt: skip
    short = (reference.size < round(connect_seconds * 8000), signal.size < round(seconds * 8000))
    assert short == expected_short.get(name, (False, False))
    assert (reference.size == 0) == (connect_seek >= 5.0)
    assert np.abs(signal).max() > 0.01  # real microphone audio, not padding


def test_several_windows_in_one_run_equal_their_separate_decodes(data_dir: Path) -> None:
    """The drift points' windows (issue 19: one process start for all of them): every
    stretch of every case in one run, each as its own decode gives it, short ones too."""
    sources = []
    for name, index, channels, connect_seek, connect_seconds, seek, seconds in CASES:
        sources.append(StretchSource(data_dir / CONNECT, 0, 2, True, connect_seek, connect_seconds))
        sources.append(StretchSource(data_dir / name, index, channels, False, seek, seconds))
    args = build_stretches_decode_args(sources)
    together = anyio.run(lambda: decode_stretches(args, len(sources), timeout=60))
    assert len(together) == len(sources)
    for stretch, source in zip(together, sources, strict=True):
        np.testing.assert_array_equal(stretch, _separate(source))
    assert {stretch.size for stretch in together} > {0, round(6.0 * 8000)}  # short, empty, whole
