"""Issue 19, "Sync anywhere": the recording's own audio before the Connect audio's first sample
(a measured placement only), in the pure plan and graph builders: segments, seams in samples,
inputs. The real-media checks are in tests/media/test_sync_speech.py (late start)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests.harness.media_models import connect, recording
from worker import media
from worker.config import AudioSettings
from worker.media import sync
from worker.media.loudness import LoudnessGains
from worker.media.plan import SEEK_MARGIN_SECONDS, MergeOptions, MergePlan, plan_merge
from worker.media.run import measured_plan


def _synced(method: sync.SyncMethod, offset: float, ppm: float = 0.0) -> sync.SyncResult:
    return sync.SyncResult(method, offset, 300.0, "measured", drift_ppm=ppm)


def _placed(
    synced: sync.SyncResult,
    *,
    duration: float = 60.0,
    connect_seconds: float = 30.0,
    call_end: float = 50.0,
    options: MergeOptions | None = None,
    audio: bool = True,
) -> tuple[media.Recording, media.ConnectAudio, MergePlan]:
    options = options or MergeOptions()
    rec, conn = recording(duration=duration, audio=audio), connect(connect_seconds)
    plan = plan_merge(rec, conn, call_end, options)
    return rec, conn, measured_plan(rec, conn, plan, synced, options)


def _segments(graph: str) -> dict[str, str]:
    """Each output label of the graph's chains -> its chain."""
    found = (re.search(r"\[(\w+)\]$", chain) for chain in graph.split(";"))
    return {m.group(1): m.string for m in found if m}


def _length(chain: str) -> int:
    """The exact sample count a chain ends on (its last ``atrim=end_sample``)."""
    return int(re.findall(r"atrim=end_sample=(\d+)", chain)[-1])


@pytest.mark.parametrize(
    ("synced", "head_seconds"),
    [
        (_synced("waveform", 0.0), 20.0),  # +-5 s: Connect from 20 s, the microphone before
        (_synced("waveform_wide", 5.0), 25.0),  # wide, the timestamp early: the call end moves
        (_synced("waveform_wide", -30.0), 0.0),  # found at -10..20 s: its head is cut, no head
    ],
)
def test_a_measured_placement_plays_the_microphone_before_the_connect_audio(
    synced: sync.SyncResult, head_seconds: float
) -> None:
    _, _, placed = _placed(synced)
    rate = placed.sample_rate
    assert placed.head_samples == round(head_seconds * rate)
    assert placed.head_samples + placed.connect_samples == placed.connect_end_samples
    if head_seconds:
        assert placed.head_samples == placed.offset_samples  # the Connect file's first sample


def test_the_timestamp_and_start_alignment_keep_no_head() -> None:
    rec, conn = recording(duration=60.0), connect(30.0)
    assert plan_merge(rec, conn, 50.0, MergeOptions()).head_samples == 0  # SPEC §5's silence
    _, _, placed = _placed(_synced("waveform", 0.0), options=MergeOptions(align="start"))
    assert placed.head_samples == 0


@pytest.mark.parametrize("seek", [False, True])
def test_the_three_segments_meet_sample_exactly(seek: bool) -> None:
    # Call end 4.5 s (no seek) or 50 s (the tail read from a fast-seeked input).
    call_end, connect_seconds = (50.0, 30.0) if seek else (4.5, 3.0)
    rec, conn, placed = _placed(
        _synced("waveform", 0.0), call_end=call_end, connect_seconds=connect_seconds
    )
    options = MergeOptions()
    args = media.build_merge_args(
        recording=rec, connect=conn, plan=placed, output=Path("/out/r.webm"), options=options
    )
    graph = args[args.index("-filter_complex") + 1]
    segments = _segments(graph)
    head, conn_chain, tail = segments["head"], segments["conn"], segments["rec"]
    assert "[head][conn][rec]concat=n=3:v=0:a=1" in graph
    lengths = [_length(segments["headmic"]), _length(conn_chain), _length(segments["recmic"])]
    assert lengths == [placed.head_samples, placed.connect_samples, placed.tail_samples]
    assert sum(lengths) == placed.total_samples
    # The head: the microphone from the recording's t=0, no Connect delay (it starts at the
    # seam); the tail: from the Connect end on its own input's t=0.
    assert "atrim=start_sample=0," in segments["headmic"]
    assert "adelay" not in conn_chain and "start_sample" not in conn_chain
    seek_seconds = media.recording_seek_seconds(placed)
    assert bool(seek_seconds) is seek
    skip = placed.connect_end_samples - seek_seconds * placed.sample_rate
    assert f"atrim=start_sample={skip}," in segments["recmic"]
    assert head.startswith("[headquiet][headmic]amix") and tail.startswith("[recquiet][recmic]")
    # Inputs: the head is the recording read for its first seconds only (-t), after the
    # seeked tail input when there is one.
    inputs = [i for i, a in enumerate(args) if a == "-i"]
    head_read = media.recording_head_seconds(placed)
    assert head_read == math.ceil(placed.head_samples / placed.sample_rate + SEEK_MARGIN_SECONDS)
    head_input = 3 if seek else 2
    assert len(inputs) == head_input + 1
    assert args[inputs[head_input] - 6 : inputs[head_input] - 4] == ["-t", str(head_read)]
    assert segments["headmic"].startswith(f"[{head_input}:1]")
    assert segments["recmic"].startswith(f"[{2 if seek else 0}:1]")


def test_chapters_follow_the_head_input() -> None:
    rec, conn, placed = _placed(_synced("waveform", 0.0))  # seeked tail and a head
    args = media.build_merge_args(
        recording=rec, connect=conn, plan=placed, output=Path("/out/r.webm"),
        options=MergeOptions(), chapters=Path("/out/.r.webm.chapters"),
    )  # fmt: skip
    assert args[args.index("-map_chapters") + 1] == "4"
    # The chapters still split at the call end (the call's start is not known).
    bounds = [line for line in media.chapters_metadata(placed).splitlines() if "=" in line]
    assert "START=0" in bounds and "END=50000" in bounds


def test_drift_stereo_and_gains_on_the_head() -> None:
    options = MergeOptions(audio=AudioSettings(channels=2))
    rec, conn, placed = _placed(_synced("waveform", 0.0, 100.0), options=options)
    gains = LoudnessGains(-18.0, 3.0, -4.0, -21.0, -14.0)
    graph = media.build_audio_graph(
        placed, align="auto", recording_audio=rec.audio, connect_audio=conn.audio,
        recording_input=2, recording_seek=media.recording_seek_seconds(placed),
        head_input=3, gains=gains,
    )  # fmt: skip
    segments = _segments(graph)
    # The microphone is one voice, in both channels (as after an early stop), at its gain.
    assert "pan=stereo|c0=0.5*c0+0.5*c1|c1=0.5*c0+0.5*c1" in segments["headmic"]
    assert "volume=-4.00dB" in segments["headmic"] and "volume=3.00dB" in segments["conn"]
    # The drifted Connect audio starts at the seam: stretched, then cut to its segment.
    assert "asetpts=PTS*1.000100000" in segments["conn"]
    assert placed.head_samples == round((50.0 - 30.0 * 1.0001) * placed.sample_rate)
    assert _length(segments["conn"]) == placed.connect_end_samples - placed.head_samples


def test_a_head_without_microphone_is_silence_and_a_seeked_head_needs_its_input() -> None:
    rec, conn, placed = _placed(_synced("waveform", 0.0), audio=False)
    graph = media.build_audio_graph(
        placed, align="auto", recording_audio=None, connect_audio=conn.audio
    )
    head = _segments(graph)["head"]
    assert head.startswith("anullsrc") and _length(head) == placed.head_samples
    rec, conn, placed = _placed(_synced("waveform", 0.0))
    with pytest.raises(ValueError, match="unseeked"):
        media.build_audio_graph(
            placed, align="auto", recording_audio=rec.audio, connect_audio=conn.audio,
            recording_input=2, recording_seek=media.recording_seek_seconds(placed),
        )  # fmt: skip
