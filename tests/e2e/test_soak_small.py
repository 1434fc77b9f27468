"""The soak in small (inside `make test`): 40 messages, 2 workers, faults, one SIGKILL mid-job,
one SIGTERM mid-job with a 0.5 s grace period (so in-flight jobs are usually given back, not
finished). The full one is `make soak` (tests/harness/soak.py, 300 messages, 3 workers)."""

from __future__ import annotations

from pathlib import Path

from tests.harness.soak import SoakConfig, format_report, run_soak


def test_small_soak_loses_nothing(tmp_path: Path) -> None:
    """Every valid job DONE with an output that holds its recording's frames and its call's
    tones, poison in the DLQ with its reason, queue empty, no lease left, both workers exit 0
    — despite faults, a SIGKILL and a SIGTERM."""
    config = SoakConfig(
        messages=40,
        workers=2,
        kills=1,
        first_kill_after=4.0,
        kill_every=4.0,
        sigterm=True,
        visibility=8,
        grace=0.5,  # the SIGTERM gives jobs back (visibility 0, lease released) more often than not
        timeout=150.0,
        seed=3,
        workdir=tmp_path,
    )
    lines: list[str] = []
    report = run_soak(config, say=lines.append)
    text = "\n".join([*lines, format_report(report)])
    print(text)
    assert report.ok, text
    assert report.kills == 1 and report.sigterms == 1
    assert report.lost == 0 and report.done == report.valid == report.outputs_valid
    assert report.poison_in_dlq_with_reason == report.poison >= 2
    assert report.unexpected_dlq == 0
    assert report.in_flight_at_end == (0, 0) and report.leases_left == 0
    assert report.sigterm_exit_codes == [0]
    assert sum(report.faults["faults"].values()) > 0
