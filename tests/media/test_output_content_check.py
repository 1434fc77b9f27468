"""The end-to-end runs' output check can fail (issue 18 item 7).

The hostile corpus, the fault-injection run and the soak judge every merged output with
:func:`tests.harness.media_tools.unified_output_problems` (decoded frames and tones; for their
small contact :func:`tests.harness.hostile_support.small_contact_problems`) instead of the
container's header duration. Here a real merge of the small contact passes it, and outputs
that are wrong in what they hold - while their header still gives the right duration - do
not.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.harness import hostile_support as hs
from tests.harness.media_tools import ffmpeg, probe_duration
from worker.media import MergeRequest, merge


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2 s recording (1 kHz), the call's Connect WAV (440/660 Hz), another call (300 Hz)."""
    folder = tmp_path_factory.mktemp("content-check")
    other_call = hs.make_connect_wav(folder / "o.wav", left=300, right=300)
    return {**hs.make_small_contact(folder), "other_call": other_call}


def _merge(inputs: dict[str, Path], connect: Path, output: Path) -> Path:
    request = MergeRequest(
        recording=inputs["recording"],
        connect_audio=connect,
        call_end_seconds=hs.SMALL_CALL_END,
        output=output,
        thumbnail=output.with_suffix(".png"),
    )
    anyio.run(merge, request)
    return output


@pytest.fixture(scope="module")
def merged(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real merge of the recording with its call."""
    folder = tmp_path_factory.mktemp("content-check-out")
    return _merge(inputs, inputs["connect"], folder / "out.mp4")


def _problems(output: Path, inputs: dict[str, Path]) -> list[str]:
    return hs.small_contact_problems(output, inputs["recording"])


def test_a_real_merge_passes(merged: Path, inputs: dict[str, Path]) -> None:
    assert _problems(merged, inputs) == []


def test_audio_replaced_by_silence_fails(
    merged: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    silent = tmp_path / "silent.mp4"
    ffmpeg("-i", str(merged), "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo",
           "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-shortest",
           str(silent))  # fmt: skip
    assert probe_duration(silent) == pytest.approx(2.0, abs=0.15), "the header check passes"
    problems = _problems(silent, inputs)
    assert any(p.startswith("call at") for p in problems), problems
    assert any(p.startswith("after call work at") for p in problems), problems


def test_another_calls_audio_fails(merged: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    wrong = _merge(inputs, inputs["other_call"], tmp_path / "wrong.mp4")
    assert probe_duration(wrong) == pytest.approx(2.0, abs=0.15), "the header check passes"
    problems = _problems(wrong, inputs)
    assert problems and all(p.startswith("call at") for p in problems), problems


def test_lost_frames_fail(merged: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    # The video cut after 1.5 s (its last frames lost), the audio whole.
    cut = tmp_path / "cut.mp4"
    ffmpeg("-i", str(merged), "-map", "0:v", "-map", "0:a", "-c", "copy",
           "-frames:v", "15", str(cut))  # fmt: skip
    problems = _problems(cut, inputs)
    assert any(p.startswith("video: 15 decoded frames") for p in problems), problems
