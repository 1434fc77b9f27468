"""Where the sync looks, and how it decodes it (pure): the windows around a call end
(:func:`plan_window`) or a drift point (:func:`plan_stretch`), and the ffmpeg arguments that
decode one stretch to 8 kHz mono (:func:`build_decode_args`), or several stretches (a window's
two, the drift points' four) in one run (:func:`build_stretches_decode_args`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from worker import ffmpeg_inputs
from worker.media import sync_search
from worker.media.sync_model import (
    BAND_HZ,
    DECODE_MARGIN_SECONDS,
    MIN_STRETCH_SECONDS,
    SEARCH_SECONDS,
    STRETCH_SECONDS,
    SYNC_RATE,
    WIDE_PARTS,
    WIDE_SPLIT_FROM_SECONDS,
    SyncWindow,
)


def plan_window(
    *,
    call_end: float,
    recording_duration: float,
    connect_duration: float,
    search: float = SEARCH_SECONDS,
    rival: float | None = None,
) -> SyncWindow | str:
    """The stretches to correlate, or the fallback reason when there is too little audio.

    The Connect stretch is its last :data:`STRETCH_SECONDS` (fewer for a short call); at zero
    offset it lies on the recording at ``[call_end - length, call_end]``. Offsets within
    +-``search`` are accepted; the microphone is decoded over that stretch widened by
    +-``rival`` (None: ``search``; at least ``search``), where any peak is a rival
    (:data:`~worker.media.sync_model.RIVAL_SEARCH_SECONDS`), clamped to the recording.
    """
    rival = search if rival is None else max(rival, search)
    length = min(STRETCH_SECONDS, connect_duration, call_end + search)
    if length < MIN_STRETCH_SECONDS:
        return "too_short"
    connect_start = connect_duration - length
    placement = call_end - connect_duration  # recording time of the Connect file's t=0
    begin = max(0.0, call_end - length - rival - DECODE_MARGIN_SECONDS)
    seek = math.floor(begin)
    end = min(recording_duration, call_end + rival + DECODE_MARGIN_SECONDS)
    if end - seek < MIN_STRETCH_SECONDS:
        return "too_short"
    # The measured call end stays inside the recording (END alignment cannot place beyond).
    return SyncWindow(
        connect_start=connect_start,
        connect_seconds=length,
        recording_seek=seek,
        recording_seconds=end - seek,
        zero_lag=connect_start + placement - seek,
        min_offset=max(-search, -call_end),
        max_offset=min(search, recording_duration - call_end),
        rival_min_offset=max(-rival, -call_end),
        rival_max_offset=min(rival, recording_duration - call_end),
    )


def plan_stretch(
    *,
    connect_start: float,
    length: float,
    placement: float,
    search: float,
    recording_duration: float,
) -> SyncWindow | None:
    """A window for the Connect stretch ``[connect_start, +length]`` expected at recording
    time ``placement + connect_start`` (+-``search``), for the drift measurements; None when
    the stretch and its search do not lie inside the recording (pure)."""
    at = placement + connect_start
    if at - search < 0 or at + length + search > recording_duration:
        return None
    seek = math.floor(max(0.0, at - search - DECODE_MARGIN_SECONDS))
    end = min(recording_duration, at + length + search + DECODE_MARGIN_SECONDS)
    return SyncWindow(
        connect_start=connect_start,
        connect_seconds=length,
        recording_seek=seek,
        recording_seconds=end - seek,
        zero_lag=at - seek,
        min_offset=-search,
        max_offset=search,
    )


# What a decode writes on its pipe: float32 for the fine pass (the estimator's input as is),
# int16 for the wide search's whole-recording decode (its envelope needs no more than 16 bits,
# and half the bytes through the pipe: a third of that decode's cost was the pipe's).
SampleFormat = Literal["f32", "s16"]
PCM: dict[SampleFormat, tuple[str, str]] = {
    "f32": ("f32le", "pcm_f32le"),
    "s16": ("s16le", "pcm_s16le"),
}


@dataclass(frozen=True)
class WidePart:
    """One of the wide search's decodes: the recording from ``seek`` (whole seconds) for
    ``seconds`` (None: to the end), searched for reference starts ``[min_lag, max_lag]``
    seconds after ``seek``."""

    seek: int
    seconds: float | None
    min_lag: float
    max_lag: float


def plan_wide(
    *,
    recording_duration: float,
    length: float,
    parts: int = WIDE_PARTS,
    split_from: float = WIDE_SPLIT_FROM_SECONDS,
) -> list[WidePart]:
    """The wide search's decodes (pure): reference starts from ``MIN_STRETCH_SECONDS -
    length`` (a Connect file that began before the recording, overlapping it by a usable
    stretch) to ``recording_duration - length`` (it ends inside the recording), split into
    ``parts`` consecutive lag ranges for recordings of ``split_from`` seconds or more, so the
    decodes run side by side. Each part decodes its own lags plus the reference's length
    (and :data:`DECODE_MARGIN_SECONDS`); together they search every lag exactly once, so a
    rival anywhere is still seen (the ambiguity rule is the whole recording's)."""
    low = min(0.0, MIN_STRETCH_SECONDS - length)
    high = recording_duration - length
    count = parts if recording_duration >= split_from else 1
    bounds = [low] + [math.floor(high * i / count) for i in range(1, count)] + [high]
    found: list[WidePart] = []
    for first, last in itertools.pairwise(bounds):
        seek = max(0, math.floor(first))
        end = last + length + DECODE_MARGIN_SECONDS
        seconds = None if end >= recording_duration else end - seek
        # Lags are searched as [first, last) except the last part's, which ends at ``high``.
        stop = last if last == high else last - 1.0 / sync_search.ENVELOPE_RATE
        found.append(WidePart(seek, seconds, first - seek, stop - seek))
    return found


def _pick(channels: int | None, *, agent: bool) -> str:
    """pan expression: Connect's agent is the right channel; a microphone is its average."""
    if channels == 2:
        return "pan=mono|c0=c1" if agent else "pan=mono|c0=0.5*c0+0.5*c1"
    if channels == 1:
        return "pan=mono|c0=c0"
    return "aformat=channel_layouts=mono"  # other layouts: ffmpeg's standard downmix


def build_decode_args(
    path: Path,
    stream_index: int,
    *,
    channels: int | None,
    agent: bool,
    seek: float,
    seconds: float | None,
    band: bool = False,
    sample_format: SampleFormat = "f32",
) -> list[str]:
    """ffmpeg decoding ``seconds`` (None: to the end) from ``seek`` of one audio stream to
    8 kHz mono ``sample_format`` on stdout (pure). ``-ss`` before ``-i`` is a fast container seek;
    ``first_pts=0`` makes sample 0 the seek point (a late start or a gap becomes silence, as
    in the merge). ``band`` band-limits to :data:`BAND_HZ` (the wide search's envelopes)."""
    chain = ",".join(_steps(channels, agent=agent, band=band, seconds=seconds))
    args = [ffmpeg_inputs.FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"]
    args += _seek_input(path, seek)
    args += ["-map", f"0:{stream_index}", "-vn", "-sn", "-dn", "-af", chain]
    muxer, codec = PCM[sample_format]
    args += ["-f", muxer, "-c:a", codec, "pipe:1"]
    return args


def _steps(channels: int | None, *, agent: bool, band: bool, seconds: float | None) -> list[str]:
    """One stretch's filter chain: its channel, 8 kHz from sample 0 at the seek point
    (``first_pts=0``: a late start or a gap becomes silence, as in the merge), optionally
    band-limited, cut at ``seconds``."""
    steps = [_pick(channels, agent=agent), f"aresample={SYNC_RATE}:async=1:first_pts=0"]
    if band:
        steps += [f"highpass=f={BAND_HZ[0]:g}", f"lowpass=f={BAND_HZ[1]:g}"]
    if seconds is not None:
        steps.append(f"atrim=end_sample={round(seconds * SYNC_RATE)}")
    return steps


def _seek_input(path: Path, seek: float) -> list[str]:
    """A fast container seek (``-ss`` before ``-i``; none at 0), then the allow-listed input."""
    return (["-ss", f"{seek:.6f}"] if seek > 0 else []) + ffmpeg_inputs.input_args(path)


@dataclass(frozen=True)
class StretchSource:
    """One stretch to decode: ``seconds`` from ``seek`` of a file's audio stream (``agent``:
    Connect's agent channel; otherwise a microphone's average)."""

    path: Path
    stream_index: int
    channels: int | None
    agent: bool
    seek: float
    seconds: float


# The columns of each stretch in a several-stretch decode: its samples, then its presence (1.0
# where the stretch has a decoded sample, 0.0 where it was padded to the longest's length).
COLUMNS_PER_STRETCH = 2


def build_pair_decode_args(first: StretchSource, second: StretchSource) -> list[str]:
    """One ffmpeg run decoding two stretches (pure): :func:`build_stretches_decode_args`'s,
    written as 4-channel float32 ``[first, first's presence, second,
    second's presence]``."""
    return build_stretches_decode_args([first, second])


def build_stretches_decode_args(sources: Sequence[StretchSource]) -> list[str]:
    """One ffmpeg run decoding several stretches (pure): each exactly as
    :func:`build_decode_args` would (its own fast seek, allow-lists, channel pick,
    ``first_pts=0``, ``atrim``), written together as float32 on stdout,
    :data:`COLUMNS_PER_STRETCH` columns per stretch: its samples, then its presence. They must
    be as long for ``amerge``, so each is padded with ``apad`` to the longest requested
    length; a padded zero could be a real silent sample, hence each stretch's presence column
    (1.0 per decoded sample, padded with 0): a stretch cut short by the end of its file keeps
    its real length. One process start instead of one per stretch (each costs about 0.1 s of
    CPU on Debian's ffmpeg)."""
    length = max(round(source.seconds * SYNC_RATE) for source in sources)
    mono = "aformat=sample_fmts=flt:channel_layouts=mono"  # amerge's inputs: one format
    chains = []
    for n, source in enumerate(sources):
        steps = _steps(source.channels, agent=source.agent, band=False, seconds=source.seconds)
        chains += [
            f"[{n}:{source.stream_index}]{','.join(steps)},asplit[v{n}][p{n}]",
            # 0 * x + 1: exactly 1.0 for every decoded sample (cheaper than aeval's per-sample
            # expression, which cost about what the second process start saved).
            f"[p{n}]volume=0:precision=float,dcshift=1,{mono}[q{n}]",
            f"[v{n}]{mono}[w{n}]",
            f"[w{n}][q{n}]amerge,apad=whole_len={length}[s{n}]",
        ]
    merged = "".join(f"[s{n}]" for n in range(len(sources)))
    graph = ";".join([*chains, f"{merged}amerge=inputs={len(sources)}[pair]"])
    args = [ffmpeg_inputs.FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"]
    for source in sources:
        args += _seek_input(source.path, source.seek)
    muxer, codec = PCM["f32"]
    return [*args, "-filter_complex", graph, "-map", "[pair]", "-f", muxer, "-c:a", codec, "pipe:1"]
