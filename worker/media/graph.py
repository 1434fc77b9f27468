"""The merge's audio: the ``-filter_complex`` graph whose ``[aout]`` is the output (pure).

Three segments, concatenated: the recording's own microphone over [0, head) (a measured
placement only, issue 19: before the Connect audio's first sample), the Connect audio over
[head, connectEnd) (END alignment: placed so that it ends at the call end, or where the sync
found a Connect file that stopped early; with the timestamp, SPEC §5's silence before it), the
microphone again over [connectEnd, duration). Each is brought to one format, cut and padded to
whole samples, so the seams are sample-exact and ``[aout]`` has exactly the plan's sample
count. An empty segment is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.config import AlignMode
from worker.errors import MediaError
from worker.media import loudness
from worker.media.model import StreamInfo
from worker.media.plan import MergePlan


def _layout(channels: int) -> str:
    return "mono" if channels == 1 else "stereo"


def _normalize(plan: MergePlan) -> str:
    # One format for both sources so concat (and the encoder) see identical streams.
    return (
        f"aformat=sample_fmts=fltp:sample_rates={plan.sample_rate}"
        f":channel_layouts={_layout(plan.channels)}"
    )


def _resample(plan: MergePlan) -> str:
    # async=1 with first_pts=0 makes the stream continuous from t=0 on its input's timeline:
    # a late start (audio at 0.040 s) or a gap becomes silence instead of shifting the audio,
    # so the original timestamps hold. Small timestamp jitter (below 0.1 s) is left alone.
    return f"aresample={plan.sample_rate}:async=1:first_pts=0"


# Drift (issue 19): the Connect audio's timestamps are scaled by the drift ratio and aresample
# follows them by soft compensation (resampling by at most max_soft_comp, 1000 ppm: above the
# largest drift applied, far below an audible pitch change), correcting whenever the audio is
# more than min_comp (0.5 ms) off its timestamps: within ~1 ms along an hour.
DRIFT_MIN_COMP_SECONDS = 0.0005
DRIFT_MAX_SOFT_COMP = 0.001


def connect_resample_steps(plan: MergePlan) -> list[str]:
    """The Connect chain's resampling: :func:`_resample`, or with the drift applied (pure)."""
    if plan.drift_ratio == 1.0:
        return [_resample(plan)]
    return [
        f"asetpts=PTS*{plan.drift_ratio:.9f}",
        f"aresample={plan.sample_rate}:min_comp={DRIFT_MIN_COMP_SECONDS}"
        f":max_soft_comp={DRIFT_MAX_SOFT_COMP}:first_pts=0",
    ]


def connect_mix(in_channels: int | None, out_channels: int) -> list[str]:
    """Connect: stereo is customer-left/agent-right; mono output is their average (no clip)."""
    if in_channels == 2:
        if out_channels == 1:
            return ["pan=mono|c0=0.5*c0+0.5*c1"]
        return ["pan=stereo|c0=c0|c1=c1"]
    if in_channels == 1:
        return ["pan=mono|c0=c0"] if out_channels == 1 else ["pan=stereo|c0=c0|c1=c0"]
    return []  # other layouts: aformat's standard downmix


def mic_mix(in_channels: int | None, out_channels: int) -> list[str]:
    """The recording's microphone is one voice: mono, in both channels of a stereo output."""
    if in_channels == 2:
        mono = "0.5*c0+0.5*c1"
    elif in_channels == 1:
        mono = "c0"
    else:
        return []
    return [f"pan=mono|c0={mono}"] if out_channels == 1 else [f"pan=stereo|c0={mono}|c1={mono}"]


def loudness_steps(
    gains: loudness.LoudnessGains | None,
) -> tuple[list[str], list[str], list[str]]:
    """The loudness stage: (Connect chain, recording chain, merged output) filters (pure).

    A static gain per segment, then one delay-free peak limiter over the merged audio (it
    keeps the sample count, so the output's length and the alignment are unchanged). None:
    no filter at all, today's audio exactly.
    """
    if gains is None:
        return [], [], []
    return (
        loudness.volume_step(gains.connect_db),
        loudness.volume_step(gains.recording_db),
        [loudness.limiter_step()],
    )


def build_audio_graph(
    plan: MergePlan,
    *,
    align: AlignMode,
    recording_audio: StreamInfo | None,
    connect_audio: StreamInfo,
    recording_input: int = 0,
    connect_input: int = 1,
    recording_seek: int = 0,
    head_input: int | None = None,
    gains: loudness.LoudnessGains | None = None,
    encoder_steps: tuple[str, ...] = (),
) -> str:
    """The ``-filter_complex`` graph whose ``[aout]`` is the merged audio (pure).

    ``[aout]`` has exactly ``plan.total_samples`` samples: the microphone covers
    [0, head_samples), the Connect segment [head_samples, connectEnd), the recording's own
    audio [connectEnd, duration).

    ``recording_seek`` (whole seconds) says that ``recording_input`` was opened with
    ``-ss recording_seek``: ffmpeg then offsets its timestamps by the seek point as well as
    by the file's start time, so its t=0 is ``recording_seek`` on the recording's timeline and
    ``[rec]`` cuts ``callEnd - recording_seek`` seconds instead of ``callEnd``.
    ``head_input``: the recording opened unseeked for the head
    (:func:`~worker.media.plan.recording_head_seconds`; default ``recording_input``, which
    must then be unseeked).

    ``align`` ``auto`` is END alignment (on the call end the sync measured, already in
    ``plan``). ``gains`` adds the loudness stage (:func:`loudness_steps`); the microphone's
    gain applies to both of its segments. ``encoder_steps`` end the graph
    (:func:`~worker.media.commands.encoder_timing_steps`: timestamps only, the samples are
    unchanged).
    """
    connect_gain, recording_gain, output_steps = loudness_steps(gains)
    output_steps += encoder_steps
    chains: list[str] = []
    labels: list[str] = []
    if plan.head_samples > 0:
        head_from = recording_input if head_input is None else head_input
        if head_input is None and recording_seek:
            raise ValueError("the head needs an unseeked recording input")
        mic = _Mic("head", 0, plan.head_samples)
        chains += _own_audio(plan, mic, recording_audio, head_from, recording_gain)
        labels.append("[head]")
    if plan.connect_samples > 0:
        source = f"[{connect_input}:{connect_audio.index}]"
        steps = _connect_steps(plan, align, connect_audio, connect_gain)
        chains.append(source + ",".join(steps) + "[conn]")
        labels.append("[conn]")
    if plan.tail_samples > 0:
        # The tail cuts from the Connect end, on the (seeked) input's own t=0.
        skip = plan.connect_end_samples - recording_seek * plan.sample_rate
        if skip < 0:
            raise ValueError("recording_seek is past the call end")
        mic = _Mic("rec", skip, plan.tail_samples)
        chains += _own_audio(plan, mic, recording_audio, recording_input, recording_gain)
        labels.append("[rec]")
    chains.append(_join(labels, output_steps))
    return ";".join(chains)


def _join(labels: list[str], output_steps: list[str]) -> str:
    """The chain joining the segments ``labels`` in order into ``[aout]``."""
    if len(labels) > 1:
        join = [f"concat=n={len(labels)}:v=0:a=1", *output_steps]
        return "".join(labels) + ",".join(join) + "[aout]"
    if labels:
        # A single segment: rename its label (anull is a no-op pass-through).
        return labels[0] + ",".join(["anull", *output_steps]) + "[aout]"
    raise MediaError("recording has no duration")


def _connect_steps(
    plan: MergePlan, align: AlignMode, connect_audio: StreamInfo, gain: list[str]
) -> list[str]:
    """The ``[conn]`` chain: the Connect audio, exactly from the head to its end, END-aligned.

    Its end is the call end unless the sync found a Connect file that stopped early
    (``plan.connect_end``); a measured clock drift resamples it (:func:`connect_resample_steps`).
    The segment starts at ``plan.head_samples``: at the Connect audio's first sample when the
    microphone covers the head, else at 0 with silence before the audio.
    """
    length = plan.connect_samples
    steps = [*connect_mix(connect_audio.channels, plan.channels)]
    steps += [*connect_resample_steps(plan), _normalize(plan)]
    steps += gain
    if align != "start":
        lead = plan.offset_samples - plan.head_samples
        if lead < 0:  # Connect longer than callEnd: cut its head
            steps += [f"atrim=start_sample={-lead}", "asetpts=PTS-STARTPTS"]
        elif lead > 0:  # shorter: silence before it
            steps.append(f"adelay=delays={lead}S:all=1")
    # Exactly the segment long: pad a short Connect with silence, cut a long one.
    steps += [f"apad=whole_len={length}", f"atrim=end_sample={length}"]
    return steps


@dataclass(frozen=True)
class _Mic:
    """One segment of the recording's own audio: its label, where it starts on its input
    (samples from the input's t=0) and how long it is (samples)."""

    label: str
    skip: int
    length: int


def _own_audio(
    plan: MergePlan,
    mic: _Mic,
    audio: StreamInfo | None,
    recording_input: int,
    gain: list[str],
) -> list[str]:
    """The chains of one segment of the recording's own audio, ``[{label}]``: its microphone,
    or silence for a screen recorded without one."""
    if audio is None:
        return [",".join(_silence(plan, mic.length)) + f"[{mic.label}]"]
    source = f"[{recording_input}:{audio.index}]"
    return _microphone_chains(plan, source, audio, mic, gain)


def _microphone_chains(
    plan: MergePlan, source: str, audio: StreamInfo, mic: _Mic, gain: list[str]
) -> list[str]:
    """The chains of one microphone segment: from ``mic.skip`` on, exactly ``mic.length``."""
    length = mic.length
    # first_pts=0 pads from the input's t=0 (the seek point when seeked), so a late
    # start or a gap stays silence at its original place (see _resample).
    norm = _normalize(plan)
    steps = [
        *mic_mix(audio.channels, plan.channels),
        _resample(plan),
        norm,
        *gain,
        f"atrim=start_sample={mic.skip}",
        "asetpts=PTS-STARTPTS",
        f"apad=whole_len={length}",
        f"atrim=end_sample={length}",
    ]
    # Laid over exact-length silence: when the microphone stopped before the call
    # end, the chain above emits no frame at all (apad has nothing to pad) and the
    # tail would be missing; normalize=0 keeps the samples as they are.
    label = mic.label
    own, quiet = f"{label}mic", f"{label}quiet"
    return [
        source + ",".join(steps) + f"[{own}]",
        f"anullsrc=r={plan.sample_rate}:cl={_layout(plan.channels)},{norm},"
        f"atrim=end_sample={length}[{quiet}]",
        f"[{quiet}][{own}]amix=inputs=2:duration=first:dropout_transition=0:normalize=0[{label}]",
    ]


def _silence(plan: MergePlan, samples: int) -> list[str]:
    """Exactly ``samples`` of silence (a screen recorded without a microphone)."""
    return [
        f"anullsrc=r={plan.sample_rate}:cl={_layout(plan.channels)}",
        _normalize(plan),
        f"atrim=end_sample={samples}",
    ]
