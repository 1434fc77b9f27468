"""Both loudness stretches measured in one ffmpeg run (worker.media.loudness): the command
line and the reading of each named ebur128 instance's summary (pure)."""

from __future__ import annotations

from pathlib import Path

from worker.media import loudness


def stretch(path: str, index: int, start: float, mix: list[str]) -> loudness.Stretch:
    return loudness.Stretch(Path(path), index, start, 60.0, mix)


def test_one_run_measures_each_stretch_from_its_own_fast_seek() -> None:
    args = loudness.build_measure_all_args(
        {
            "connect": stretch("/in/c.wav", 0, 390.0, ["pan=mono|c0=c0", "aresample=16000"]),
            "recording": stretch("/in/r.mp4", 1, 0.0, []),
        }
    )
    inputs = [i for i, a in enumerate(args) if a == "-i"]
    assert len(inputs) == 2
    # Each stretch's seek and length precede its own input; no seek for a stretch at 0.
    assert args[inputs[0] - 8 : inputs[0] - 4] == ["-ss", "390.000000", "-t", "60.000000"]
    assert "-ss" not in args[inputs[0] + 1 : inputs[1]]
    graph = args[args.index("-filter_complex") + 1].split(";")
    assert graph == [
        "[0:0]pan=mono|c0=c0,aresample=16000,ebur128@connect=framelog=verbose[connect]",
        "[1:1]ebur128@recording=framelog=verbose[recording]",
    ]
    assert args[-7:] == ["-map", "[connect]", "-map", "[recording]", "-f", "null", "-"]
    # Every input behind the allow-lists, as in the single-stretch measurement.
    single = loudness.build_measure_args(stretch("/in/c.wav", 0, 390.0, []))
    assert args[inputs[0] - 4 : inputs[0]] == single[single.index("-i") - 4 : single.index("-i")]


def test_each_instance_gets_its_last_summary() -> None:
    # As ffmpeg 5.1 prints it (non-empty lines, the runner's stderr tail): an empty summary
    # of a replaced graph first, then the real ones, the recording's before the Connect's.
    lines = [
        "[ebur128@recording @ 0x5629cd824f80] Summary:",
        "Integrated loudness:",
        "I:         -70.0 LUFS",
        "[ebur128@connect @ 0x5629cd92e000] Summary:",
        "I:         -70.0 LUFS",
        "video:0kB audio:1876kB subtitle:0kB other streams:0kB global headers:0kB",
        "[ebur128@recording @ 0x5629cd81f540] Summary:",
        "Integrated loudness:",
        "I:         -24.1 LUFS",
        "Threshold: -34.1 LUFS",
        "LRA:         0.0 LU",
        "[ebur128@connect @ 0x5629cd833080] Summary:",
        "Integrated loudness:",
        "I:         -31.6 LUFS",
        "LRA high:  -31.5 LUFS",
    ]
    assert loudness.parse_integrated_by_name(lines, ["connect", "recording"]) == {
        "connect": -31.6,
        "recording": -24.1,
    }
    # Silence, a missing summary, an I: line before any summary are all "not measured".
    assert loudness.parse_integrated_by_name(
        ["I:         -20.0 LUFS", "[ebur128@connect @ 0x1] Summary:", "I: -70.0 LUFS"],
        ["connect", "recording"],
    ) == {"connect": None, "recording": None}
