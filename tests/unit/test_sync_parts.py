"""Issue 19's cost work, pure parts: the wide search split into parts decoded side by side
(every lag searched exactly once, the same candidates as one search over the whole, rivals
included), and the wide decode's 16-bit samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.harness.sync_signals import RATE, bursts, delayed
from worker.ffmpeg_inputs import FORMAT_WHITELIST, PROTOCOL_WHITELIST
from worker.media import sync_search
from worker.media.sync_decode import Decoded, samples, split_stretches
from worker.media.sync_model import DECODE_MARGIN_SECONDS, MIN_STRETCH_SECONDS, SyncWindow
from worker.media.sync_plan import (
    SampleFormat,
    StretchSource,
    build_decode_args,
    build_pair_decode_args,
    plan_wide,
    plan_window,
)


def test_a_short_recording_is_one_part_over_every_lag() -> None:
    (part,) = plan_wide(recording_duration=300.0, length=30.0, split_from=600.0)
    assert (part.seek, part.seconds) == (0, None)
    assert (part.min_lag, part.max_lag) == (MIN_STRETCH_SECONDS - 30.0, 270.0)


@pytest.mark.parametrize(("duration", "length"), [(3625.0, 30.0), (14400.0, 30.0), (700.5, 8.0)])
def test_parts_tile_every_lag_once_and_decode_what_they_search(
    duration: float, length: float
) -> None:
    parts = plan_wide(recording_duration=duration, length=length, parts=2, split_from=600.0)
    assert len(parts) == 2
    step = 1.0 / sync_search.ENVELOPE_RATE
    lags = [(p.seek + p.min_lag, p.seek + p.max_lag) for p in parts]
    assert lags[0][0] == pytest.approx(min(0.0, MIN_STRETCH_SECONDS - length))
    assert lags[-1][1] == pytest.approx(duration - length)
    assert lags[1][0] == pytest.approx(lags[0][1] + step)  # no gap, no overlap
    for part in parts:
        assert part.seek == int(part.seek)
        end = duration if part.seconds is None else part.seek + part.seconds
        # The last lag's whole reference is decoded (beyond it: the margin, or the end).
        assert end >= min(duration, part.seek + part.max_lag + length + DECODE_MARGIN_SECONDS)


def _search(
    signal: np.ndarray, reference: np.ndarray, *, seek: int, seconds: float | None, lags: tuple
) -> list[sync_search.Candidate]:
    stop = None if seconds is None else seek * RATE + round(seconds * RATE)
    search = sync_search.EnvelopeSearch(
        sync_search.envelope(reference), min_lag_seconds=lags[0], max_lag_seconds=lags[1]
    )
    part = signal[seek * RATE : stop]
    for at in range(0, part.size, 50_000):  # streamed, as the decode hands it over
        search.feed(part[at : at + 50_000])
    return search.finish()


@pytest.mark.parametrize("places", [(12.5, 141.25), (93.0, 101.0), (60.0, 150.0)])
def test_parts_find_what_one_search_finds_rivals_included(places: tuple[float, float]) -> None:
    """The reference at two places (a looped prompt): the parts' merged candidates are the
    whole search's, both places among them, whichever part each lies in or across the seam
    (the ambiguity rule needs the rival)."""
    rng = np.random.default_rng(5)
    reference = bursts(20.0, seed=1)
    signal = bursts(200.0, seed=2) * 0.3
    for at in places:
        signal += delayed(reference * 0.5, at * RATE, signal.size)
    signal += (rng.standard_normal(signal.size) * 0.003).astype(np.float32)
    duration = signal.size / RATE
    (whole,) = plan_wide(recording_duration=duration, length=20.0, split_from=1e9)
    one = _search(signal, reference, seek=0, seconds=None, lags=(whole.min_lag, whole.max_lag))
    parts = plan_wide(recording_duration=duration, length=20.0, parts=2, split_from=100.0)
    assert len(parts) == 2
    found = [
        (float(p.seek), _search(signal, reference, seek=p.seek, seconds=p.seconds,
                                lags=(p.min_lag, p.max_lag)))
        for p in parts
    ]  # fmt: skip
    merged = sync_search.merge_parts(found)
    assert [round(c.seconds, 3) for c in merged] == [round(c.seconds, 3) for c in one]
    assert [c.score for c in merged] == pytest.approx([c.score for c in one], abs=1e-9)
    best_two = sorted(c.seconds for c in merged[:2])
    assert best_two == pytest.approx(sorted(places), abs=0.01)


def test_sixteen_bit_samples_are_scaled_to_one() -> None:
    raw = np.array([-32768, -16384, 0, 16384, 32767], dtype="<i2").tobytes()
    assert samples(raw, "s16").tolist() == pytest.approx([-1.0, -0.5, 0.0, 0.5, 32767 / 32768])
    floats = np.array([0.25, -0.75], dtype="<f4").tobytes()
    assert samples(floats, "f32").tolist() == [0.25, -0.75]


@pytest.mark.parametrize(
    ("sample_format", "muxer", "codec"),
    [("f32", "f32le", "pcm_f32le"), ("s16", "s16le", "pcm_s16le")],
)
def test_decode_args_write_the_asked_sample_format(
    sample_format: SampleFormat, muxer: str, codec: str
) -> None:
    args = build_decode_args(
        Path("/in/rec.webm"), 1, channels=1, agent=False, seek=12.0, seconds=None,
        band=True, sample_format=sample_format,
    )  # fmt: skip
    assert args[-5:] == ["-f", muxer, "-c:a", codec, "pipe:1"]
    assert args.index("-ss") < args.index("-i")  # a fast input seek


@pytest.mark.parametrize(("n", "above", "size"), [(80536, 15000, 80000), (14096, 10000, 13824),
                                                  (1024, 1, 1024), (101, 100, 101)])  # fmt: skip
def test_the_envelope_search_uses_a_fast_fft_length_within_its_block(
    n: int, above: int, size: int
) -> None:
    """65536 + 15000 has the prime factor 10067 (a slow FFT): the search uses 80000 instead;
    a length that leaves no lag to search keeps ``n``."""
    assert sync_search.fast_size_at_most(n, above=above) == size
    search = sync_search.EnvelopeSearch(np.ones(15000), block=65536)
    assert search._size == 80000


def test_a_window_is_decoded_in_one_run_each_stretch_as_it_would_be_alone() -> None:
    connect = StretchSource(Path("/in/c.wav"), 0, 2, True, seek=512.25, seconds=30.0)
    mic = StretchSource(Path("/in/r.webm"), 1, 2, False, seek=0, seconds=42.5)
    args = build_pair_decode_args(connect, mic)
    # Two allow-listed inputs, the first with its fast seek, the second (seek 0) with none.
    inputs = [i for i, arg in enumerate(args) if arg == "-i"]
    assert [args[i + 1] for i in inputs] == ["file:/in/c.wav", "file:/in/r.webm"]
    allow = ["-format_whitelist", FORMAT_WHITELIST, "-protocol_whitelist", PROTOCOL_WHITELIST]
    assert args[inputs[0] - 6 : inputs[0]] == ["-ss", "512.250000", *allow]
    assert args[inputs[1] - 4 : inputs[1]] == allow
    assert args.count("-ss") == 1
    graph = args[args.index("-filter_complex") + 1].split(";")
    alone = {
        source: build_decode_args(
            source.path,
            source.stream_index,
            channels=source.channels,
            agent=source.agent,
            seek=source.seek,
            seconds=source.seconds,
        )
        for source in (connect, mic)
    }
    mono = "aformat=sample_fmts=flt:channel_layouts=mono"
    for n, source in enumerate((connect, mic)):
        chain = alone[source][alone[source].index("-af") + 1]
        assert graph[4 * n : 4 * n + 4] == [
            f"[{n}:{source.stream_index}]{chain},asplit[v{n}][p{n}]",
            f"[p{n}]volume=0:precision=float,dcshift=1,{mono}[q{n}]",
            f"[v{n}]{mono}[w{n}]",
            f"[w{n}][q{n}]amerge,apad=whole_len=340000[s{n}]",  # the longer: 42.5 s
        ]
    (join,) = graph[8:]
    assert join == "[s0][s1]amerge=inputs=2[pair]"
    assert args[-7:] == ["-map", "[pair]", "-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]


def test_a_pair_splits_at_each_stretchs_padding_not_at_its_silence() -> None:
    first = np.array([0.5, 0.0, 0.0], np.float32)  # real trailing zeros: kept
    second = np.array([0.25, -0.25, 0.1, 0.0, 0.3], np.float32)
    columns = np.zeros((5, 4), np.float32)
    columns[:3, 0], columns[:3, 1] = first, 1.0
    columns[:, 2], columns[:, 3] = second, 1.0
    a, b = split_stretches(columns.reshape(-1), 2)
    np.testing.assert_array_equal(a, first)
    np.testing.assert_array_equal(b, second)
    empty, whole = split_stretches(np.where(np.arange(20) % 4 < 2, 0.0, 1.0).astype(np.float32), 2)
    assert (empty.size, whole.size) == (0, 5)


def test_a_kept_window_gives_a_window_inside_it_and_refuses_any_other() -> None:
    kept_window = plan_window(call_end=100.0, recording_duration=200.0, connect_duration=60.0,
                              rival=30.0)  # fmt: skip
    assert isinstance(kept_window, SyncWindow)
    reference = np.arange(round(kept_window.connect_seconds * RATE), dtype=np.float32)
    signal = np.arange(round(kept_window.recording_seconds * RATE), dtype=np.float32)
    kept = Decoded(kept_window, reference, signal)

    def fine(call_end: float, connect_duration: float = 60.0) -> SyncWindow:
        window = plan_window(call_end=call_end, recording_duration=200.0,
                             connect_duration=connect_duration, search=1.0)  # fmt: skip
        assert isinstance(window, SyncWindow)
        return window

    inside = fine(90.25)
    cut = kept.cut(inside)
    assert cut is not None
    assert cut[0] is reference
    # Its samples are the recording's from its own seek, as many as its own decode's.
    first = (inside.recording_seek - kept_window.recording_seek) * RATE
    assert cut[1][0] == signal[first]
    assert cut[1].size == round(inside.recording_seconds * RATE)
    assert kept.cut(fine(129.5)) is None  # needs recording beyond the kept decode's end
    assert kept.cut(fine(60.0)) is None  # before its start
    assert kept.cut(fine(90.25, connect_duration=61.0)) is None  # another Connect stretch
