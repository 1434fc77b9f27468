"""The Lambda's five-pass sequence (plus its thumbnail), written from its description.

1. extract the recording's audio to a 16-bit PCM WAV at 8 kHz (channels kept: stereo, like the
   Connect WAV, or the concat demuxer's stream copy in step 4 could not join them);
2. copy the video without audio;
3. cut the extracted WAV at callEnd (``-ss`` before ``-i``: an exact, cheap seek in PCM);
4. concatenate the Connect WAV and the cut WAV with the concat demuxer and stream copy;
5. mux that WAV with the video, encoding AAC at ffmpeg's defaults and copying the video;
then a thumbnail from the output at 1 s.

Every pass writes an intermediate file into the work directory (the Lambda's /tmp), which is
what the scratch-disk measurement sees. Run as a subprocess by the bench:
``python -m bench.lambda_sequence RECORDING CONNECT_WAV CALL_END WORKDIR``; prints one JSON line
with the per-pass wall times.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

FFMPEG = ("ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y")


def lambda_commands(
    recording: Path, connect_wav: Path, call_end: float, workdir: Path
) -> list[tuple[str, list[str]]]:
    """The ffmpeg command lines of the sequence, in order, as (name, argv). Pure."""
    audio = workdir / "lambda-audio.wav"
    video = workdir / "lambda-video.mp4"
    cut = workdir / "lambda-cut.wav"
    listing = workdir / "lambda-concat.txt"
    joined = workdir / "lambda-joined.wav"
    output = workdir / "lambda-output.mp4"
    thumbnail = workdir / "lambda-thumbnail.png"
    return [
        ("extract_wav", [*FFMPEG, "-i", str(recording), "-vn", "-c:a", "pcm_s16le",
                         "-ar", "8000", str(audio)]),
        ("copy_video", [*FFMPEG, "-i", str(recording), "-an", "-c:v", "copy", str(video)]),
        ("cut_wav", [*FFMPEG, "-ss", f"{call_end:.3f}", "-i", str(audio), "-c", "copy",
                     str(cut)]),
        ("concat_wav", [*FFMPEG, "-f", "concat", "-safe", "0", "-i", str(listing),
                        "-c", "copy", str(joined)]),
        ("mux_aac", [*FFMPEG, "-i", str(video), "-i", str(joined), "-c:v", "copy",
                     "-c:a", "aac", str(output)]),
        ("thumbnail", [*FFMPEG, "-i", str(output), "-ss", "1", "-frames:v", "1",
                       str(thumbnail)]),
    ]  # fmt: skip


def run(recording: Path, connect_wav: Path, call_end: float, workdir: Path) -> dict[str, object]:
    """Run the sequence; return per-pass wall times and the output path."""
    steps = []
    startup_cpu = time.process_time()  # interpreter start-up, subtracted by the bench
    started = time.perf_counter()
    for name, argv in lambda_commands(recording, connect_wav, call_end, workdir):
        if name == "concat_wav":
            cut = workdir / "lambda-cut.wav"
            (workdir / "lambda-concat.txt").write_text(
                f"file '{connect_wav.resolve()}'\nfile '{cut.resolve()}'\n"
            )
        t0 = time.perf_counter()
        subprocess.run(argv, check=True)
        steps.append({"name": name, "wall_seconds": time.perf_counter() - t0})
    return {
        "wall_seconds": time.perf_counter() - started,
        "startup_cpu_seconds": startup_cpu,
        "steps": steps,
        "output": str(workdir / "lambda-output.mp4"),
    }


def main(argv: list[str]) -> int:
    """CLI entry for the bench's subprocess."""
    recording, connect, call_end, workdir = argv
    print(json.dumps(run(Path(recording), Path(connect), float(call_end), Path(workdir))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
