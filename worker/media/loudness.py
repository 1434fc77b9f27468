"""Even loudness (issue 13): both segments of the output brought to one EBU R128 target.

Telephony audio and a browser microphone differ by many dB, so the boundary at the call end
jumps. With ``LOUDNESS_TARGET`` set, each segment gets one **static gain** that brings its
integrated loudness to the target, and the merged audio passes a true-peak-safe limiter:

- Static, not ``loudnorm``'s single-pass dynamic mode: a constant gain keeps the speech's own
  dynamics and never pumps background noise up in pauses; the limiter only touches the rare
  peaks a gain pushes over the ceiling (``latency=1``: no delay, so the sync is kept).
- Measured by ffmpeg's own ``ebur128`` (the BS.1770 reference the checks use) on a bounded
  stretch next to the call end (:data:`MEASURE_SECONDS` of each source), so the cost is flat
  with the recording's length. The microphone is measured across the call end: the same
  microphone and voice before (where the agent talks) and after it (After Call Work), so a
  quiet ACW of keyboard noise is not pumped up to speech level.
- A stretch with nothing above the R128 gates (silence) keeps its level (gain 0), and gains
  are bounded to +-:data:`MAX_GAIN_DB`.

Everything here is pure (the argument builders, the parser, the gain rule, the filter steps);
:func:`worker.media.measure.measure_gains` runs both measurements in one ffmpeg run with the
allow-listed, time-limited runner.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from worker import ffmpeg_inputs as ffmpeg

MEASURE_SECONDS = 60.0
MAX_GAIN_DB = 30.0
# Sample-peak ceiling of the limiter: 2 dB below full scale leaves room for the inter-sample
# peaks of the lossy encoders (true peak stays below -1 dBTP for speech).
LIMIT_DB = -2.0
# ebur128 reports -70 LUFS (its absolute gate) when nothing passes the gates.
SILENT_LUFS = -69.0
MIN_TARGET_LUFS, MAX_TARGET_LUFS = -40.0, -5.0

# The first line of an ebur128 instance's summary: "[ebur128@connect @ 0x55d0c0] Summary:".
_SUMMARY = re.compile(r"^\s*\[ebur128@(\w+) @ [^\]]*\] Summary:")
_INTEGRATED = re.compile(r"^\s*I:\s*(-?\d+(?:\.\d+)?|-?inf|nan)\s*LUFS", re.IGNORECASE)


@dataclass(frozen=True)
class LoudnessGains:
    """Gain (dB) for each segment and what was measured (LUFS, None: silent/unmeasured)."""

    target_lufs: float
    connect_db: float
    recording_db: float
    connect_lufs: float | None
    recording_lufs: float | None


@dataclass(frozen=True)
class Stretch:
    """One measurement: a stream of a file, from ``start`` for ``seconds``, mixed by ``mix``."""

    path: Path
    stream_index: int
    start: float
    seconds: float
    mix: list[str]


def build_measure_args(stretch: Stretch) -> list[str]:
    """ffmpeg running ``ebur128`` over one stretch, printing its summary on stderr (pure)."""
    chain = ",".join([*stretch.mix, "ebur128=framelog=verbose"])
    args = [ffmpeg.FFMPEG, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info"]
    if stretch.start > 0:
        args += ["-ss", f"{stretch.start:.6f}"]
    args += ["-t", f"{stretch.seconds:.6f}", *ffmpeg.input_args(stretch.path)]
    args += ["-map", f"0:{stretch.stream_index}", "-vn", "-sn", "-dn", "-af", chain]
    args += ["-f", "null", "-"]
    return args


def build_measure_all_args(stretches: dict[str, Stretch]) -> list[str]:
    """ffmpeg running ``ebur128`` over each named stretch in one run (pure): each stretch its
    own input (the same fast seek and length as :func:`build_measure_args`), its own filter
    instance ``ebur128@NAME`` whose summary :func:`parse_integrated_by_name` finds on stderr.
    Names are identifiers (``connect``, ``recording``)."""
    args = [ffmpeg.FFMPEG, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info"]
    chains = []
    for n, (name, stretch) in enumerate(stretches.items()):
        if stretch.start > 0:
            args += ["-ss", f"{stretch.start:.6f}"]
        args += ["-t", f"{stretch.seconds:.6f}", *ffmpeg.input_args(stretch.path)]
        steps = ",".join([*stretch.mix, f"ebur128@{name}=framelog=verbose"])
        chains.append(f"[{n}:{stretch.stream_index}]{steps}[{name}]")
    args += ["-filter_complex", ";".join(chains)]
    for name in stretches:
        args += ["-map", f"[{name}]"]
    return [*args, "-f", "null", "-"]


def parse_integrated_by_name(lines: list[str], names: list[str]) -> dict[str, float | None]:
    """Each named ``ebur128`` instance's integrated loudness (see :func:`parse_integrated`)
    from a run of :func:`build_measure_all_args`: the ``I:`` lines after the instance's
    ``[ebur128@NAME @ 0x...] Summary:`` line (its last summary counts: ffmpeg may print an
    empty one first, for a filter graph it configured and replaced)."""
    owned: dict[str, list[str]] = {name: [] for name in names}
    current: list[str] | None = None
    for line in lines:
        summary = _SUMMARY.match(line)
        if summary:
            current = owned.get(summary[1])
        elif current is not None:
            current.append(line)
    return {name: parse_integrated(found) for name, found in owned.items()}


def parse_integrated(lines: list[str]) -> float | None:
    """Integrated loudness (LUFS) from an ``ebur128`` summary; None if silent or absent."""
    for line in reversed(lines):
        match = _INTEGRATED.match(line)
        if match:
            value = float(match[1])
            return value if math.isfinite(value) and value > SILENT_LUFS else None
    return None


def gain_for(measured: float | None, target: float) -> float:
    """The static gain (dB) that brings ``measured`` to ``target``; 0 for silence."""
    if measured is None:
        return 0.0
    return max(-MAX_GAIN_DB, min(MAX_GAIN_DB, target - measured))


def stretches_near(
    call_end: float, recording_duration: float, connect_duration: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(start, seconds) of the Connect and the recording stretches measured (pure).

    Connect: its last :data:`MEASURE_SECONDS`. Recording: :data:`MEASURE_SECONDS` centred on
    the call end, clamped to the recording.
    """
    connect_seconds = min(MEASURE_SECONDS, connect_duration)
    begin = max(0.0, min(call_end, recording_duration) - MEASURE_SECONDS / 2)
    end = min(recording_duration, begin + MEASURE_SECONDS)
    begin = max(0.0, end - MEASURE_SECONDS)
    return (connect_duration - connect_seconds, connect_seconds), (begin, end - begin)


def volume_step(gain_db: float) -> list[str]:
    """The filter applying a static gain (none for 0 dB)."""
    return [f"volume={gain_db:.2f}dB"] if abs(gain_db) >= 0.005 else []


def limiter_step() -> str:
    """Peak limiter without delay (``latency=1``) and without auto-levelling (``level=0``)."""
    limit = 10 ** (LIMIT_DB / 20)
    return f"alimiter=limit={limit:.4f}:attack=5:release=50:level=0:latency=1"
