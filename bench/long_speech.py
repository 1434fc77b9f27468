"""Long calls of real human speech, generated cheaply (issue 19's bench).

A 60-minute call cannot be built like the short cases (whole tracks at 48 kHz in memory,
convolved at once: gigabytes). Here the call is a *schedule* of utterances (the packaged human
recordings of :func:`tests.harness.speech_media.human_utterances`, seeded random order and
gaps), and both files are rendered block by block straight into ffmpeg's stdin:

- the Connect file: 8 kHz stereo (customer left, agent right) through ffmpeg's telephony band
  and G.711 mu-law, its clock running ``drift_ppm`` slow: file time ``tau`` holds call time
  ``tau * (1 + drift)``, each utterance resampled accordingly;
- the recording: the agent's utterances plus a short reverberation and room noise at 16 kHz,
  Opus in MP4 (whose edit list keeps the Opus pre-skip exact, so the truth needs no container
  correction), with (``video``) or without a 1 fps screen; the call starts at
  ``connect_start`` and ends ``acw_seconds`` before the recording does.

Memory is one block plus the utterances, whatever the length.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tests.harness.speech_media import human_utterances

MIC_RATE = 16000
CONNECT_RATE = 8000
BLOCK_SECONDS = 60.0
FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
Audio = npt.NDArray[np.float32]


@dataclass(frozen=True)
class LongSpec:
    """One long case."""

    name: str
    call_seconds: float
    drift_ppm: float = 0.0
    connect_start: float = 5.0
    acw_seconds: float = 20.0
    early_stop: float = 0.0
    seed: int = 1
    video: bool = True
    # Issue 19 QA (tests/media/test_qa_sync_drift.py); at their defaults they are left out of
    # the cache key, so the cases above keep theirs.
    agent_quiet_until: float = 0.0  # the agent says nothing before this call time (s)
    # The agent says one sentence (the first of 1.5-3 s) twice, 1 s apart, from this many
    # seconds before the call end, nothing else said from 1 s before it to 4 s after.
    repeat_before_end: float | None = None


# LongSpec's fields left out of the cache key at their default values.
_KEYED_WHEN_SET = {"agent_quiet_until": 0.0, "repeat_before_end": None}


@dataclass(frozen=True)
class LongCase:
    """What was written and the truth: the Connect file's t maps to recording time
    ``placement + t * ratio``."""

    spec: LongSpec
    recording: Path
    connect: Path
    connect_duration: float
    duration: float
    true_call_end: float

    @property
    def ratio(self) -> float:
        """Recording seconds per Connect second."""
        return 1 + self.spec.drift_ppm * 1e-6

    @property
    def placement(self) -> float:
        """Recording time of the Connect file's t=0."""
        return self.spec.connect_start


def schedule(spec: LongSpec) -> list[tuple[float, str, int]]:
    """(call time, role, utterance index) of every utterance, turns with gaps (pure)."""
    rng = np.random.default_rng(spec.seed)
    counts = {role: len(human_utterances(role, MIC_RATE)) for role in ("agent", "customer")}
    lengths = {r: [u.size / MIC_RATE for u in human_utterances(r, MIC_RATE)] for r in counts}
    events: list[tuple[float, str, int]] = []
    at, turn = 0.5, 0
    while at < spec.call_seconds:
        role = "agent" if turn % 2 == 0 else "customer"
        for _ in range(int(rng.integers(1, 4))):
            index = int(rng.integers(counts[role]))
            events.append((at, role, index))
            at += lengths[role][index] + float(rng.uniform(0.1, 0.4))
        at += float(rng.uniform(0.25, 0.9))
        turn += 1
    events = [e for e in events if e[0] + lengths[e[1]][e[2]] < spec.call_seconds]
    events = [e for e in events if e[1] != "agent" or e[0] >= spec.agent_quiet_until]
    if spec.repeat_before_end is not None:
        index = next(i for i, n in enumerate(lengths["agent"]) if 1.5 <= n <= 3.0)
        first = spec.call_seconds - spec.repeat_before_end
        second = first + lengths["agent"][index] + 1.0
        kept = [e for e in events if not first - 1.0 <= e[0] <= second + 4.0]
        events = sorted([*kept, (first, "agent", index), (second, "agent", index)])
    return events


def _render(
    events: list[tuple[float, str, int]],
    voices: dict[str, list[Audio]],
    roles: tuple[str, ...],
    begin: float,
    count: int,
    rate: int,
    *,
    offset: float,
    ratio: float,
) -> Audio:
    """Samples ``[begin, begin + count / rate)`` of a track (call time ``t`` at track time
    ``offset + t / ratio``), one row per role, by linear interpolation of the utterances."""
    out = np.zeros((len(roles), count), np.float32)
    times = begin + np.arange(count) / rate
    for at, role, index in events:
        if role not in roles:
            continue
        voice = voices[role][index]
        start = offset + at / ratio
        stop = start + voice.size / MIC_RATE / ratio
        if stop < begin or start > begin + count / rate:
            continue
        lo = max(0, int(np.floor((start - begin) * rate)))
        hi = min(count, int(np.ceil((stop - begin) * rate)))
        position = (times[lo:hi] - start) * ratio * MIC_RATE
        out[roles.index(role), lo:hi] += np.interp(position, np.arange(voice.size), voice, 0, 0)
    return out


def make_long_case(directory: Path, spec: LongSpec) -> LongCase:
    """Write (or reuse) the media of ``spec``."""
    keyed = {k: v for k, v in asdict(spec).items()
             if k not in _KEYED_WHEN_SET or v != _KEYED_WHEN_SET[k]}  # fmt: skip
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
    folder = directory / f"{spec.name}-{key}"
    meta = folder / "case.json"
    ratio = 1 + spec.drift_ppm * 1e-6
    connect_duration = (spec.call_seconds - spec.early_stop) / ratio
    duration = spec.connect_start + spec.call_seconds + spec.acw_seconds
    case = LongCase(
        spec=spec,
        recording=folder / "recording.mp4",
        connect=folder / "connect.wav",
        connect_duration=round(connect_duration * CONNECT_RATE) / CONNECT_RATE,
        duration=duration,
        true_call_end=spec.connect_start + spec.call_seconds,
    )
    if meta.exists():
        return case
    folder.mkdir(parents=True, exist_ok=True)
    events = schedule(spec)
    voices = {role: human_utterances(role, MIC_RATE) for role in ("agent", "customer")}
    rng = np.random.default_rng(spec.seed + 1)
    response = rng.standard_normal(int(0.2 * MIC_RATE)) * np.exp(
        -6.9 * np.arange(int(0.2 * MIC_RATE)) / (0.2 * MIC_RATE)
    )
    response *= 0.3 / np.sqrt(np.sum(response**2))
    response[0] = 1.0
    # The Connect file.
    connect = subprocess.Popen(
        [*FFMPEG, "-f", "f32le", "-ar", str(CONNECT_RATE), "-ac", "2", "-i", "pipe:0",
         "-af", "highpass=f=300,lowpass=f=3400", "-c:a", "pcm_mulaw", "-f", "wav",
         str(folder / "mulaw.wav")],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    assert connect.stdin is not None
    total = round(case.connect_duration * CONNECT_RATE)
    block = int(BLOCK_SECONDS * CONNECT_RATE)
    for first in range(0, total, block):
        count = min(block, total - first)
        both = _render(events, voices, ("customer", "agent"), first / CONNECT_RATE, count,
                       CONNECT_RATE, offset=0.0, ratio=ratio)  # fmt: skip
        connect.stdin.write((both.T * 0.25).astype("<f4").tobytes())
    connect.stdin.close()
    assert connect.wait() == 0
    subprocess.run([*FFMPEG, "-i", str(folder / "mulaw.wav"), "-c:a", "pcm_s16le",
                    str(case.connect)], check=True)  # fmt: skip
    (folder / "mulaw.wav").unlink()
    # The recording: the agent heard in a room, then After Call Work (more agent speech).
    acw = [(spec.call_seconds + 1.0 + 3.0 * i, "agent", i % len(voices["agent"]))
           for i in range(int(spec.acw_seconds / 3.0) - 1)]  # fmt: skip
    video = (["-f", "lavfi", "-i", f"color=c=gray:s=64x48:r=1:d={duration:.3f}"]
             if spec.video else [])  # fmt: skip
    args = [*FFMPEG, *video, "-f", "f32le", "-ar", str(MIC_RATE), "-ac", "1", "-i", "pipe:0"]
    if spec.video:
        args += ["-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast",
                 "-g", "60", "-pix_fmt", "yuv420p"]  # fmt: skip
    args += ["-c:a", "libopus", "-b:a", "24k", "-ar", "48000", str(case.recording)]
    recording = subprocess.Popen(args, stdin=subprocess.PIPE)
    assert recording.stdin is not None
    total = round(duration * MIC_RATE)
    block = int(BLOCK_SECONDS * MIC_RATE)
    tail = np.zeros(response.size - 1)
    size = 1 << (block + response.size).bit_length()
    spectrum = np.fft.rfft(response, size)
    for first in range(0, total, block):
        count = min(block, total - first)
        (dry,) = _render([*events, *acw], voices, ("agent",), first / MIC_RATE, count, MIC_RATE,
                         offset=spec.connect_start, ratio=1.0)  # fmt: skip
        wet = np.fft.irfft(np.fft.rfft(dry * 0.5, size) * spectrum, size)[: count + tail.size]
        wet[: tail.size] += tail
        tail = wet[count:].copy()
        noise = rng.standard_normal(count) * 10 ** (-50 / 20)
        recording.stdin.write((wet[:count] + noise).astype("<f4").tobytes())
    recording.stdin.close()
    assert recording.wait() == 0
    meta.write_text(json.dumps(asdict(spec)))
    return case
