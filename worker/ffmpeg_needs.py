"""What the merge needs from ffmpeg, derived from the merge's own command lines (issue 16).

``doctor`` must not keep a hand-written copy of the filters and codecs the merge uses: a new
filter in :mod:`worker.media` would then be missing from the check. :func:`merge_needs`
instead builds the command lines of every kind of run a job makes, with the pure builders of
:mod:`worker.media` (its ``sync`` and ``loudness`` too), for representative inputs
(every accepted video codec, with and without microphone, mono and stereo, seeked, with
loudness and chapters), and reads off them the demuxers (the allow-list), muxers, encoders,
filters and bitstream filters they name. Decoders are the codecs the inputs arrive in:
:data:`worker.media.CODECS` for video (the thumbnail decodes it) and
:data:`INPUT_AUDIO_CODECS` for audio.

:func:`parse_listing` reads ``ffmpeg -hide_banner -demuxers|-muxers|-decoders|-encoders|
-filters|-bsfs``; :func:`missing` compares. All pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Final

from worker import media
from worker.config import AudioSettings
from worker.media import loudness, sync

# The audio codecs inputs arrive with (SPEC §5): Opus or AAC in browser recordings, PCM in
# Amazon Connect's WAV.
INPUT_AUDIO_CODECS: Final = ("opus", "aac", "pcm_s16le")
KINDS: Final = ("demuxers", "muxers", "decoders", "encoders", "filters", "bsfs")
_PATH = Path("/doctor/input")


@dataclass(frozen=True)
class FfmpegNeeds:
    """Names, per kind of ffmpeg component, that some run of a job uses."""

    demuxers: frozenset[str]
    muxers: frozenset[str]
    decoders: frozenset[str]  # codec names (any decoder for the codec will do)
    encoders: frozenset[str]
    filters: frozenset[str]
    bsfs: frozenset[str]

    def of(self, kind: str) -> frozenset[str]:
        """The names of ``kind`` (one of :data:`KINDS`)."""
        return frozenset(getattr(self, kind))


def _info(codec: str, audio: str | None, channels: int) -> media.Recording:
    video = media.StreamInfo(
        0, "video", codec, 0.0, 10.0, None, None, 640, 480, time_base=Fraction(1, 1000)
    )
    sound = (
        media.StreamInfo(1, "audio", audio, 0.0, 10.0, 48000, channels, None, None)
        if audio
        else None
    )
    spans = [media.StreamSpan(0, 0.0, 10.0, 9.9, 100)]
    if sound:
        spans.append(media.StreamSpan(1, 0.0, 10.0, 9.98, 500))
    return media.Recording.of(
        media.MediaInfo(
            _PATH, "matroska,webm", 10.0, video, sound, timeline=media.Timeline(tuple(spans))
        )
    )


def _connect(codec: str) -> media.ConnectAudio:
    stream = media.StreamInfo(0, "audio", codec, 0.0, 8.0, 8000, 2, None, None)
    return media.ConnectAudio.of(media.MediaInfo(_PATH, "wav", 8.0, None, stream))


def job_command_lines() -> list[list[str]]:
    """Every kind of ffmpeg/ffprobe command line a job runs, for representative inputs."""
    gains = loudness.LoudnessGains(-18.0, 3.0, -2.0, -21.0, -16.0)
    lines: list[list[str]] = [media.build_probe_args(_PATH), media.build_timeline_args(_PATH)]
    for codec in sorted(media.CODECS):
        for audio in (INPUT_AUDIO_CODECS[0], None):
            for channels in (1, 2):
                recording = _info(codec, audio, channels)
                connect = _connect(INPUT_AUDIO_CODECS[-1])
                options = media.MergeOptions(
                    audio=AudioSettings(channels=channels), loudness_target=-18.0
                )
                # Connect longer and shorter than the call end, no call part, no tail part.
                for call_end, with_gains in ((7.0, gains), (9.0, None), (0.0, None), (10.0, None)):
                    plan = media.plan_merge(recording, connect, call_end, options)
                    lines.append(
                        media.build_merge_args(
                            recording=recording,
                            connect=connect,
                            plan=plan,
                            output=_PATH,
                            options=options,
                            chapters=_PATH,
                            gains=with_gains,
                            thumbnail=_PATH,
                        )
                    )
        lines.append(media.build_thumbnail_args(_info(codec, None, 1), _PATH))
    stretch = loudness.Stretch(_PATH, 0, 1.0, 5.0, ["pan=mono|c0=c0"])
    lines.append(loudness.build_measure_all_args({"connect": stretch, "recording": stretch}))
    for layout in (1, 2, None):
        lines.append(
            sync.build_decode_args(_PATH, 0, channels=layout, agent=True, seek=1.0, seconds=5)
        )
    return lines


def filter_names(graph: str) -> set[str]:
    """The filter names in a filtergraph (``[in]name=args,name2[out];...``) (pure)."""
    names = set()
    for chain in graph.split(";"):
        for spec in re.split(r"(?<!\\),", chain):
            spec = re.sub(r"^(\[[^\]]*\])+", "", spec.strip())
            # "ebur128@connect=...": a named instance of ebur128.
            name = re.split(r"[=\[@]", spec, maxsplit=1)[0].strip()
            if name:
                names.add(name)
    return names


def needs_of(command_lines: Iterable[Sequence[str]]) -> FfmpegNeeds:
    """The components ``command_lines`` name (pure)."""
    found: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for args in command_lines:
        last_input = max((i for i, a in enumerate(args) if a == "-i"), default=-1)
        for index, arg in enumerate(args[:-1]):
            value = args[index + 1]
            if arg == "-format_whitelist":
                found["demuxers"].update(value.split(","))
            elif arg == "-f":
                found["demuxers" if index < last_input else "muxers"].add(value)
            elif arg.startswith(("-c:", "-codec:")) and value != "copy":
                found["encoders"].add(value)
            elif arg in ("-filter_complex", "-af", "-vf") or arg.startswith("-filter:"):
                found["filters"].update(filter_names(value))
            elif arg.startswith("-bsf"):
                found["bsfs"].update(re.split(r"[=,]", value)[:1])
    codecs = set(media.CODECS) | set(INPUT_AUDIO_CODECS)
    return FfmpegNeeds(
        demuxers=frozenset(found["demuxers"]),
        muxers=frozenset(found["muxers"] - {"-"}),
        decoders=frozenset(codecs),
        encoders=frozenset(found["encoders"]),
        filters=frozenset(found["filters"]),
        bsfs=frozenset(found["bsfs"]),
    )


def merge_needs() -> FfmpegNeeds:
    """What a job needs from ffmpeg (derived from :func:`job_command_lines`)."""
    return needs_of(job_command_lines())


_FORMAT_LINE = re.compile(r"^\s*([DE]{1,2}d?)\s+(\S+)\s")
_CODEC_LINE = re.compile(r"^\s*([VASDFXB.]{6})\s+(\S+)\s*(.*)$")
_FILTER_LINE = re.compile(r"^\s*[TSC.]{3}\s+(\S+)\s+\S*->\S*")
_CODEC_OF = re.compile(r"\(codec (\S+)\)")


def parse_listing(kind: str, text: str) -> frozenset[str]:
    """Names in an ``ffmpeg -hide_banner -<kind>`` listing (pure).

    Demuxers/muxers: every comma-separated alias (``mov,mp4,m4a``); decoders: the codec each
    decoder decodes (its own name and its ``(codec X)``), so ``libdav1d`` provides ``av1``;
    encoders: encoder names; filters and bitstream filters: their names.
    """
    names: set[str] = set()
    body = text.split("--\n", 1)[-1] if kind in ("demuxers", "muxers") else text
    for line in body.splitlines():
        if kind in ("demuxers", "muxers"):
            match = _FORMAT_LINE.match(line)
            wanted = "D" if kind == "demuxers" else "E"
            if match and wanted in match[1]:
                names.update(match[2].split(","))
        elif kind in ("decoders", "encoders"):
            match = _CODEC_LINE.match(line)
            if match and set(match[1]) != {"="}:
                names.add(match[2])
                if kind == "decoders":
                    names.update(_CODEC_OF.findall(match[3]))
        elif kind == "filters":
            match = _FILTER_LINE.match(line)
            if match:
                names.add(match[1])
        elif kind == "bsfs" and line.strip() and not line.endswith(":") and " " not in line.strip():
            names.add(line.strip())
    return frozenset(names)


def missing(needed: Iterable[str], available: Iterable[str]) -> list[str]:
    """Needed names not available, sorted (pure)."""
    return sorted(set(needed) - set(available))
