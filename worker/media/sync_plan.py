"""Where the sync looks, and how it decodes it (pure): the windows around a call end
(:func:`plan_window`) or a drift point (:func:`plan_stretch`), and the ffmpeg arguments that
decode one stretch to 8 kHz mono (:func:`build_decode_args`)."""

from __future__ import annotations

import itertools
import math
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
    steps = [_pick(channels, agent=agent), f"aresample={SYNC_RATE}:async=1:first_pts=0"]
    if band:
        steps += [f"highpass=f={BAND_HZ[0]:g}", f"lowpass=f={BAND_HZ[1]:g}"]
    if seconds is not None:
        steps.append(f"atrim=end_sample={round(seconds * SYNC_RATE)}")
    chain = ",".join(steps)
    args = [ffmpeg_inputs.FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"]
    if seek > 0:
        args += ["-ss", f"{seek:.6f}"]
    args += ffmpeg_inputs.input_args(path)
    args += ["-map", f"0:{stream_index}", "-vn", "-sn", "-dn", "-af", chain]
    muxer, codec = PCM[sample_format]
    args += ["-f", muxer, "-c:a", codec, "pipe:1"]
    return args
