"""Issue 13 on realistic speech: waveform sync, chapters and loudness, checked in the output.

Media (harness/speech_media.py): espeak-ng agent and customer voices; the Connect file at 8 kHz
stereo, telephony band, through G.711 mu-law; the recording's microphone in a noisy,
reverberant room, Opus or AAC at 48 kHz, placed at a known true call end. Messages carry the
true call end plus an error, truncated to whole seconds. The alignment error is measured in
the merged file by content (Connect audio against the microphone), never taken from the
worker's own report.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.harness.media_tools import decode_pcm
from tests.harness.speech_media import (
    MAX_ERROR_SECONDS,
    CaseSpec,
    SpeechCase,
    alignment_error,
    alignment_errors,
    connect_placement,
    make_speech_case,
    merge_case,
    message_call_end,
    microphone_placement,
    microphone_placement_in,
)
from worker import media
from worker.observability import SYNC_OUTCOMES

SPEECH = {
    "webm-opus": CaseSpec("webm-opus", script=0, voices=0, container="webm", call_seconds=24),
    "mp4-aac-noisy": CaseSpec("mp4-aac-noisy", script=1, voices=1, container="mp4-aac",
                              noise_db=-38, connect_start=-2.5, call_seconds=26),
    "mp4-opus-quiet": CaseSpec("mp4-opus-quiet", script=2, voices=2, container="mp4",
                               mic_gain_db=-20, connect_start=4.2, call_seconds=22),
}  # fmt: skip
FALLBACK = {
    "no-microphone": CaseSpec("no-microphone", mic="none", call_seconds=20),
    "muted-microphone": CaseSpec("muted-microphone", mic="silence", call_seconds=20),
    "other-conversation": CaseSpec("other-conversation", mic="other", script=1, voices=1,
                                   container="mp4-aac", call_seconds=24),
    "music": CaseSpec("music", mic="tones", call_seconds=20),
    # Issue 19: other people's conversation (real voices), searched over the whole recording.
    "other-people": CaseSpec("other-people", mic="other", voices=-1, call_seconds=40,
                             container="mp4"),
    "looped-music-on-hold": CaseSpec("looped-music-on-hold", mic="looped_tones",
                                     container="mp4", call_seconds=36),
}  # fmt: skip


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@functools.cache
def _case(directory: Path, spec: CaseSpec) -> SpeechCase:
    return make_speech_case(directory, spec)


_MERGES: dict[tuple[object, ...], media.MergeResult] = {}


def merged(
    directory: Path, spec: CaseSpec, call_end: float, *, loudness: float | None = None
) -> tuple[SpeechCase, media.MergeResult]:
    """Merge (once per session) with ALIGN_MODE auto."""
    case = _case(directory, spec)
    key = (spec, call_end, loudness)
    if key not in _MERGES:
        ext = "webm" if spec.container == "webm" else "mp4"
        out = directory / f"out-{spec.name}-{call_end:g}-{loudness}.{ext}"
        _MERGES[key] = merge_case(case, call_end, out, loudness=loudness)
    return case, _MERGES[key]


@pytest.mark.parametrize("name", list(SPEECH))
@pytest.mark.parametrize("timestamp_error", [-3.0, -1.4, 0.6, 3.0])
def test_connect_audio_lands_within_20_ms_of_the_microphone(
    speech_dir: Path, name: str, timestamp_error: float
) -> None:
    spec = SPEECH[name]
    case = _case(speech_dir, spec)
    call_end = message_call_end(case.true_call_end, timestamp_error)
    before = SYNC_OUTCOMES.labels(method="waveform", reason="measured")._value.get()
    case, result = merged(speech_dir, spec, call_end)
    assert result.sync.method == "waveform", result.sync
    assert result.sync.confidence >= 20
    error = alignment_error(result.output, case, result.call_end_seconds)
    assert abs(error) <= MAX_ERROR_SECONDS, f"{name}: {error * 1000:.2f} ms"
    # What the row gets: measured minus timestamp, and the placement actually used.
    assert result.call_end_seconds == pytest.approx(call_end + result.sync.offset_seconds)
    assert abs(result.sync.offset_seconds - (case.true_call_end - call_end)) < 0.02
    assert result.connect_audio_offset_seconds == pytest.approx(
        result.call_end_seconds - case.connect_duration, abs=1e-3
    )
    assert SYNC_OUTCOMES.labels(method="waveform", reason="measured")._value.get() >= before + 1


def test_the_timestamp_alone_would_have_been_wrong(speech_dir: Path) -> None:
    """The same media END-aligned on the timestamp: off by the timestamp's error (the
    measurement above can tell a misplacement)."""
    spec = SPEECH["mp4-aac-noisy"]
    case = _case(speech_dir, spec)
    call_end = message_call_end(case.true_call_end, 1.6)
    out = speech_dir / "timestamp-only.mp4"
    result = merge_case(case, call_end, out, align="end")
    assert result.sync.method == "timestamp" and result.sync.reason == "disabled"
    error = alignment_error(out, case, result.call_end_seconds)
    assert error == pytest.approx(call_end - case.true_call_end, abs=0.005)
    assert abs(error) > 0.5


@pytest.mark.parametrize("name", list(FALLBACK))
def test_audio_without_this_call_falls_back_to_the_timestamp(speech_dir: Path, name: str) -> None:
    spec = FALLBACK[name]
    case = _case(speech_dir, spec)
    call_end = message_call_end(case.true_call_end, 2.0)
    case, result = merged(speech_dir, spec, call_end)
    assert result.sync.method == "timestamp", result.sync
    assert result.sync.offset_seconds == 0.0
    assert result.sync.reason in {
        "no_recording_audio",
        "silent_recording",
        "no_pauses",
        "low_confidence",
        "ambiguous",
        "halves_disagree",
        # Not confident near the timestamp, nor anywhere else (issue 19's wide search).
        "wide_low_confidence",
        "wide_silent_recording",
        "wide_halves_disagree",
        "wide_ambiguous",
    }
    # Placed exactly where the timestamp says (END alignment), checked in the output.
    assert result.call_end_seconds == call_end
    assert result.connect_audio_offset_seconds == call_end - case.connect_duration
    miss = connect_placement(result.output, case.connect, call_end) - (
        call_end - case.connect_duration
    )
    if spec.mic == "looped_tones":  # the 2 s loop matches at every period, here too
        miss = (miss + 1.0) % 2.0 - 1.0
    assert abs(miss) <= 0.010


def chapters(path: Path) -> list[tuple[str, float, float]]:
    raw = subprocess.run(
        ["ffprobe", "-v", "error", "-show_chapters", "-of", "json", str(path)],
        capture_output=True,
        check=True,
    ).stdout
    return [
        (c["tags"]["title"], float(c["start_time"]), float(c["end_time"]))
        for c in json.loads(raw)["chapters"]
    ]


@pytest.mark.parametrize("name", ["webm-opus", "mp4-aac-noisy"])
def test_chapters_call_and_after_call_work_at_the_synced_call_end(
    speech_dir: Path, name: str
) -> None:
    spec = SPEECH[name]
    case = _case(speech_dir, spec)
    _, result = merged(speech_dir, spec, message_call_end(case.true_call_end, 0.6))
    found = chapters(result.output)
    assert [title for title, _, _ in found] == ["Call", "After Call Work"]
    (_, call_start, call_stop), (_, acw_start, acw_stop) = found
    assert call_start == 0.0
    assert call_stop == acw_start == pytest.approx(result.call_end_seconds, abs=0.0015)
    assert acw_stop == pytest.approx(result.media_duration_seconds, abs=0.0015)


def loudness_of(path: Path, start: float, stop: float) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of ``path``'s audio in [start, stop), by ffmpeg."""
    err = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-ss", f"{start:.3f}", "-t", f"{stop - start:.3f}",
         "-i", str(path), "-map", "0:a:0", "-af", "ebur128=peak=true:framelog=verbose",
         "-f", "null", "-"],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    lines = [line.strip() for line in err.splitlines()]
    integrated = next(float(x.split()[1]) for x in reversed(lines) if x.startswith("I:"))
    peak = next(float(x.split()[1]) for x in reversed(lines) if x.startswith("Peak:"))
    return integrated, peak


@pytest.mark.parametrize("name", ["webm-opus", "mp4-opus-quiet"])
def test_loudness_target_evens_out_the_two_segments(speech_dir: Path, name: str) -> None:
    spec = SPEECH[name]
    case = _case(speech_dir, spec)
    call_end = message_call_end(case.true_call_end, 0.6)
    _, plain = merged(speech_dir, spec, call_end)
    _, even = merged(speech_dir, spec, call_end, loudness=-18.0)
    guard = 0.3
    for result, target in ((plain, None), (even, -18.0)):
        call, _ = loudness_of(result.output, 0.0, result.call_end_seconds - guard)
        acw, _ = loudness_of(
            result.output, result.call_end_seconds + guard, result.media_duration_seconds
        )
        if target is None:
            assert abs(call - acw) > 2.5, "the test media must start out uneven"
        else:
            assert abs(call - acw) <= 2.0, (call, acw)
            assert abs(call - target) <= 2.0 and abs(acw - target) <= 2.0, (call, acw)
    _, peak = loudness_of(even.output, 0.0, even.media_duration_seconds)
    assert peak <= -1.0  # no clipping: true peak under -1 dBTP
    assert even.loudness is not None and even.loudness.connect_db > 10
    # Still synced, still the recording's length.
    assert even.sync.method == "waveform"
    assert abs(alignment_error(even.output, case, even.call_end_seconds)) <= MAX_ERROR_SECONDS
    assert even.media_duration_seconds == plain.media_duration_seconds


def test_merge_command_prints_the_sync_result(
    speech_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cli import main

    spec = SPEECH["webm-opus"]
    case = _case(speech_dir, spec)
    call_end = message_call_end(case.true_call_end, -1.4)
    out = speech_dir / "cli.webm"
    code = main(
        ["merge", "--recording", str(case.recording), "--connect-audio", str(case.connect),
         "--call-end", f"{call_end:g}", "--output", str(out), "--progress", "none"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines() == [str(out)]
    (line,) = captured.err.splitlines()
    offset = case.true_call_end - call_end
    assert line.startswith("komorebi-worker: sync: waveform, call end ")
    measured = float(line.split("call end ")[1].split(" s")[0])
    assert measured == pytest.approx(case.true_call_end, abs=0.02)
    assert f"(--call-end {offset:+.2f}" in line or f"(--call-end {offset:+.3f}"[:-1] in line
    assert "confidence " in line


@pytest.mark.parametrize("timestamp_error", [-8.0, 7.0])
def test_a_timestamp_beyond_the_search_window_is_found_by_the_wide_search(
    speech_dir: Path, timestamp_error: float
) -> None:
    """The true call end outside +-5 s of the timestamp (issue 19): the wide search finds it.
    A timestamp 8 s early moves the call end to the Connect end; one 7 s late keeps it (the
    audio cannot tell a late timestamp from an early stop) and the recording's own audio
    covers the 7 s after the Connect end."""
    spec = SPEECH["mp4-aac-noisy"]
    case = _case(speech_dir, spec)
    call_end = message_call_end(case.true_call_end, timestamp_error)
    _, result = merged(speech_dir, spec, call_end)
    assert (result.sync.method, result.sync.reason) == ("waveform_wide", "measured")
    assert abs(result.sync.offset_seconds - (case.true_call_end - call_end)) < 0.02
    connect_end = max(call_end, case.true_call_end)
    assert result.call_end_seconds == pytest.approx(connect_end, abs=0.02)
    (error,) = alignment_errors(
        result.output, case, case.true_call_end, [case.connect_duration - 12]
    )
    assert abs(error) <= MAX_ERROR_SECONDS


# Issue 19, real human voices (voices=-1: tests/speech_media.py human_conversation): a Connect
# file stopped 8 s before the call end, with a suspended (silent) span.
EARLY_STOP = CaseSpec(
    "early-stop",
    voices=-1,
    container="webm",
    call_seconds=40,
    early_stop=8.0,
    suspended=(14.0, 19.0),
    connect_start=2.0,
)
# 100 ppm of clock drift over a 95 s call: 9.5 ms at the start when END-aligned.
DRIFT = CaseSpec("drift", voices=-1, seed=2, container="mp4", call_seconds=95,
                 drift_ppm=100.0, connect_start=1.5)  # fmt: skip


def test_a_connect_file_stopped_early_is_placed_where_it_was_recorded(speech_dir: Path) -> None:
    """Found by the wide search; the Connect audio where it was recorded (start and end within
    20 ms), the recording's own audio after it, the suspended span silent, the shortfall
    counted; the call end stays the message's."""
    from worker.observability import CONNECT_SHORT

    case = _case(speech_dir, EARLY_STOP)
    call_end = message_call_end(case.true_call_end, 0.0)
    before = CONNECT_SHORT.labels(reason="early_stop")._value.get()
    _, result = merged(speech_dir, EARLY_STOP, call_end)
    assert (result.sync.method, result.sync.reason) == ("waveform_wide", "measured")
    assert result.call_end_seconds == call_end
    connect_end = result.connect_audio_offset_seconds + case.connect_duration
    assert connect_end == pytest.approx(case.true_connect_end, abs=0.02)
    errors = alignment_errors(result.output, case, case.true_connect_end, [0.5, 20.0])
    assert max(abs(e) for e in errors) <= MAX_ERROR_SECONDS, errors
    # After the Connect end: the microphone (the rest of the call), found there by content
    # (within the container's own shift of the whole file, see microphone_placement).
    assert abs(microphone_placement(result.output, case, case.true_connect_end)) < 0.030
    assert CONNECT_SHORT.labels(reason="early_stop")._value.get() == before + 1
    # The suspended span stays silence (the microphone heard the agent then: never used).
    out = decode_pcm(result.output, rate=16000)[:, 0]
    mic = np.load(case.recording.parent / "mic.npy").astype(np.float32)[::3]
    paused = slice(int((2.0 + 14.3) * 16000), int((2.0 + 18.7) * 16000))
    assert _rms(mic[paused]) > 30 * _rms(out[paused])
    talking = slice(int((2.0 + 1) * 16000), int((2.0 + 13) * 16000))
    assert _rms(out[talking]) > 30 * _rms(out[paused])


# Issue 19, a late start (real human voices): the call starts 2 s into the recording, the
# Connect file 10 s later (a contact flow that starts recording late), paused 22-27 s into
# the call. The microphone alone heard the agent's first 10 s.
LATE_START = CaseSpec(
    "late-start",
    voices=-1,
    seed=3,
    container="mp4",
    call_seconds=40,
    late_start=10.0,
    connect_start=12.0,
    suspended=(22.0, 27.0),
)


def test_before_a_late_connect_start_the_microphone_plays(speech_dir: Path) -> None:
    """A measured placement: the recording's own audio before the Connect file's first sample
    (found there by content, at its own timing), the Connect audio where it was recorded, the
    suspended span silent, nothing counted as short (the call's start is unknown)."""
    from worker.observability import CONNECT_SHORT

    case = _case(speech_dir, LATE_START)
    call_end = message_call_end(case.true_call_end, 0.0)
    before = CONNECT_SHORT.labels(reason="early_stop")._value.get()
    _, result = merged(speech_dir, LATE_START, call_end)
    assert result.sync.measured
    assert result.connect_audio_offset_seconds == pytest.approx(12.0, abs=0.02)
    errors = alignment_errors(result.output, case, result.call_end_seconds, [0.5, 15.0])
    assert max(abs(e) for e in errors) <= MAX_ERROR_SECONDS, errors
    # Before the Connect audio: the microphone (the agent's first words, only it heard them),
    # at the same place in the output as the microphone after the call.
    tail = microphone_placement(result.output, case, result.call_end_seconds)
    assert abs(microphone_placement_in(result.output, case, 3.0, 11.5) - tail) < 0.002
    out = decode_pcm(result.output, rate=16000)[:, 0]
    mic = np.load(case.recording.parent / "mic.npy").astype(np.float32)[::3]
    talking = slice(3 * 16000, int(11.7 * 16000))
    assert _rms(out[talking]) > 0.5 * _rms(mic[talking])
    # The suspended span (call seconds 22-27: recording 24-29) stays silence.
    paused = slice(int(24.3 * 16000), int(28.7 * 16000))
    assert _rms(mic[paused]) > 30 * _rms(out[paused])
    assert CONNECT_SHORT.labels(reason="early_stop")._value.get() == before


def test_with_the_timestamp_alone_silence_stays_before_the_connect_audio(
    speech_dir: Path,
) -> None:
    """END alignment on the timestamp (not measured): SPEC §5's silence before the Connect
    audio, never the microphone (a misplaced Connect file would double the call)."""
    case = _case(speech_dir, LATE_START)
    call_end = message_call_end(case.true_call_end, 0.0)
    result = merge_case(case, call_end, speech_dir / "out-late-start-end.mp4", align="end")
    assert result.sync.method == "timestamp"
    out = decode_pcm(result.output, rate=16000)[:, 0]
    mic = np.load(case.recording.parent / "mic.npy").astype(np.float32)[::3]
    talking = slice(3 * 16000, int(11.7 * 16000))
    assert _rms(mic[talking]) > 30 * _rms(out[talking])
    # The microphone still plays after the call end.
    acw = slice(int((call_end + 0.5) * 16000), int((case.duration - 0.3) * 16000))
    assert _rms(out[acw]) > 0.5 * _rms(mic[acw])


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def test_clock_drift_is_followed_along_the_whole_call(speech_dir: Path) -> None:
    """100 ppm: measured near both ends, the Connect audio resampled in the graph: within 3 ms
    at the start, middle and end (END alignment alone is 9.5 ms off at the start)."""
    case = _case(speech_dir, DRIFT)
    call_end = message_call_end(case.true_call_end, 1.3)
    _, result = merged(speech_dir, DRIFT, call_end)
    assert (result.sync.method, result.sync.reason) == ("waveform", "measured")
    assert result.sync.drift_ppm == pytest.approx(100.0, abs=10.0)
    times = [1.0, case.connect_duration / 2, case.connect_duration - 11.0]
    errors = alignment_errors(result.output, case, result.call_end_seconds, times)
    assert max(abs(e) for e in errors) <= 0.003, errors
