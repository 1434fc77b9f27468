"""`komorebi-worker merge` (SPEC §7): exit codes, one-line errors, printed paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.fixtures_media import (
    CHROME_H264_OPUS_WEBM,
    CHROME_VP8_NOAUDIO,
    CHROME_VP8_OPUS,
    CONNECT_WAV,
)
from tests.harness.media_tools import ffprobe_json, framemd5
from worker.cli import main


def merge_cli(
    capsys: pytest.CaptureFixture[str],
    recording: Path,
    connect: Path,
    call_end: str,
    output: Path,
    *extra: str,
) -> tuple[int, str, str]:
    argv = [
        "merge",
        "--recording",
        str(recording),
        "--connect-audio",
        str(connect),
        "--call-end",
        call_end,
        "--output",
        str(output),
        *extra,
    ]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("komorebi-worker: ")
    assert "Traceback" not in err
    return lines[0]


def test_success_prints_paths(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged.mp4"
    thumb = tmp_path / "thumb.png"
    code, stdout, stderr = merge_cli(
        capsys,
        data_dir / CHROME_H264_OPUS_WEBM,
        data_dir / CONNECT_WAV,
        "00:00:06.000",
        out,
        "--thumbnail",
        str(thumb),
        "--progress",
        "none",
    )
    assert code == 0, stderr
    assert stdout.splitlines() == [str(out), str(thumb)]
    # One line on how the call end was placed: a 5 s call of tones is too short to sync on.
    assert one_line(stderr) == (
        "komorebi-worker: sync: timestamp, call end 6.000 s (too short, confidence 0.0)"
    )
    assert framemd5(out) == framemd5(data_dir / CHROME_H264_OPUS_WEBM)
    kinds = sorted(s["codec_name"] for s in ffprobe_json(out)["streams"])  # type: ignore[union-attr, index]
    # MP4 keeps its chapters ("Call", "After Call Work") in a QuickTime chapter track.
    assert kinds == ["aac", "bin_data", "h264"]


def test_end_alignment_prints_nothing_but_the_paths(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged.webm"
    code, stdout, stderr = merge_cli(
        capsys, data_dir / CHROME_VP8_OPUS, data_dir / CONNECT_WAV, "6", out, "--align", "end"
    )
    assert (code, stdout.splitlines(), stderr) == (0, [str(out)], "")


def test_progress_bar_when_asked(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    code, _out, err = merge_cli(
        capsys,
        data_dir / CHROME_VP8_OPUS,
        data_dir / CONNECT_WAV,
        "6",
        tmp_path / "o.webm",
        "--progress",
        "bar",
        "--align",
        "start",
    )
    assert code == 0
    assert "merge:" in err  # the tqdm bar (erased at the end, still in the stream)


def test_clamp_is_a_warning_not_an_error(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    code, out, err = merge_cli(
        capsys, data_dir / CHROME_VP8_OPUS, data_dir / CONNECT_WAV, "99", tmp_path / "o.webm"
    )
    assert code == 0
    assert out.strip() == str(tmp_path / "o.webm")
    warning, synced = [line for line in err.splitlines() if line.strip()]
    assert "clamped" in warning
    assert synced.startswith("komorebi-worker: sync: timestamp, call end 8.")


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("missing-recording", 2, "no such file"),
        ("missing-connect", 2, "no such file"),
        ("negative", 2, "must not be negative"),
        ("garbage", 2, "is not HH:MM:SS"),
        ("bad-extension", 2, ".mp4 or .webm"),
        ("overwrite-input", 2, "would overwrite an input file"),
        ("codec-vs-extension", 2, "cannot hold vp8 video; use .webm"),
        ("no-video", 1, "has no video stream"),
        ("connect-no-audio", 1, "has no audio stream"),
        ("unsupported-codec", 1, "'mpeg4' is not supported"),
        ("playlist", 1, "a hls file, not an allowed media container"),
        ("concat", 1, "a concat file, not an allowed media container"),
        ("text", 1, "Invalid data found"),
        ("empty", 1, "is empty"),
        ("rate", 2, "--audio-sample-rate: must be 8000, 12000, 16000, 24000 or 48000"),
        ("rate-text", 2, "--audio-sample-rate: must be a number"),
        ("bitrate", 2, "--audio-bitrate: must look like 48k or 48000"),
    ],
)
def test_errors_are_one_clear_line(
    capsys: pytest.CaptureFixture[str],
    data_dir: Path,
    tmp_path: Path,
    hostile_files: dict[str, Path],
    generated: Callable[[str], Path],
    case: str,
    code: int,
    needle: str,
) -> None:
    rec, conn, call_end, out = (
        data_dir / CHROME_VP8_OPUS,
        data_dir / CONNECT_WAV,
        "5",
        tmp_path / "o.webm",
    )
    if case == "missing-recording":
        rec = tmp_path / "nope.webm"
    elif case == "missing-connect":
        conn = tmp_path / "nope.wav"
    elif case == "negative":
        call_end = "-3"
    elif case == "garbage":
        call_end = "five"
    elif case == "overwrite-input":
        rec = tmp_path / "in.webm"
        rec.write_bytes((data_dir / CHROME_VP8_OPUS).read_bytes())
        out = rec
    elif case == "bad-extension":
        out = tmp_path / "o.avi"
    elif case == "codec-vs-extension":
        out = tmp_path / "o.mp4"
    elif case == "no-video":
        rec = data_dir / CONNECT_WAV
    elif case == "connect-no-audio":
        conn = data_dir / CHROME_VP8_NOAUDIO
    elif case == "unsupported-codec":
        rec, out = generated("mpeg4-aac"), tmp_path / "o.mp4"
    elif case == "playlist":
        rec, out = hostile_files["hls-file"], tmp_path / "o.mp4"
    elif case == "concat":
        conn = hostile_files["ffconcat"]
    elif case in ("text", "empty"):
        rec, out = hostile_files[case], tmp_path / "o.mp4"
    extra = {
        "rate": ["--audio-sample-rate", "44100"],
        "rate-text": ["--audio-sample-rate", "fast"],
        "bitrate": ["--audio-bitrate=-3k"],
    }.get(case, [])
    got, stdout, stderr = merge_cli(capsys, rec, conn, call_end, out, *extra)
    assert got == code
    assert stdout == ""
    assert needle in one_line(stderr)
    assert out.exists() == (case == "overwrite-input")
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_console_script_exit_codes(data_dir: Path, tmp_path: Path) -> None:
    """The installed entry point, as a shell would run it (not a TTY: no progress bar)."""
    script = Path(sys.executable).parent / "komorebi-worker"
    ok = subprocess.run(
        [
            str(script),
            "merge",
            "--recording",
            str(data_dir / CHROME_VP8_OPUS),
            "--connect-audio",
            str(data_dir / CONNECT_WAV),
            "--call-end",
            "00:06",
            "--output",
            str(tmp_path / "o.webm"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (ok.returncode, ok.stdout.strip()) == (0, str(tmp_path / "o.webm"))
    assert ok.stderr.startswith("komorebi-worker: sync: timestamp, call end 6.000 s")
    usage = subprocess.run(
        [str(script), "merge", "--recording", "x"], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2
    assert len(usage.stderr.strip().splitlines()) == 1


def test_a_failed_merge_leaves_a_file_already_at_output_as_it_was(
    data_dir: Path, tmp_path: Path
) -> None:
    """ffmpeg fails after writing part of the output: the staged file goes, the user's stays."""
    real = shutil.which("ffmpeg")
    assert real is not None
    stubs = tmp_path / "bin"
    stubs.mkdir()
    stub = stubs / "ffmpeg"
    # The merge (the only run with -filter_complex) writes a partial file, then fails.
    stub.write_text(
        "#!/bin/sh\n"
        'case "$*" in *-filter_complex*)\n'
        '  for last; do :; done; echo partial > "${last#file:}";'
        ' echo "Conversion failed!" >&2; exit 1;;\n'
        f'esac\nexec {real} "$@"\n'
    )
    stub.chmod(0o755)
    out, thumb = tmp_path / "o.webm", tmp_path / "t.png"
    out.write_bytes(b"the user's own recording")
    thumb.write_bytes(b"the user's own thumbnail")
    script = Path(sys.executable).parent / "komorebi-worker"
    failed = subprocess.run(
        [
            *(str(script), "merge", "--recording", str(data_dir / CHROME_VP8_OPUS)),
            *("--connect-audio", str(data_dir / CONNECT_WAV), "--call-end", "5"),
            *("--output", str(out), "--thumbnail", str(thumb)),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"},
    )
    assert failed.returncode == 1, failed.stderr
    assert "Conversion failed" in failed.stderr
    assert out.read_bytes() == b"the user's own recording"
    assert thumb.read_bytes() == b"the user's own thumbnail"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "o.webm", "t.png"]
