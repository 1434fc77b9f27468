"""Generate and cache the benchmark media (screen-like recordings and Connect WAVs).

A recording is built from one 60-second segment (720p, 30 fps, a still light-grey "screen" with
a small animated test pattern in a corner, x264 ultrafast/stillimage, keyint 3 s, AAC stereo
48 kHz 128 kbit/s carrying a 1 kHz "microphone" tone) repeated with the concat demuxer and
stream copy: a 60-minute file costs a few seconds of disk I/O instead of an hour of encoding.
The Connect WAV (pcm_s16le, 8 kHz, stereo: 440 Hz customer left, 660 Hz agent right) covers
75% of the recording, the call ending at ``call_end = 0.75 * length``.

The live WebM (``kind="webm"``) is what Chromium's MediaRecorder writes by default: VP8/Opus
with no Cues and no Duration in its header. It is a real Chromium recording from ``tests/data``
repeated with the concat demuxer and stream copy into the Matroska muxer's ``-live 1`` mode
(which writes neither), so a 60-minute file also costs seconds.

Everything is written under ``bench/cache/`` (gitignored) with a manifest keyed by the
generation parameters, so a second run reuses the files.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(__file__).resolve().parent / "cache"
SEGMENT_SECONDS = 60
# A real Chromium MediaRecorder WebM (VP8 + Opus, no Cues, no Duration) the live WebM repeats.
WEBM_SOURCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "chrome-vp8-opus-8s.webm"
KINDS = ("mp4", "webm")
CALL_FRACTION = 0.75
# Bump when the generation recipe changes: cached files of another version are rebuilt.
RECIPE_VERSION = 1
RECIPE = {
    "version": RECIPE_VERSION,
    "video": "1280x720 30fps x264 ultrafast stillimage g=90 yuv420p",
    "audio": "aac stereo 48k 128k sine 1kHz",
    "connect": "pcm_s16le 8kHz stereo 440/660 Hz",
    "segment_seconds": SEGMENT_SECONDS,
}

FFMPEG = ("ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y")


@dataclass(frozen=True)
class BenchMedia:
    """One benchmark case: a recording, its Connect audio and the call end on its timeline."""

    minutes: int
    recording: Path
    connect_audio: Path
    call_end_seconds: float
    kind: str = "mp4"  # "mp4" (x264/AAC, faststart) or "webm" (Chromium-style live WebM)

    @property
    def label(self) -> str:
        """How reports name the case: "10 min", "60 min live WebM"."""
        return f"{self.minutes} min" + (" live WebM" if self.kind == "webm" else "")

    @property
    def seconds(self) -> float:
        """Nominal recording length in seconds."""
        return self.minutes * 60.0

    @property
    def input_bytes(self) -> int:
        """Bytes of both inputs (what a worker downloads into its scratch directory)."""
        return self.recording.stat().st_size + self.connect_audio.stat().st_size


def _nice() -> tuple[str, ...]:
    """Generation is background work on a shared machine: lowest CPU priority."""
    return ("nice", "-n", "19")


def _run(args: list[str]) -> None:
    subprocess.run([*_nice(), *args], check=True)


def segment_file(cache: Path = CACHE_DIR) -> Path:
    """The cached 60-second segment every recording is built from (generated if missing)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"segment-{SEGMENT_SECONDS}s.mp4"
    if path.exists():
        return path
    tmp = path.with_suffix(".part.mp4")
    graph = (
        "color=c=0xe8e8e8:s=1280x720:r=30[bg];"
        "testsrc2=s=320x180:r=30[fg];"
        "[bg][fg]overlay=x=W-w-40:y=H-h-40:shortest=1"
    )
    _run(
        [
            *FFMPEG,
            "-f", "lavfi", "-i", graph,
            "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
            "-t", str(SEGMENT_SECONDS),
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "stillimage",
            "-g", "90", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "128k", "-ac", "2",
            str(tmp),
        ]
    )  # fmt: skip
    tmp.rename(path)
    return path


def _recording(cache: Path, minutes: int, segment: Path) -> Path:
    path = cache / f"recording-{minutes}min.mp4"
    if path.exists():
        return path
    repeats = (minutes * 60) // SEGMENT_SECONDS
    listing = cache / f"recording-{minutes}min.txt"
    listing.write_text("".join(f"file '{segment.name}'\n" for _ in range(repeats)))
    tmp = path.with_suffix(".part.mp4")
    _run(
        [
            *FFMPEG,
            "-f", "concat", "-safe", "0", "-i", str(listing),
            "-c", "copy", "-movflags", "+faststart", str(tmp),
        ]
    )  # fmt: skip
    listing.unlink()
    tmp.rename(path)
    return path


def _live_webm(cache: Path, minutes: int) -> Path:
    """``minutes`` of :data:`WEBM_SOURCE` repeated, muxed live: no Cues, no Duration."""
    path = cache / f"recording-{minutes}min-live.webm"
    if path.exists():
        return path
    source = cache / WEBM_SOURCE.name
    if not source.exists():
        source.write_bytes(WEBM_SOURCE.read_bytes())
    seconds = _duration(source)
    repeats = max(1, round(minutes * 60 / seconds))
    listing = cache / f"recording-{minutes}min-live.txt"
    listing.write_text("".join(f"file '{source.name}'\n" for _ in range(repeats)))
    tmp = path.with_suffix(".part.webm")
    _run(
        [
            *FFMPEG,
            "-f", "concat", "-safe", "0", "-i", str(listing),
            "-map", "0", "-c", "copy", "-f", "webm", "-live", "1", str(tmp),
        ]
    )  # fmt: skip
    listing.unlink()
    tmp.rename(path)
    return path


def _duration(path: Path) -> float:
    """The media's length by its last packet (the live source has no header duration)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "packet=pts_time,duration_time",
         "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    ends = []
    for line in out.splitlines():
        pts, duration, *_ = [*line.split(","), ""]
        if pts not in ("", "N/A"):
            ends.append(float(pts) + (float(duration) if duration not in ("", "N/A") else 0.0))
    return max(ends)


def _connect_wav(cache: Path, minutes: int) -> Path:
    path = cache / f"connect-{minutes}min.wav"
    if not path.exists():
        write_connect_wav(path, minutes * 60 * CALL_FRACTION)
    return path


def write_connect_wav(path: Path, seconds: float) -> Path:
    """Write a Connect-shaped WAV (pcm_s16le, 8 kHz, stereo 440/660 Hz) of ``seconds``."""
    tmp = path.with_suffix(".part.wav")
    _run(
        [
            *FFMPEG,
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000",
            "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=8000",
            "-filter_complex", "[0:a][1:a]amerge=inputs=2[a]", "-map", "[a]",
            "-t", f"{seconds:.3f}", "-c:a", "pcm_s16le", "-ar", "8000", "-ac", "2",
            str(tmp),
        ]
    )  # fmt: skip
    tmp.rename(path)
    return path


def _manifest_ok(cache: Path) -> bool:
    manifest = cache / "manifest.json"
    try:
        return bool(json.loads(manifest.read_text()) == RECIPE)
    except (OSError, ValueError):
        return False


def ensure_media(
    minutes_list: list[int], cache: Path = CACHE_DIR, kinds: tuple[str, ...] = ("mp4",)
) -> list[BenchMedia]:
    """Return the benchmark media for each length and kind (:data:`KINDS`), generating what
    is not cached yet."""
    cache.mkdir(parents=True, exist_ok=True)
    if not _manifest_ok(cache):
        # Different recipe (or first run): drop stale files of ours, keep anything else.
        for stale in cache.glob("*"):
            if stale.suffix in {".mp4", ".webm", ".wav", ".txt"}:
                stale.unlink()
        (cache / "manifest.json").write_text(json.dumps(RECIPE))
    cases = []
    for kind in kinds:
        for minutes in minutes_list:
            recording = (
                _recording(cache, minutes, segment_file(cache))
                if kind == "mp4"
                else _live_webm(cache, minutes)
            )
            cases.append(
                BenchMedia(
                    minutes=minutes,
                    recording=recording,
                    connect_audio=_connect_wav(cache, minutes),
                    call_end_seconds=minutes * 60 * CALL_FRACTION,
                    kind=kind,
                )
            )
    return cases


def make_short_case(directory: Path, seconds: int = 3) -> BenchMedia:
    """A tiny case (for the smoke test): ``seconds`` of the same recipe, no cache."""
    directory.mkdir(parents=True, exist_ok=True)
    recording = directory / "recording.mp4"
    graph = (
        "color=c=0xe8e8e8:s=1280x720:r=30[bg];testsrc2=s=320x180:r=30[fg];"
        "[bg][fg]overlay=x=W-w-40:y=H-h-40:shortest=1"
    )
    _run(
        [
            *FFMPEG,
            "-f", "lavfi", "-i", graph,
            "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast",
            "-tune", "stillimage", "-g", "90", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "128k", "-ac", "2", str(recording),
        ]
    )  # fmt: skip
    connect = directory / "connect.wav"
    call_end = seconds * CALL_FRACTION
    _run(
        [
            *FFMPEG,
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000",
            "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=8000",
            "-filter_complex", "[0:a][1:a]amerge=inputs=2[a]", "-map", "[a]",
            "-t", f"{call_end:.3f}", "-c:a", "pcm_s16le", "-ar", "8000", "-ac", "2",
            str(connect),
        ]
    )  # fmt: skip
    return BenchMedia(
        minutes=0, recording=recording, connect_audio=connect, call_end_seconds=call_end
    )


def main() -> None:
    """Generate the default cache (used by `python -m bench.media_gen`)."""
    for case in ensure_media([5, 10, 15, 30, 60]) + ensure_media([60], kinds=("webm",)):
        size = os.path.getsize(case.recording) / 2**20
        print(
            f"{case.minutes:>3} min: {case.recording.name} ({size:.0f} MiB), "
            f"{case.connect_audio.name}"
        )


if __name__ == "__main__":
    main()
