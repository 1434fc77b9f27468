"""The wide search's packet-size coarse pass on real media (issue 19): a WebM/Opus recording of
human speech whose timestamp is 30 s early is placed from its packet sizes alone (no whole-
recording decode: the decode-based search never runs), within 20 ms in the merged output; the
packet scan itself reads a VBR envelope from a real Chromium recording."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.harness.speech_media import (
    CaseSpec,
    alignment_error,
    make_speech_case,
    merge_case,
    message_call_end,
)
from worker.media import sync_packets

DATA = Path(__file__).resolve().parent.parent / "data"
SPEC = CaseSpec("packets-webm", voices=-1, seed=21, call_seconds=70, container="webm")


def test_a_far_timestamp_is_placed_from_packet_sizes(tmp_path: Path) -> None:
    case = make_speech_case(tmp_path, SPEC)
    call_end = message_call_end(case.true_call_end, -30.0)
    with capture_logs() as logs:
        result = merge_case(case, call_end, tmp_path / "out.webm")
    assert result.sync.method == "waveform_wide", result.sync
    error = alignment_error(result.output, case, result.call_end_seconds)
    assert abs(error) <= 0.020, f"{error * 1000:.2f} ms"
    measured = [e for e in logs if e["event"] == "call_end_sync_wide_candidate"]
    assert measured, logs
    assert {e["coarse"] for e in measured} == {"packets"}  # the decode-based search never ran
    assert any(e["reason"] == "measured" for e in measured)


@pytest.mark.parametrize("name", ["chrome-vp9-silent-lead-10s.webm"])
def test_a_browser_recording_has_a_packet_envelope(name: str) -> None:
    raw = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
         sync_packets.FIELDS, "-of", "csv=p=0", str(DATA / name)],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    envelope = sync_packets.packet_envelope(*sync_packets.parse_packets(raw))
    assert envelope is not None
    # Its silent lead is small packets, its sound large ones (Chromium's Opus is VBR).
    assert envelope[:25].max() < envelope.max() - 2
