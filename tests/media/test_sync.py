"""worker.sync's pure parts: the window plan, the decode arguments, the estimator and the rule.

Signals here are synthetic (seeded noise shaped like speech bursts), so every expected lag is
known exactly; the real-media tests are in test_sync_speech.py.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from tests.harness.sync_signals import RATE, bursts, delayed, window
from worker.ffmpeg import FORMAT_WHITELIST, PROTOCOL_WHITELIST
from worker.media import sync


@pytest.mark.parametrize("true_offset", [-4.2, -0.6180, 0.0, 0.5, 2.71875 + 1 / 3 / RATE])
def test_estimate_finds_a_known_lag_to_a_fraction_of_a_sample(true_offset: float) -> None:
    rng = np.random.default_rng(5)
    reference = bursts(20.0, seed=1)
    lag = (5.5 + true_offset) * RATE
    signal = delayed(reference * 0.3, lag, 31 * RATE)
    signal += (rng.standard_normal(signal.size) * 0.003).astype(np.float32)
    result = sync.synchronise(reference, signal, window())
    assert result.method == "waveform", result
    assert result.reason == "measured"
    assert abs(result.offset_seconds - true_offset) < 0.1 / RATE  # a tenth of a sample
    assert result.confidence >= sync.MIN_Z


def test_unrelated_audio_falls_back_with_low_confidence() -> None:
    reference = bursts(20.0, seed=1)
    signal = bursts(31.0, seed=2)
    result = sync.synchronise(reference, signal, window())
    assert (result.method, result.reason, result.offset_seconds) == (
        "timestamp",
        "low_confidence",
        0.0,
    )
    assert 0 < result.confidence < sync.MIN_Z
    assert result.estimate_seconds is not None  # what it would have guessed, for the logs


def test_silence_falls_back_before_any_estimate() -> None:
    speech = bursts(20.0, seed=1)
    quiet = np.zeros(31 * RATE, np.float32)
    assert sync.synchronise(speech, quiet, window()).reason == "silent_recording"
    assert sync.synchronise(quiet[: 20 * RATE], speech, window()).reason == "silent_connect"


def test_a_pattern_repeating_inside_the_window_is_ambiguous() -> None:
    loop = bursts(2.0, seed=4)
    reference = np.tile(loop, 10)
    signal = np.tile(loop, 16)[: 31 * RATE]
    result = sync.synchronise(reference, signal, window(zero_lag=6.0))
    assert (result.method, result.reason) == ("timestamp", "ambiguous")


def test_halves_at_different_lags_fall_back() -> None:
    # The second half of the reference sits 1.5 s later in the signal than the first half:
    # a strong whole-window peak, but not one alignment (a cut or a pause in one recording).
    reference = bursts(20.0, seed=1)
    signal = np.zeros(31 * RATE, np.float32)
    half = reference.size // 2
    start = int(5.5 * RATE)
    signal[start : start + half] = reference[:half]
    later = start + half + int(1.5 * RATE)
    signal[later : later + half] = reference[half:]
    signal += np.random.default_rng(0).standard_normal(signal.size).astype(np.float32) * 0.003
    result = sync.synchronise(reference, signal, window())
    # Two equal peaks (ambiguous), each half confirms only its own, and at either peak one
    # part of the stretch shares nothing with the signal (issue 19's weakest part).
    assert (result.method, result.reason) in {
        ("timestamp", "halves_disagree"),
        ("timestamp", "ambiguous"),
        ("timestamp", "low_confidence"),
    }
    found = sync.estimate(reference, signal, min_lag=0.5, max_lag=10.5)
    first, second = found.halves
    assert abs(second.lag - first.lag - 1.5) < 1e-3


def test_decide_refuses_offsets_outside_the_recording() -> None:
    peak = sync.Peak(lag=5.5 + 1.0, z=80.0, side_peak_ratio=0.1)
    found = sync.Estimate(peak, (peak, peak))
    narrow = sync.SyncWindow(0.0, 20.0, 0, 31.0, 5.5, -5.0, 0.5)
    assert sync.decide(found, 5.5, narrow).reason == "out_of_range"
    assert sync.decide(found, 5.5, window()).method == "waveform"


def test_window_covers_the_stretch_and_the_search() -> None:
    plan = sync.plan_window(call_end=600.0, recording_duration=900.0, connect_duration=580.0)
    assert isinstance(plan, sync.SyncWindow)
    assert plan.connect_seconds == sync.STRETCH_SECONDS
    assert plan.connect_start == pytest.approx(580.0 - sync.STRETCH_SECONDS)
    # The recording is decoded from a whole second before [call_end - stretch - search].
    assert plan.recording_seek == int(600 - 30 - 5 - sync.DECODE_MARGIN_SECONDS)
    assert plan.recording_seek + plan.recording_seconds == pytest.approx(
        600 + 5 + sync.DECODE_MARGIN_SECONDS
    )
    # Zero offset: the Connect stretch starts at call_end - stretch on the recording.
    assert plan.recording_seek + plan.zero_lag == pytest.approx(600.0 - 30.0)
    assert (plan.min_offset, plan.max_offset) == (-5.0, 5.0)


def test_window_is_clamped_to_the_recording() -> None:
    plan = sync.plan_window(call_end=20.0, recording_duration=22.0, connect_duration=60.0)
    assert isinstance(plan, sync.SyncWindow)
    assert plan.connect_seconds == 25.0  # call_end + search: nothing earlier can match
    assert plan.recording_seek == 0
    assert plan.recording_seconds == pytest.approx(22.0)
    assert plan.max_offset == pytest.approx(2.0)  # the measured end stays inside
    assert sync.plan_window(call_end=0.5, recording_duration=9.0, connect_duration=3.0) == (
        "too_short"
    )


@pytest.mark.parametrize(("channels", "pan"), [(2, "pan=mono|c0=c1"), (1, "pan=mono|c0=c0")])
def test_connect_decode_takes_the_agent_channel(channels: int, pan: str) -> None:
    args = sync.build_decode_args(
        Path("/in/connect.wav"), 0, channels=channels, agent=True, seek=512.25, seconds=30.0
    )
    i = args.index("-i")
    # Fast seek: -ss before the input, whose allow-lists are the untrusted inputs' ones.
    assert args[i - 6 : i] == [
        "-ss",
        "512.250000",
        "-format_whitelist",
        FORMAT_WHITELIST,
        "-protocol_whitelist",
        PROTOCOL_WHITELIST,
    ]
    assert args[i + 1] == "file:/in/connect.wav"
    chain = args[args.index("-af") + 1].split(",")
    assert chain == [pan, "aresample=8000:async=1:first_pts=0", "atrim=end_sample=240000"]
    assert args[-5:] == ["-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]


def test_microphone_decode_averages_its_channels_and_skips_a_zero_seek() -> None:
    args = sync.build_decode_args(
        Path("/in/rec.webm"), 1, channels=2, agent=False, seek=0, seconds=12.5
    )
    assert "-ss" not in args
    assert args[args.index("-map") + 1] == "0:1"
    assert args[args.index("-af") + 1].startswith("pan=mono|c0=0.5*c0+0.5*c1,")


# --- regressions from the issue-13 QA corpus (espeak-ng speech, made at test time) ----------


@functools.cache
def _speech_8k() -> np.ndarray:
    """About 24 s of an agent's side of a call at 8 kHz: espeak-ng phrases with the customer's
    turns as silence (made once per session)."""
    from tests.harness.speech_media import speak

    phrases = [
        "Welcome to the northern utilities help line, you are speaking with Jordan.",
        "Let me pull up the meter reading history for that address.",
        "I see an estimated reading from January that looks far too high.",
        "I will raise a correction request and the bill will be recalculated.",
    ]
    parts: list[np.ndarray] = []
    for text in phrases:
        voice = speak(text, ("en-us+f1", 130, 80))  # high-pitched: strong pitch periodicity
        parts += [voice, np.zeros(int(2.2 * 48000), np.float32)]
    speech = np.concatenate(parts)
    # 48 kHz -> 8 kHz: a 6-tap average (a crude low-pass) then every 6th sample.
    speech = np.convolve(speech, np.ones(6) / 6, mode="same")[::6]
    return (speech * 0.5).astype(np.float32)


def _reverberant(voice: np.ndarray, *, seconds: float, direct_to_reverb_db: float) -> np.ndarray:
    """``voice`` in a room: the direct path, a desk reflection and a diffuse tail."""
    rng = np.random.default_rng(11)
    taps = int(seconds * RATE)
    tail = rng.standard_normal(taps) * np.exp(-6.9 * np.arange(taps) / taps)
    tail[: int(0.002 * RATE)] = 0
    tail *= np.sqrt(10 ** (-direct_to_reverb_db / 10) / np.sum(tail**2))
    tail[0] = 1.0
    tail[int(0.0025 * RATE)] += 0.4
    size = 1 << (voice.size + taps).bit_length()
    wet = np.fft.irfft(np.fft.rfft(voice, size) * np.fft.rfft(tail, size), size)
    return wet[: voice.size].astype(np.float32)


def test_a_reverberant_room_is_not_ambiguous() -> None:
    # A 0.5 s room at -6 dB direct-to-reverberant ratio, a high voice: the plain correlation
    # has rivals 12-85 ms after the direct path (over half of it), which a loop test on both
    # sides called "ambiguous"; reverberation only ever lies after the peak.
    reference = _speech_8k()
    rng = np.random.default_rng(2)
    lag = 5.5 + 1.2345
    signal = delayed(reference * 0.4, lag * RATE, reference.size + 11 * RATE)
    signal = _reverberant(signal, seconds=0.5, direct_to_reverb_db=-6.0)
    signal += (rng.standard_normal(signal.size) * 0.002).astype(np.float32)
    result = sync.synchronise(reference, signal, window())
    assert (result.method, result.reason) == ("waveform", "measured"), result
    assert abs(result.offset_seconds - 1.2345) < 0.001


def test_connect_started_before_the_recording_still_syncs() -> None:
    # The Connect recording began 3 s before the screen recording: its head has no microphone
    # to match. The halves must come from the part inside the recording, not disown the peak.
    reference = _speech_8k()[: int(9.5 * RATE)]
    head = 3 * RATE  # Connect t=0 is 3 s before the recording's t=0
    signal = np.concatenate([reference[head:] * 0.5, np.zeros(8 * RATE, np.float32)])
    signal += np.random.default_rng(4).standard_normal(signal.size).astype(np.float32) * 0.002
    # The message says the call ended at 5 s; it truly ended at 6.5 s.
    plan = sync.plan_window(call_end=5.0, recording_duration=signal.size / RATE,
                            connect_duration=9.5)  # fmt: skip
    assert isinstance(plan, sync.SyncWindow)
    result = sync.synchronise(reference, signal, plan)
    assert (result.method, result.reason) == ("waveform", "measured"), result
    assert abs(result.offset_seconds - 1.5) < 0.001


def test_music_on_hold_heard_at_another_point_of_the_tune_falls_back() -> None:
    # Hold music on the agent channel, and the room hears the same (unlooped) tune 2.3 s
    # apart: it correlates sharply at a wrong offset. The agent channel never pauses.
    from tests.harness.speech_media import melody

    tune = melody(40.0, seed=3)[::6] * 0.5
    reference = tune[: 20 * RATE].astype(np.float32)
    shift = int(5.5 * RATE) - int(2.3 * RATE)
    signal = np.concatenate([np.zeros(max(0, shift), np.float32), tune])[: 31 * RATE]
    assert sync.pause_fraction(reference) < sync.MIN_PAUSE_FRACTION
    assert sync.pause_fraction(_speech_8k()) > 0.3
    result = sync.synchronise(reference, signal.astype(np.float32), window())
    assert (result.method, result.reason) == ("timestamp", "no_pauses"), result
