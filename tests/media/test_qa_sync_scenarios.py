"""Issue 19 QA: the call-end sync on other voices, rooms, stops, starts and drifts.

Media (tests/harness/speech_media.py, pool ``intl``): Spanish and French telephony prompts read
by two women as the agent, men and women of codec2's samples as the customer; rooms with a
long reverberation, the customer heard through the headset, music on hold (asterisk's) on the
line and in the room, microphones that start late or die near the end, Connect files started
late or stopped early, timestamps tens of seconds off, clocks drifting either way.

The rules every case keeps: the Connect audio's error against the microphone (measured in the
merged file by content) at the start, middle and end of the call is at most 20 ms, its median
at most 5 ms; a case that is not confident keeps the timestamp (method ``timestamp``, the
Connect audio END-aligned on it, found there by content) - a confident wrong answer is the
worst defect; no drift above 300 ppm is ever applied.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.harness.media_tools import decode_pcm
from tests.harness.speech_media import (
    MAX_ERROR_SECONDS,
    CaseSpec,
    SpeechCase,
    alignment_errors,
    assert_within_targets,
    call_times,
    connect_placement,
    make_speech_case,
    merge_case,
    message_call_end,
)
from worker import media

INTL = {"voices": -1, "pool": "intl"}


@dataclass(frozen=True)
class Scenario:
    """A case, the message's timestamp error (s) and the sync it must give: ``waveform`` /
    ``waveform_wide`` (measured, within the error rules) or ``timestamp`` (kept)."""

    spec: CaseSpec
    timestamp_error: float
    expect: str


MEASURED = {
    # A 0.8 s room as loud as the voice, noise at -40 dBFS; the timestamp 12 s early.
    "reverberant-room-timestamp-12s-early": Scenario(
        CaseSpec(
            "qa-reverb",
            **INTL,
            call_seconds=60,
            reverb_seconds=0.8,
            reverb_level=0.8,
            noise_db=-40,
            container="webm",
        ),
        -12.0,
        "waveform_wide",
    ),
    # The customer heard through the headset at -18 dB; the timestamp 45 s late (the audio
    # cannot tell it from an early stop: the Connect audio placed, the call end kept).
    "headset-crosstalk-timestamp-45s-late": Scenario(
        CaseSpec(
            "qa-crosstalk",
            **INTL,
            seed=3,
            call_seconds=45,
            crosstalk_db=-18,
            container="mp4-aac",
            acw_seconds=50,
        ),
        45.0,
        "waveform_wide",
    ),
    # StopContactRecording 45 s before the call end.
    "early-stop-45s": Scenario(
        CaseSpec("qa-early45", **INTL, seed=4, call_seconds=75, early_stop=45, container="webm"),
        0.4,
        "waveform_wide",
    ),
    # The contact flow starts recording 10 s into the call.
    "late-start-10s": Scenario(
        CaseSpec(
            "qa-late10",
            **INTL,
            seed=5,
            call_seconds=50,
            connect_start=13.0,
            late_start=10,
            container="mp4",
        ),
        2.2,
        "waveform",
    ),
    # 30 s of hold music (the same tune on the line and from the speakers) mid-call.
    "hold-music-mid-call": Scenario(
        CaseSpec(
            "qa-hold-mid", **INTL, seed=11, call_seconds=60, hold=(15.0, 40.0), container="webm"
        ),
        3.0,
        "waveform",
    ),
    # The microphone's audio stream starts 20 s after the screen's.
    "microphone-starts-late": Scenario(
        CaseSpec("qa-mic-late", **INTL, seed=13, call_seconds=50, mic_start=20, container="webm"),
        1.0,
        "waveform",
    ),
    # The microphone dead for 10 s inside the last 30 s of the call.
    "microphone-gap-near-the-end": Scenario(
        CaseSpec(
            "qa-mic-gap",
            **INTL,
            seed=14,
            call_seconds=50,
            connect_start=2,
            mic_gap=(34.0, 44.0),
            container="mp4",
        ),
        -1.0,
        "waveform",
    ),
    # SuspendContactRecording for 8 s shortly before the end.
    "suspended-near-the-end": Scenario(
        CaseSpec(
            "qa-susp-end",
            **INTL,
            seed=15,
            call_seconds=50,
            suspended=(38.0, 46.0),
            container="webm",
        ),
        1.5,
        "waveform",
    ),
}
# The Connect file is mostly a 20 s loop of hold music, the room hears the same loop (one
# recording, two timestamps).
MOSTLY_HOLD = CaseSpec(
    "qa-mostly-hold", **INTL, seed=12, call_seconds=50, hold=(4.0, 46.0), acw_seconds=50,
    container="mp4",
)  # fmt: skip
KEPT = {
    # The Connect file is mostly a 20 s loop of hold music, the room hears the same loop.
    "mostly-hold-music": Scenario(
        MOSTLY_HOLD,
        2.0,
        "timestamp",
    ),
    "mostly-hold-music-timestamp-45s-late": Scenario(
        MOSTLY_HOLD,
        45.0,
        "timestamp",
    ),
    # Other people's call (other voices, same pool) on the microphone.
    "other-people-intl": Scenario(
        CaseSpec("qa-other", **INTL, seed=16, mic="other", call_seconds=45, container="mp4"),
        2.0,
        "timestamp",
    ),
}
SCENARIOS = {**MEASURED, **KEPT}


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qa-sync")


@functools.cache
def _case(directory: Path, spec: CaseSpec) -> SpeechCase:
    return make_speech_case(directory, spec)


@functools.cache
def _merged(directory: Path, name: str) -> tuple[SpeechCase, media.MergeResult, float]:
    """The scenario's case, its merge (once per session) and the message's call end."""
    scenario = SCENARIOS[name]
    case = _case(directory, scenario.spec)
    call_end = min(message_call_end(case.true_call_end, scenario.timestamp_error), case.duration)
    ext = "webm" if scenario.spec.container == "webm" else "mp4"
    result = merge_case(case, call_end, directory / f"out-{name}.{ext}")
    return case, result, call_end


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


@pytest.mark.parametrize("name", list(MEASURED))
def test_the_connect_audio_is_placed_within_the_rules(qa_dir: Path, name: str) -> None:
    case, result, call_end = _merged(qa_dir, name)
    assert (result.sync.method, result.sync.reason) == (SCENARIOS[name].expect, "measured")
    # The output's own audio after the Connect end is the microphone's (early stop or a late
    # timestamp: the call end is kept, the recording plays from the Connect end).
    connect_end = result.connect_audio_offset_seconds + case.connect_duration
    assert_within_targets(alignment_errors(result.output, case, connect_end, call_times(case)))
    assert connect_end == pytest.approx(case.true_connect_end, abs=MAX_ERROR_SECONDS)
    # The call end: the measured one; the wide search keeps the message's when it is later
    # (the audio cannot tell a late timestamp from an early stop).
    expected_end = case.true_connect_end
    if result.sync.method == "waveform_wide":
        expected_end = max(call_end, case.true_connect_end)
    assert result.call_end_seconds == pytest.approx(expected_end, abs=MAX_ERROR_SECONDS)


@pytest.mark.parametrize("name", list(KEPT))
def test_no_confident_answer_keeps_the_timestamp(qa_dir: Path, name: str) -> None:
    case, result, call_end = _merged(qa_dir, name)
    assert result.sync.method == "timestamp", result.sync
    assert result.sync.offset_seconds == 0.0 and result.sync.drift_ppm == 0.0
    assert result.call_end_seconds == call_end
    placed = call_end - case.connect_duration
    assert result.connect_audio_offset_seconds == pytest.approx(placed, abs=1e-3)
    miss = connect_placement(result.output, case.connect, call_end) - placed
    if SCENARIOS[name].spec.hold is not None:  # the end is a loop too: any period matches
        miss = (miss + 10.0) % 20.0 - 10.0
    assert abs(miss) <= 0.010, miss


def test_a_suspended_span_near_the_end_stays_silent(qa_dir: Path) -> None:
    """The microphone heard the agent while the recording was suspended: never used."""
    name = "suspended-near-the-end"
    case, result, _ = _merged(qa_dir, name)
    spec = SCENARIOS[name].spec
    assert spec.suspended is not None
    out = decode_pcm(result.output, rate=16000)[:, 0]
    mic = np.load(case.recording.parent / "mic.npy").astype(np.float32)[::3]
    lo, hi = spec.suspended
    paused = slice(int((spec.connect_start + lo + 0.3) * 16000),
                   int((spec.connect_start + hi - 0.3) * 16000))  # fmt: skip
    talking = slice(int((spec.connect_start + 1) * 16000), int((spec.connect_start + lo) * 16000))
    assert _rms(mic[paused]) > 30 * _rms(out[paused])
    assert _rms(out[talking]) > 30 * _rms(out[paused])


# Before a late Connect start, with a measured placement, the output holds the microphone (the
# agent's side of the call's first seconds; issue 19: Connect has none there). "silence" is
# SPEC §5's rule for a placement from the timestamp alone.
LATE_START_LEAD_IN = "microphone"


def test_before_a_late_connect_start(qa_dir: Path) -> None:
    """The first 10 s of the call (before the contact flow started recording)."""
    name = "late-start-10s"
    case, result, _ = _merged(qa_dir, name)
    spec = SCENARIOS[name].spec
    assert result.sync.measured
    rate = 16000
    out = decode_pcm(result.output, rate=rate)[:, 0]
    mic = np.load(case.recording.parent / "mic.npy").astype(np.float32)[:: 48000 // rate]
    # CaseSpec: the call starts late_start before the Connect file (at connect_start).
    lead = slice(int((spec.connect_start - spec.late_start + 0.5) * rate),
                 int((spec.connect_start - 0.5) * rate))  # fmt: skip
    assert _rms(mic[lead]) > 1e-3, "the agent must talk before the Connect start"
    if LATE_START_LEAD_IN == "silence":
        assert _rms(out[lead]) < _rms(mic[lead]) / 30
    else:
        heard, written = out[lead].astype(np.float64), mic[lead].astype(np.float64)
        # The microphone, in place (the container's shift is milliseconds: allow 50 ms).
        corr = np.correlate(heard, written[800:-800], mode="valid")
        assert np.argmax(np.abs(corr)) == pytest.approx(800, abs=800)
        assert _rms(heard) > _rms(written) / 10


# --- drift ------------------------------------------------------------------------------------

DRIFTS = {
    # -60 ppm: the two halves of the call end's stretch misjudge it (-46 ppm on this voice),
    # and one stretch-and-retry at that left the outer thirds uncorrelated (the timestamp,
    # 1 s off, was kept): the retry now repeats on what its own halves still show.
    "drift-minus-60ppm": Scenario(
        CaseSpec("qa-drift-60", **INTL, seed=8, call_seconds=95, drift_ppm=-60, container="mp4"),
        1.3,
        "waveform",
    ),
    # 250 ppm and the timestamp 45 s late: the wide search's fine pass under drift.
    "drift-250ppm-timestamp-45s-late": Scenario(
        CaseSpec(
            "qa-drift250",
            **INTL,
            seed=22,
            call_seconds=95,
            drift_ppm=250,
            container="mp4",
            acw_seconds=50,
        ),
        45.0,
        "waveform_wide",
    ),
}


@pytest.mark.parametrize("name", list(DRIFTS))
def test_a_plausible_drift_is_followed(qa_dir: Path, name: str) -> None:
    scenario = DRIFTS[name]
    case = _case(qa_dir, scenario.spec)
    call_end = message_call_end(case.true_call_end, scenario.timestamp_error)
    result = merge_case(case, call_end, qa_dir / f"out-{name}.mp4")
    assert (result.sync.method, result.sync.reason) == (scenario.expect, "measured")
    assert result.sync.drift_ppm == pytest.approx(scenario.spec.drift_ppm, abs=15.0)
    connect_end = result.connect_audio_offset_seconds + case.connect_duration * (
        1 + result.sync.drift_ppm * 1e-6
    )
    assert connect_end == pytest.approx(case.true_connect_end, abs=MAX_ERROR_SECONDS)
    assert_within_targets(alignment_errors(result.output, case, connect_end, call_times(case)))


def test_an_implausible_drift_is_never_applied(qa_dir: Path) -> None:
    """400 ppm (38 ms over the call): never stretched; the end right, or the timestamp kept."""
    spec = CaseSpec("qa-drift400", **INTL, seed=10, call_seconds=95, drift_ppm=400,
                    container="mp4")  # fmt: skip
    case = _case(qa_dir, spec)
    call_end = message_call_end(case.true_call_end, -2.6)
    result = merge_case(case, call_end, qa_dir / "out-drift400.mp4")
    assert result.sync.drift_ppm == 0.0
    if result.sync.measured:
        (end,) = alignment_errors(
            result.output, case, result.call_end_seconds, [case.connect_duration - 10.5]
        )
        assert abs(end) <= MAX_ERROR_SECONDS, end
    else:
        assert result.call_end_seconds == call_end


# --- a replayed prompt ------------------------------------------------------------------------

# The agent's only words in the Connect file's last 30 s are one recorded prompt, which the
# agent also played 27 s earlier; the timestamp is 25 s early (within the 30 s a timestamp can
# be off). Around the timestamp the +-5 s search sees only the earlier copy, matching the
# prompt perfectly: every rule passes (one part of the stretch carries energy, the halves both
# lie inside the prompt), so the Connect audio is placed 27 s early with confidence ~270.
REPLAY = CaseSpec("qa-replay", **INTL, seed=31, call_seconds=60, replay=(26.0, 53.0),
                  container="mp4")  # fmt: skip


def test_a_replayed_prompt_is_never_a_confident_wrong_placement(qa_dir: Path) -> None:
    case = _case(qa_dir, REPLAY)
    call_end = message_call_end(case.true_call_end, -25.0)
    result = merge_case(case, call_end, qa_dir / "out-replay.mp4")
    if result.sync.measured:
        placed = result.connect_audio_offset_seconds
        assert placed == pytest.approx(case.true_placement, abs=MAX_ERROR_SECONDS), result.sync
    else:
        assert result.call_end_seconds == call_end
