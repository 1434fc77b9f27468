"""The floor: what any correct implementation must at least do.

Remux the video with ``-c copy`` and encode the output's audio (the recording's audio track,
which has the output's length) at this project's settings (mono, 16 kHz, 48 kbit/s AAC; Opus
in a WebM output, for a VP8/VP9 recording), in one ffmpeg run. The MP4 is written with
``+faststart`` because SPEC §5 requires it of any correct output; ``--no-faststart`` gives
the bare remux+encode for comparison.

Run as a subprocess by the bench:
``python -m bench.floor RECORDING OUTPUT [--no-faststart]``; prints one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from worker.config import AudioSettings

FFMPEG = ("ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y")


def floor_command(
    recording: Path, output: Path, audio: AudioSettings, *, faststart: bool = True
) -> list[str]:
    """The floor's ffmpeg command line (the codec by ``output``'s suffix, as the merge's). Pure."""
    webm = output.suffix == ".webm"
    argv = [
        *FFMPEG,
        "-i", str(recording),
        "-map", "0:v:0", "-map", "0:a:0",
        "-c:v", "copy",
        "-c:a", "libopus" if webm else "aac",
        "-ac", str(audio.channels), "-ar", str(audio.sample_rate),
        "-b:a", audio.bitrate,
    ]  # fmt: skip
    if faststart and not webm:
        argv += ["-movflags", "+faststart"]
    return [*argv, str(output)]


def main(argv: list[str]) -> int:
    """CLI entry for the bench's subprocess."""
    faststart = "--no-faststart" not in argv
    recording, output = (a for a in argv if not a.startswith("--"))
    startup_cpu = time.process_time()  # interpreter start-up, subtracted by the bench
    started = time.perf_counter()
    subprocess.run(
        floor_command(Path(recording), Path(output), AudioSettings(), faststart=faststart),
        check=True,
    )
    wall = time.perf_counter() - started
    print(json.dumps({"wall_seconds": wall, "startup_cpu_seconds": startup_cpu, "output": output}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
