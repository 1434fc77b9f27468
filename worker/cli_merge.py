"""``komorebi-worker merge``: the SPEC §5 merge on local files, no AWS (SPEC §7).

The options are checked before anything runs (one line, exit 2 each); the output and the
thumbnail are written beside their destinations and moved into place only on success
(:class:`_Staged`: a failed merge never destroys a file the user already had); progress goes
to stderr (:class:`_MergeProgress`), the output path(s) to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.cli_parser import EXIT_OK
from worker.config import AudioSettings, parse_bitrate, parse_sample_rate
from worker.errors import ConfigError

if TYPE_CHECKING:  # numpy and the media engine load only for the commands that use them
    from worker.media import MergeOptions, MergeResult


def cmd_merge(args: argparse.Namespace) -> int:
    """`merge`: the SPEC §5 merge on local files (no AWS). Prints the output path(s)."""
    import anyio

    from worker.messages import parse_timestamp
    from worker.observability import configure_logging

    try:
        call_end = parse_timestamp(args.call_end)
    except ValueError as error:
        raise ConfigError(f"--call-end {args.call_end!r}: {error}") from None
    _check_paths(args)
    options = _merge_options(args)
    # Logs go to stderr; by default only errors, so a failure stays one clear line.
    configure_logging(
        level=os.environ.get("LOG_LEVEL") or "ERROR",
        fmt="console" if os.environ.get("LOG_FORMAT", "console") == "console" else "json",
    )
    mode = args.progress
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "lines"
    result = anyio.run(_merge, args, call_end, options, mode)
    if result.call_end_clamped:
        print(
            f"komorebi-worker: warning: --call-end {call_end:.3f} s is beyond the recording's "
            f"end; clamped to {result.call_end_seconds:.3f} s",
            file=sys.stderr,
        )
    if args.align == "auto":
        print(f"komorebi-worker: {describe_sync(result)}", file=sys.stderr)
    print(result.output)
    if result.thumbnail is not None:
        print(result.thumbnail)
    return EXIT_OK


def _check_paths(args: argparse.Namespace) -> None:
    """The inputs exist; the outputs go to existing folders, never over an input, with a
    suffix the merge can write."""
    for option, path in (("--recording", args.recording), ("--connect-audio", args.connect_audio)):
        if not path.is_file():
            raise ConfigError(f"{option} {path}: no such file")
    outputs = [("--output", args.output)]
    if args.thumbnail is not None:
        outputs.append(("--thumbnail", args.thumbnail))
    for option, path in outputs:
        if not path.absolute().parent.is_dir():
            raise ConfigError(f"{option} {path}: folder {path.absolute().parent} does not exist")
    inputs = {args.recording.resolve(), args.connect_audio.resolve()}
    for option, path in outputs:
        if path.resolve() in inputs:
            raise ConfigError(f"{option} {path}: would overwrite an input file")
    if args.output.suffix.lower() not in (".mp4", ".webm"):
        raise ConfigError(f"--output {args.output}: must end in .mp4 or .webm")
    if args.thumbnail is not None and args.thumbnail.suffix.lower() != ".png":
        raise ConfigError(f"--thumbnail {args.thumbnail}: must end in .png")


def _merge_options(args: argparse.Namespace) -> MergeOptions:
    """``merge``'s alignment, audio and loudness options as the media engine takes them."""
    from worker import media
    from worker.config import parse_loudness_target

    audio = _merge_audio_settings(args)
    target = None
    if args.loudness_target is not None:
        try:
            target = parse_loudness_target(args.loudness_target)
        except ValueError as error:
            raise ConfigError(f"--loudness-target: {error}") from None
    return media.MergeOptions(align=args.align, audio=audio, loudness_target=target)


async def _merge(
    args: argparse.Namespace, call_end: float, options: MergeOptions, mode: str
) -> MergeResult:
    """Probe the recording, check the output suits it, merge into staged paths; the result
    names the final paths."""
    import dataclasses

    from worker import media
    from worker.errors import UnsupportedMedia

    recording = await media.probe(args.recording)
    try:
        media.check_output_path(media.Recording.of(recording), args.output)
    except UnsupportedMedia as error:
        if recording.video is not None and recording.video.codec_name in media.CODECS:
            raise ConfigError(f"--output {args.output}: {error}") from None
        raise
    with (
        _MergeProgress(mode, recording.duration) as progress,
        _Staged(args.output, args.thumbnail) as (output, thumbnail),
    ):
        request = media.MergeRequest(
            recording=args.recording,
            connect_audio=args.connect_audio,
            call_end_seconds=call_end,
            output=output,
            thumbnail=thumbnail,
            options=options,
            recording_info=recording,
        )
        merged = await media.merge(request, on_progress=progress.update)
    return dataclasses.replace(merged, output=args.output, thumbnail=args.thumbnail)


def _merge_audio_settings(args: argparse.Namespace) -> AudioSettings:
    """``merge``'s audio options, checked by the same parsers as the AUDIO_* variables."""
    defaults = AudioSettings()
    values: dict[str, Any] = {}
    options: list[tuple[str, str | None, str, Callable[[str], Any]]] = [
        ("--audio-sample-rate", args.audio_sample_rate, "sample_rate", parse_sample_rate),
        ("--audio-bitrate", args.audio_bitrate, "bitrate", parse_bitrate),
    ]
    for option, raw, attribute, parse in options:
        if raw is None:
            continue
        try:
            values[attribute] = parse(raw.strip())
        except ValueError as error:
            detail = str(error) if "must" in str(error) else "must be a number"
            raise ConfigError(f"{option}: {detail}") from None
    return AudioSettings(
        channels=args.audio_channels or defaults.channels,
        sample_rate=values.get("sample_rate", defaults.sample_rate),
        bitrate=values.get("bitrate", defaults.bitrate),
    )


def describe_sync(result: MergeResult) -> str:
    """One line on how the call end was placed (the values the worker stores on the row)."""
    synced = result.sync
    if synced.measured:
        offset = round(synced.offset_seconds, 3) + 0.0  # no "-0.000"
        drift = f", drift {synced.drift_ppm:+.1f} ppm" if synced.drift_ppm else ""
        return (
            f"sync: {synced.method}, call end {result.call_end_seconds:.3f} s (--call-end "
            f"{offset:+.3f} s, confidence {synced.confidence:.1f}{drift})"
        )
    return (
        f"sync: timestamp, call end {result.call_end_seconds:.3f} s "
        f"({synced.reason.replace('_', ' ')}, confidence {synced.confidence:.1f})"
    )


class _Staged:
    """Output paths written beside their destinations and moved into place only on success.

    A failed merge removes what it wrote; with staging that is the staged file, never a file
    the user already had at ``--output`` / ``--thumbnail`` before the run.
    """

    def __init__(self, output: Path, thumbnail: Path | None) -> None:
        self.final = [output] + ([thumbnail] if thumbnail is not None else [])
        # Same folder (an atomic rename) and same suffix (it chooses the container).
        self.staged = [
            path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
            for path in self.final
        ]

    def __enter__(self) -> tuple[Path, Path | None]:
        return self.staged[0], (self.staged[1] if len(self.staged) > 1 else None)

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        for staged, final in zip(self.staged, self.final, strict=True):
            if kind is None:
                staged.replace(final)
            else:
                staged.unlink(missing_ok=True)


class _MergeProgress:
    """Merge progress on stderr: a tqdm bar (TTY), plain lines every 5 s ("lines"), or none."""

    def __init__(self, mode: str, total: float) -> None:
        self.mode = mode
        self.total = max(total, 1e-3)
        self.bar: Any = None
        self.last_line = time.monotonic()

    def __enter__(self) -> _MergeProgress:
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=round(self.total, 1), unit="s", desc="merge", file=sys.stderr, leave=False
            )
        return self

    def update(self, seconds: float) -> None:
        """ffmpeg has written ``seconds`` of output."""
        done = min(seconds, self.total)
        if self.bar is not None:
            self.bar.update(round(done, 1) - self.bar.n)
        elif self.mode == "lines":
            # Plain lines for logs and pipes: at most one per 5 s of wall time, so a short
            # merge prints none.
            now = time.monotonic()
            if now - self.last_line >= 5.0:
                self.last_line = now
                percent = 100 * done / self.total
                print(f"merge: {percent:.0f}% ({done:.1f}/{self.total:.1f} s)", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
