"""The wide search's fine pass measured on the call end's own window as decoded (issue 19's
cost: one decode fewer) gives what its own decode gives: the same samples but the
resampler's first ones, the same decision, the same offset, on real speech in WebM and MP4."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

from tests.harness.speech_media import CaseSpec, make_speech_case
from worker import media
from worker.media import sync
from worker.media.sync_decode import Decoded, decode_window

SPECS = [
    CaseSpec("kept-webm", voices=-1, seed=3, call_seconds=60, container="webm"),
    CaseSpec("kept-mp4", voices=-1, seed=4, call_seconds=60, container="mp4"),
]


async def _inputs(recording: Path, connect: Path, call_end: float) -> sync.SyncInputs:
    rec = media.Recording.of(await media.probe(recording))
    conn = media.ConnectAudio.of(await media.probe(connect))
    plan = media.plan_merge(rec, conn, call_end, media.MergeOptions())
    return media.sync_inputs(rec, conn, plan)


@pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])
def test_a_fine_window_cut_from_the_call_ends_decode_measures_as_its_own(
    tmp_path: Path, spec: CaseSpec
) -> None:
    case = make_speech_case(tmp_path, spec)
    call_end = float(int(case.true_call_end + 12))  # the timestamp 12 s late
    inputs = anyio.run(_inputs, case.recording, case.connect, call_end)
    window = sync.plan_window(
        call_end=inputs.call_end,
        recording_duration=inputs.recording_duration,
        connect_duration=inputs.connect_duration,
        rival=sync.RIVAL_SEARCH_SECONDS,
    )
    assert isinstance(window, sync.SyncWindow)
    decoded = anyio.run(lambda: decode_window(inputs, window, timeout=60))
    assert not isinstance(decoded, sync.SyncResult)
    kept = Decoded(window, *decoded)
    fine = sync.plan_window(
        call_end=case.true_connect_end + 0.3,  # a coarse candidate, a little off
        recording_duration=inputs.recording_duration,
        connect_duration=inputs.connect_duration,
        search=1.0,
    )
    assert isinstance(fine, sync.SyncWindow)
    cut = kept.cut(fine)
    assert cut is not None  # the fine window lies inside the call end's
    own = anyio.run(lambda: decode_window(inputs, fine, timeout=60))
    assert not isinstance(own, sync.SyncResult)
    np.testing.assert_array_equal(cut[0], own[0])
    assert cut[1].size == own[1].size
    # The resampler starts afresh at a decode's first samples; past them, the same samples.
    np.testing.assert_allclose(cut[1][16:], own[1][16:], atol=1e-3)
    on_cut, on_own = sync.synchronise(*cut, fine), sync.synchronise(*own, fine)
    assert on_cut.method == on_own.method == "waveform", (on_cut, on_own)
    assert abs(on_cut.offset_seconds - on_own.offset_seconds) < 1e-4
    # The measured call end is the true one (the fine window's offset is from its centre).
    assert abs(case.true_connect_end + 0.3 + on_cut.offset_seconds - case.true_connect_end) < 0.02
