"""The thumbnail taken by the merge's own run: its input and output arguments (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.media_models import connect, recording
from worker import media
from worker.ffmpeg import FORMAT_WHITELIST, PROTOCOL_WHITELIST
from worker.media.commands import (
    THUMBNAIL_IN_MERGE_MAX_SECONDS,
    THUMBNAIL_WINDOW_SECONDS,
    thumbnail_in_merge,
    thumbnail_input_args,
    thumbnail_output_args,
)

THUMB = Path("/out/t.png")
ALLOW = ["-format_whitelist", FORMAT_WHITELIST, "-protocol_whitelist", PROTOCOL_WHITELIST]


def test_thumbnail_input_is_fast_seeked_bounded_and_single_threaded() -> None:
    args = thumbnail_input_args(recording(duration=8.0), window=1.0)
    assert args == ["-ss", "1.000", "-t", "1.000", "-threads", "1", *ALLOW, "-i",
                    "file:/in/rec.webm"]  # fmt: skip
    # A short recording: its middle; no window: read to the end.
    args = thumbnail_input_args(recording(duration=0.5), window=None)
    assert args == ["-ss", "0.250", "-threads", "1", *ALLOW, "-i", "file:/in/rec.webm"]


def test_thumbnail_output_is_one_png_frame_of_the_given_stream() -> None:
    args = thumbnail_output_args(3, 1, THUMB)
    assert args[:2] == ["-map", "3:1"]
    assert args[args.index("-frames:v") + 1] == "1"
    assert args[args.index("-c:v") + 1] == "png"
    assert args[-6:] == ["-f", "image2", "-update", "1", "-y", "file:/out/t.png"]
    assert {"-an", "-sn", "-dn"} <= set(args)


def _merge_args(
    rec: media.Recording, call_end: float, *, chapters: bool, thumbnail: Path | None
) -> list[str]:
    conn = connect()
    options = media.MergeOptions(align="end")
    plan = media.plan_merge(rec, conn, call_end, options)
    return media.build_merge_args(
        recording=rec, connect=conn, plan=plan, output=Path("/out/r.webm"), options=options,
        chapters=Path("/out/.r.webm.chapters") if chapters else None, thumbnail=thumbnail,
    )  # fmt: skip


@pytest.mark.parametrize("chapters", [False, True])
@pytest.mark.parametrize(("call_end", "audio"), [(4.0, True), (6.0, True), (0.0, True),
                                                 (6.0, False)])  # fmt: skip
def test_merge_writes_the_thumbnail_from_a_last_input(
    call_end: float, audio: bool, chapters: bool
) -> None:
    rec = recording(audio=audio)
    plain = _merge_args(rec, call_end, chapters=chapters, thumbnail=None)
    args = _merge_args(rec, call_end, chapters=chapters, thumbnail=THUMB)
    inputs = [i for i, a in enumerate(args) if a == "-i"]
    assert len(inputs) == len([a for a in plain if a == "-i"]) + 1
    last = inputs[-1]
    extra_input = thumbnail_input_args(rec, window=THUMBNAIL_WINDOW_SECONDS)
    assert args[last - len(extra_input) + 2 : last + 2] == extra_input
    # The merge's own output comes first (its -progress frame count is its video's) ...
    output = args.index("file:/out/r.webm")
    extra_output = thumbnail_output_args(len(inputs) - 1, rec.video.index, THUMB)
    assert args[output + 1 :] == extra_output
    # ... and everything else is the command line without a thumbnail.
    start = last - len(extra_input) + 2
    assert args[:start] + args[last + 2 : output + 1] == plain


def test_only_recordings_up_to_the_limit_take_the_thumbnail_in_the_merge() -> None:
    assert thumbnail_in_merge(8.0)
    assert thumbnail_in_merge(THUMBNAIL_IN_MERGE_MAX_SECONDS)
    assert not thumbnail_in_merge(THUMBNAIL_IN_MERGE_MAX_SECONDS + 0.001)
    assert THUMBNAIL_IN_MERGE_MAX_SECONDS < 60 * 60  # the 60-minute merge's memory
