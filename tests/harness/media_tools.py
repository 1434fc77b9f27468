"""Reusable media analysis and generation helpers for tests (real ffmpeg, numpy).

Analysis: :func:`decode_pcm` (any file -> float32 samples), :func:`band_share` /
:func:`dominant_frequency` / :func:`rms` per window, :func:`tone_profile`, :func:`framemd5`
(decoded video frame hashes), :func:`probe_duration` / :func:`stream_end` /
:func:`timeline_duration` (durations), :func:`packet_times`.
Generation: :func:`make_recording` and :func:`make_tone_wav` (ffmpeg lavfi sources).
Counting: :func:`count_runs` (what each ffmpeg/ffprobe run of the code under test was for).
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import pytest

    from worker.ffmpeg import RunResult

Samples = npt.NDArray[np.float32]

FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]


def _run(args: Sequence[str]) -> bytes:
    done = subprocess.run(list(args), capture_output=True, check=False)
    if done.returncode != 0:
        raise AssertionError(
            f"{args[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-800:]}"
        )
    return done.stdout


def ffmpeg(*args: str) -> bytes:
    """Run ffmpeg quietly (overwriting outputs); its stdout. Fails the test on an error."""
    return _run([*FFMPEG, "-y", *args])


# --- analysis --------------------------------------------------------------------------------


def decode_pcm(path: Path, *, rate: int = 16000, channels: int = 1) -> Samples:
    """The first audio stream of ``path`` as float32 samples, shape (n, channels).

    Sample 0 is at t=0 of the file's timeline as ffmpeg plays it (late starts are padded).
    """
    raw = _run(
        [
            *FFMPEG,
            "-i",
            str(path),
            "-map",
            "0:a:0",
            "-af",
            "aresample=async=1:first_pts=0",
            "-ac",
            str(channels),
            "-ar",
            str(rate),
            "-f",
            "f32le",
            "-",
        ]
    )
    return np.frombuffer(raw, dtype="<f4").reshape(-1, channels).astype(np.float32)


def window(samples: Samples, rate: int, start: float, end: float, channel: int = 0) -> Samples:
    """One channel of ``samples`` between ``start`` and ``end`` seconds."""
    return samples[round(start * rate) : round(end * rate), channel]


def rms(signal: Samples) -> float:
    """Root mean square of a 1-D signal (0 for an empty one)."""
    return float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))) if signal.size else 0.0


def _spectrum(
    signal: Samples, rate: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    tapered = signal.astype(np.float64) * np.hanning(signal.size)
    power = np.abs(np.fft.rfft(tapered)) ** 2
    freqs = np.fft.rfftfreq(signal.size, 1 / rate)
    return freqs, power


def band_share(signal: Samples, rate: int, freq: float, width: float = 25.0) -> float:
    """Fraction of the signal's energy within ``freq`` +- ``width`` Hz (0 for silence)."""
    if signal.size < 64:
        return 0.0
    freqs, power = _spectrum(signal, rate)
    total = float(power.sum())
    if total <= 1e-12:
        return 0.0
    band = (freqs >= freq - width) & (freqs <= freq + width)
    return float(power[band].sum()) / total


def transition_time(
    samples: Samples,
    rate: int,
    near: float,
    before: Sequence[float],
    after: float,
    *,
    reach: float = 0.06,
) -> float | None:
    """Where the tones ``before`` give way to ``after`` within ``reach`` s of ``near``: the
    centre of the first 10 ms window (1 ms steps) with more energy at ``after`` (+-60 Hz) than
    at all of ``before`` together; None when there is none."""
    size, hop = round(0.010 * rate), max(1, rate // 1000)
    for begin in range(max(0, round((near - reach) * rate)), round((near + reach) * rate), hop):
        signal = samples[begin : begin + size, 0]
        if signal.size < size:
            return None
        old = sum(band_share(signal, rate, f, 60.0) for f in before)
        if band_share(signal, rate, after, 60.0) > old:
            return (begin + size / 2) / rate
    return None


def dominant_frequency(signal: Samples, rate: int) -> float:
    """The frequency (Hz) with the most energy in ``signal``."""
    freqs, power = _spectrum(signal, rate)
    power[freqs < 20] = 0  # ignore DC
    return float(freqs[int(np.argmax(power))])


def tone_profile(
    samples: Samples, rate: int, freqs: Sequence[float], *, step: float = 0.25, channel: int = 0
) -> list[tuple[float, float, dict[float, float]]]:
    """Per window of ``step`` seconds: (start, rms, {freq: band share})."""
    out = []
    n = samples.shape[0]
    hop = int(step * rate)
    for begin in range(0, n - hop + 1, hop):
        sig = samples[begin : begin + hop, channel]
        out.append((begin / rate, rms(sig), {f: band_share(sig, rate, f) for f in freqs}))
    return out


def framemd5(path: Path) -> list[str]:
    """MD5 of every decoded video frame of the first video stream, in order.

    ``-fps_mode passthrough`` keeps exactly the coded frames (no duplication or dropping for
    VFR) and ``-autoscale 0`` hashes each at its native size (ffmpeg would otherwise scale a
    resized recording's frames to the first size), so equal lists prove that the video was
    not re-encoded and that no frame was lost. One decoder thread: a damaged stream (avc1 MP4
    after a resize) is concealed differently from run to run by a multi-threaded decoder.
    """
    text = _run(
        [
            *FFMPEG,
            "-threads",
            "1",
            "-i",
            str(path),
            "-map",
            "0:v:0",
            "-fps_mode",
            "passthrough",
            "-autoscale",
            "0",
            "-f",
            "framemd5",
            "-",
        ]
    ).decode()
    return [line.rsplit(",", 1)[1].strip() for line in text.splitlines() if line and line[0] != "#"]


def frame_sizes(path: Path) -> list[str]:
    """``WxH`` of every decoded frame of the first video stream, in order."""
    return _ffprobe_csv(path, "v:0", "frame=width,height")


def _ffprobe_csv(path: Path, selector: str, entries: str) -> list[str]:
    """One ``-show_entries`` value row per line (``a,b``), for one stream."""
    args = ["ffprobe", "-v", "error", "-select_streams", selector, "-show_entries", entries]
    text = _run([*args, "-of", "csv=p=0:s=x", str(path)]).decode()
    return [line.strip("x") for line in text.splitlines() if line.strip("x")]


def ffprobe_json(path: Path) -> dict[str, object]:
    """ffprobe's format + streams as a dict."""
    raw = _run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)]
    )
    data: dict[str, object] = json.loads(raw)
    return data


def packet_counts(path: Path) -> dict[int, int]:
    """Every packet of each stream, counted by ffprobe (discarded ones included)."""
    args = ["ffprobe", "-v", "error", "-count_packets", "-show_entries"]
    text = _run([*args, "stream=index,nb_read_packets", "-of", "csv=p=0", str(path)]).decode()
    rows = (line.split(",") for line in text.splitlines())
    return {int(index): int(count) for index, count, *_ in rows if count.isdigit()}


def probe_duration(path: Path) -> float:
    """The container's duration (header) in seconds."""
    fmt = ffprobe_json(path)["format"]
    assert isinstance(fmt, dict)
    return float(fmt["duration"])


def stream_end(path: Path, selector: str = "v:0") -> float:
    """End (max pts + duration, less trimmed samples) of a stream from its packets, relative
    to the file's :func:`timeline_origin`. Discarded priming packets (flag D) and the samples
    a packet's DiscardPadding trims from its end are not part of it."""
    text = _run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            selector,
            "-show_entries",
            "stream=sample_rate"
            ":packet=pts_time,duration_time,flags:packet_side_data=discard_padding",
            "-of",
            "compact",
            str(path),
        ]
    ).decode()
    ends: list[tuple[float, int]] = []  # (pts + duration, samples trimmed at the end)
    rate = 0.0
    for line in text.splitlines():  # ffprobe prints the packets first
        fields = dict(part.split("=", 1) for part in line.split("|") if "=" in part)
        if line.startswith("stream|"):
            rate = float(fields.get("sample_rate", "0").replace("N/A", "0"))
        elif line.startswith("packet|") and "D" not in fields.get("flags", ""):
            try:
                pts = float(fields["pts_time"])
            except (KeyError, ValueError):
                continue
            duration = fields.get("duration_time", "N/A")
            ends.append(
                (
                    pts + (float(duration) if duration != "N/A" else 0.0),
                    int(fields.get("discard_padding", 0)),
                )
            )
    end = max((e - (trim / rate if rate else 0.0) for e, trim in ends), default=0.0)
    return end - timeline_origin(path)


def timeline_origin(path: Path) -> float:
    """The earliest presented sample of any audio or video stream, on the file's own clock:
    the smallest packet time, discarded packets (flag D) left out, an audio packet's skipped
    samples (Opus pre-skip) moving its start. Not always the container's start time (a video
    without decode times for its first frames has none: ffmpeg takes the audio's)."""
    raw = _run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=index,codec_type,sample_rate"
            ":packet=stream_index,pts_time,flags:packet_side_data=skip_samples",
            "-of",
            "json",
            str(path),
        ]
    )
    data = json.loads(raw)
    kinds = {s["index"]: s for s in data["streams"] if s["codec_type"] in ("audio", "video")}
    starts = []
    for packet in data.get("packets", []):
        stream = kinds.get(packet["stream_index"])
        if stream is None or "D" in packet.get("flags", "") or "pts_time" not in packet:
            continue
        skip = sum(int(d.get("skip_samples", 0)) for d in packet.get("side_data_list", []))
        rate = float(stream.get("sample_rate", 0) or 0)
        starts.append(float(packet["pts_time"]) + (skip / rate if rate else 0.0))
    return min(starts, default=0.0)


def stream_ends(path: Path) -> dict[str, float]:
    """Where each audio/video stream ends by the container's own account, on the file's
    clock: MP4 start + duration (a late track starts with an empty edit), WebM the track's
    DURATION tag (a track end; WebM stores no frame durations)."""
    ends = {}
    for s in ffprobe_json(path)["streams"]:  # type: ignore[union-attr]
        kind = s["codec_type"]
        if kind not in ("audio", "video") or kind in ends:
            continue
        if "duration" in s:
            ends[kind] = float(s.get("start_time", 0.0)) + float(s["duration"])
        else:
            hours, minutes, seconds = s["tags"]["DURATION"].split(":")
            ends[kind] = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return ends


def packet_times(path: Path, selector: str = "v:0") -> list[float]:
    """Presentation times of a stream's packets, in order of time, on the file's own clock."""
    rows = _ffprobe_csv(path, selector, "packet=pts_time")
    return sorted(float(row) for row in rows if row != "N/A")


def packet_durations(path: Path, selector: str = "v:0") -> list[tuple[float, float]]:
    """``(pts, duration)`` of a stream's packets, in order of time, on the file's own clock
    (duration 0 where the container has none)."""
    rows = [row.split("x") for row in _ffprobe_csv(path, selector, "packet=pts_time,duration_time")]
    return sorted(
        (float(pts), 0.0 if duration == "N/A" else float(duration))
        for pts, duration, *_ in rows
        if pts != "N/A"
    )


def decode_times(path: Path, selector: str = "v:0") -> list[float | None]:
    """Decode times of a stream's packets in file order (None where ffmpeg has none)."""
    rows = _ffprobe_csv(path, selector, "packet=dts_time")
    return [None if row == "N/A" else float(row) for row in rows]


def start_time(path: Path) -> float:
    """The container's start time (ffmpeg's t=0 of the file)."""
    fmt = ffprobe_json(path)["format"]
    assert isinstance(fmt, dict)
    return float(fmt.get("start_time", 0.0))


def timeline_duration(path: Path) -> float:
    """From the file's start to the end of its last audio or video sample (from packets)."""
    streams = ffprobe_json(path)["streams"]
    assert isinstance(streams, list)
    kinds = {s["codec_type"] for s in streams}
    return max(stream_end(path, f"{kind[0]}:0") for kind in ("video", "audio") if kind in kinds)


def timeline_end(path: Path) -> float:
    """Where the file's last audio or video sample ends, on its own clock (absolute)."""
    return timeline_origin(path) + timeline_duration(path)


def decoded_audio_seconds(path: Path, rate: int = 16000) -> float:
    """Length of the decoded first audio stream, in seconds (from t=0)."""
    return decode_pcm(path, rate=rate).shape[0] / rate


# --- generation ------------------------------------------------------------------------------


def make_recording(
    path: Path,
    *,
    video_codec: str = "libx264",
    audio_codec: str | None = "aac",
    duration: float = 4.0,
    tone: float = 1000.0,
    audio_delay: float = 0.0,
    audio_duration: float | None = None,
    size: str = "160x120",
    fps: int = 15,
    video_args: Sequence[str] = (),
    video_duration: float | None = None,
    audio_args: Sequence[str] = ("-ac", "2"),
) -> Path:
    """A small screen-recording-like file: testsrc2 video + a sine tone (or no audio).

    ``audio_delay`` starts the audio that many seconds after the video (like MediaRecorder);
    ``audio_duration`` ends it early (a microphone muted or unplugged mid-recording);
    ``video_duration`` ends the video early (a screen static from then on: no more frames);
    ``video_args`` replace the encoder's speed options (e.g. to get B-frames);
    ``audio_args`` the audio encoder's channels and rate options.
    """
    frames = f"testsrc2=size={size}:rate={fps}:duration={video_duration or duration}"
    args = [*FFMPEG, "-f", "lavfi", "-i", frames]
    if audio_codec is not None:
        if audio_delay:
            args += ["-itsoffset", str(audio_delay)]
        args += [
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency={tone}:sample_rate=48000"
            f":duration={audio_duration or duration - audio_delay}",
        ]
    args += ["-map", "0:v"]
    if audio_codec is not None:
        args += ["-map", "1:a", "-c:a", audio_codec, *audio_args]
    args += ["-c:v", video_codec, "-pix_fmt", "yuv420p"]
    if video_args:
        args += list(video_args)
    elif video_codec == "libx264":
        args += ["-preset", "ultrafast", "-g", "30"]
    elif video_codec.startswith("libvpx"):
        args += ["-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k"]
    args += ["-y", str(path)]
    _run(args)
    return path


def make_tone_wav(
    path: Path,
    segments: Sequence[tuple[float, Sequence[float]]],
    *,
    rate: int = 8000,
) -> Path:
    """A pcm_s16le WAV made of ``(seconds, [freq per channel])`` segments, played in order.

    Channel count = length of the frequency lists. 0 Hz means silence on that channel.
    """
    channels = len(segments[0][1])
    inputs: list[str] = []
    for seconds, freqs in segments:
        for freq in freqs:
            source = (
                f"sine=frequency={freq}:sample_rate={rate}:duration={seconds}"
                if freq
                else f"anullsrc=r={rate}:cl=mono,atrim=duration={seconds}"
            )
            inputs += ["-f", "lavfi", "-i", source]
    parts = []
    k = 0
    for i, (_seconds, freqs) in enumerate(segments):
        labels = "".join(f"[{k + c}:a]" for c in range(len(freqs)))
        k += len(freqs)
        if channels == 1:
            parts.append(f"{labels}anull[s{i}]")
        else:
            parts.append(f"{labels}amerge=inputs={channels}[s{i}]")
    concat = "".join(f"[s{i}]" for i in range(len(segments)))
    graph = ";".join(parts) + f";{concat}concat=n={len(segments)}:v=0:a=1[out]"
    _run(
        [
            *FFMPEG,
            *inputs,
            "-filter_complex",
            graph,
            "-map",
            "[out]",
            "-c:a",
            "pcm_s16le",
            "-ar",
            str(rate),
            "-y",
            str(path),
        ]
    )
    return path


# --- a unified recording, checked by what it holds --------------------------------------------

# Guard around the call end and the file's edges: codec transitions and frame rounding.
_CONTENT_GUARD_SECONDS = 0.08


@functools.lru_cache(maxsize=64)
def _reference(recording: Path, size: int, mtime_ns: int) -> tuple[tuple[str, ...], float]:
    """The decoded frames and timeline duration of a reference recording, computed once per
    version of the file (size and mtime in the key): the soak checks hundreds of outputs
    against three recordings."""
    del size, mtime_ns  # part of the cache key only
    return tuple(framemd5(recording)), timeline_duration(recording)


def unified_output_problems(
    output: Path,
    recording: Path,
    *,
    call_end: float,
    connect_seconds: float,
    connect_tones: Sequence[float],
    recording_tone: float,
) -> list[str]:
    """What is wrong with ``output`` as the merge of ``recording`` with a Connect file of
    ``connect_seconds`` of ``connect_tones`` whose call ends at ``call_end`` (END alignment,
    the timestamp kept):
    every decoded frame of the recording, and the call's tones before the call end, the
    recording's own tone after it. An empty list: the output holds what it must.

    This is the check by content that the end-to-end runs (hostile corpus, fault injection,
    soak) use instead of the container's header duration, which a broken merge can still get
    right.
    """
    problems = []
    stat = recording.stat()
    expected, duration = _reference(recording, stat.st_size, stat.st_mtime_ns)
    frames = framemd5(output)
    if frames != list(expected):
        problems.append(
            f"video: {len(frames)} decoded frames, expected the recording's {len(expected)}"
        )
    rate = 16000
    pcm = decode_pcm(output, rate=rate)
    if abs(pcm.shape[0] / rate - duration) > 0.1:
        problems.append(f"audio lasts {pcm.shape[0] / rate:.3f} s, the recording {duration:.3f} s")
    guard = _CONTENT_GUARD_SECONDS
    spans = [
        ("call", max(0.0, call_end - connect_seconds) + guard, call_end - guard, connect_tones),
        ("after call work", call_end + guard, duration - guard, [recording_tone]),
    ]
    for name, start, end, tones in spans:
        # Windows of about 0.1 s tiling the span (a window's taper would hide its edges).
        count = int((end - start) / 0.1)
        for i in range(count):
            at = start + i * (end - start) / count
            signal = window(pcm, rate, at, at + (end - start) / count)
            share = sum(band_share(signal, rate, tone, 60.0) for tone in tones)
            if share < 0.8:
                problems.append(f"{name} at {at:.2f} s: {share:.0%} of it at {list(tones)} Hz")
    return problems


def count_runs(patch: pytest.MonkeyPatch) -> list[str]:
    """Patch :func:`worker.ffmpeg.run` (through ``patch``: a fixture or its ``context()``) to
    record what each run is for (its ``what``) before running it for real; the list fills as
    the code under test runs."""
    from worker import ffmpeg

    runs: list[str] = []
    real_run = ffmpeg.run

    async def counted(args: list[str], **kwargs: object) -> RunResult:
        runs.append(str(kwargs["what"]))
        return await real_run(args, **kwargs)  # type: ignore[arg-type]

    patch.setattr(ffmpeg, "run", counted)
    return runs
