"""The ``komorebi-worker`` command line (SPEC §7).

Exit codes: 0 success, 2 usage or configuration error, 1 failure — with one clear line on
stderr. Each command is a thin shell over the module that owns the concept.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker import __version__
from worker.config import AudioSettings, parse_bitrate, parse_sample_rate
from worker.errors import ConfigError, SettingsError, WorkerError

if TYPE_CHECKING:  # numpy and the media engine load only for the commands that use them
    from worker.media import MergeResult

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
# `dev` runs moto's server (moto[server]: flask, werkzeug): development dependencies only.
_DEV_ONLY_MODULES = frozenset({"moto", "flask", "flask_cors", "werkzeug"})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2, like every other usage error of this tool.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = _Parser(
        prog="komorebi-worker",
        description=(
            "Merge a Komorebi screen recording with its Amazon Connect call audio into one "
            "unified recording: as a queue worker (run), on local files (merge), or on an "
            "embedded AWS emulator (dev)."
        ),
        epilog="exit codes: 0 success, 1 failure, 2 usage or configuration error",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    commands.add_parser("run", help="the queue worker service (configured by environment)")

    merge = commands.add_parser("merge", help="merge local files, no AWS")
    merge.add_argument("--recording", required=True, type=Path, help="Komorebi recording")
    merge.add_argument("--connect-audio", required=True, type=Path, help="Connect call audio")
    merge.add_argument("--call-end", required=True, help="HH:MM:SS[.fff], MM:SS or seconds")
    merge.add_argument("--output", required=True, type=Path, help="output .mp4 or .webm")
    merge.add_argument("--thumbnail", type=Path, help="also write a PNG thumbnail here")
    merge.add_argument(
        "--align",
        choices=("auto", "end", "start"),
        default="auto",
        help="auto: the call end measured from the audio, else --call-end (default); "
        "end: the Connect audio ends at --call-end; start: it starts at 0",
    )
    merge.add_argument(
        "--loudness-target",
        default=None,
        metavar="LUFS",
        help="bring both segments to this integrated loudness, e.g. -18 (default: off)",
    )
    merge.add_argument(
        "--audio-channels",
        type=int,
        choices=(1, 2),
        default=None,
        help="1 mono (default), 2 stereo: customer left, agent right",
    )
    merge.add_argument(
        "--audio-sample-rate",
        default=None,
        help=f"output audio rate (default {AudioSettings.sample_rate})",
    )
    merge.add_argument(
        "--audio-bitrate",
        default=None,
        help=f"output audio bitrate (default {AudioSettings.bitrate})",
    )
    merge.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="auto: a bar on a terminal, plain lines otherwise",
    )

    dev = commands.add_parser("dev", help="whole pipeline on an embedded AWS emulator")
    dev.add_argument("--once", action="store_true", help="exit when the queue is empty")
    dev.add_argument(
        "--output-dir",
        type=Path,
        default=Path("komorebi-output"),
        help="where the unified recording is written",
    )
    dev.add_argument("--port", type=int, default=0, help="emulator port (0: any free port)")

    commands.add_parser("provision", help="create queue, DLQ, buckets and table")

    enqueue = commands.add_parser("enqueue", help="send a job message")
    enqueue.add_argument("recording_id", help="the recording (DynamoDB videoID)")
    enqueue.add_argument("call_end", help="call end: HH:MM:SS[.fff], MM:SS or seconds")
    enqueue.add_argument(
        "--connect-audio-key", default=None, help="exact S3 key of the Connect recording"
    )

    _add_operator_commands(commands)
    return parser


def _add_operator_commands(commands: Any) -> None:
    """``redrive``, ``dlq list``, ``backfill``, ``doctor`` (issue 16)."""
    redrive = commands.add_parser("redrive", help="move (selected) DLQ messages back to the queue")
    redrive.add_argument(
        "--reason", action="append", help="only dead letters with this reason (repeatable)"
    )
    redrive.add_argument(
        "--recording-id", action="append", help="only this recording's dead letters (repeatable)"
    )
    redrive.add_argument(
        "--max-messages", type=int, default=None, help="move at most this many (default: all)"
    )
    redrive.add_argument("--dry-run", action="store_true", help="list what would move; move none")

    dlq = commands.add_parser("dlq", help="the dead-letter queue")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    listing = dlq_commands.add_parser("list", help="list dead letters, consuming nothing")
    listing.add_argument(
        "--reason", action="append", help="only this reason, or reason:last_reason (repeatable)"
    )
    listing.add_argument("--since", default=None, help="failed at or after: ISO 8601, or 6h, 2d")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    backfill = commands.add_parser("backfill", help="re-enqueue the rows of a creation-date range")
    backfill.add_argument(
        "--from", dest="start", required=True, metavar="DATE", help="first day (or ISO time)"
    )
    backfill.add_argument(
        "--to", dest="end", required=True, metavar="DATE", help="last day, included"
    )
    backfill.add_argument(
        "--status",
        choices=("failed", "unprocessed", "all"),
        default="failed",
        help="which rows (default: failed)",
    )
    backfill.add_argument("--rate", default=None, help="messages per second, e.g. 5/s")
    backfill.add_argument("--dry-run", action="store_true", help="list what would be sent")
    backfill.add_argument("--force", action="store_true", help="also re-enqueue DONE rows")

    commands.add_parser("doctor", help="check what a job needs: queues, buckets, table, ffmpeg")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = _HANDLERS[args.command]
    try:
        return handler(args)
    except SettingsError as error:
        for problem in error.problems:
            print(f"komorebi-worker: configuration: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as error:
        print(f"komorebi-worker: {error}", file=sys.stderr)
        return EXIT_USAGE
    except WorkerError as error:
        print(f"komorebi-worker: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("komorebi-worker: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``dlq list | head``): the commands' own cleanup (releasing
        # held dead letters) has run; stop quietly instead of a traceback, and keep Python
        # from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("komorebi-worker: output closed; stopped", file=sys.stderr)
        return EXIT_FAILURE


def _cmd_merge(args: argparse.Namespace) -> int:
    """`merge`: the SPEC §5 merge on local files (no AWS). Prints the output path(s)."""
    import dataclasses

    import anyio

    from worker import media
    from worker.config import parse_loudness_target
    from worker.errors import UnsupportedMedia
    from worker.messages import parse_timestamp
    from worker.observability import configure_logging

    try:
        call_end = parse_timestamp(args.call_end)
    except ValueError as error:
        raise ConfigError(f"--call-end {args.call_end!r}: {error}") from None
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
    audio = _merge_audio_settings(args)
    target = None
    if args.loudness_target is not None:
        try:
            target = parse_loudness_target(args.loudness_target)
        except ValueError as error:
            raise ConfigError(f"--loudness-target: {error}") from None
    options = media.MergeOptions(align=args.align, audio=audio, loudness_target=target)

    # Logs go to stderr; by default only errors, so a failure stays one clear line.
    configure_logging(
        level=os.environ.get("LOG_LEVEL") or "ERROR",
        fmt="console" if os.environ.get("LOG_FORMAT", "console") == "console" else "json",
    )
    mode = args.progress
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "lines"

    async def run() -> media.MergeResult:
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

    result = anyio.run(run)
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


def _cmd_run(args: argparse.Namespace) -> int:
    # First, before the heavy imports below (seconds on a busy task): a SIGTERM from now on
    # stops the worker cleanly with exit 0 instead of killing it (worker.signals).
    from worker import signals

    signals.install()

    import anyio

    from worker.config import Settings
    from worker.consumer import run_service
    from worker.ffmpeg import which_tools

    # Every configuration problem is reported (one line each, exit 2) before anything starts:
    # without ffmpeg every job would fail, so its absence is one of them.
    problems: list[str] = []
    try:
        settings = Settings.from_env(require_queue=True)
    except SettingsError as error:
        problems += error.problems
    problems += [
        f"{tool} is not installed (not found on PATH)"
        for tool, path in which_tools().items()
        if path is None
    ]
    if problems:
        raise SettingsError(problems)
    return anyio.run(run_service, settings)


def _cmd_dev(args: argparse.Namespace) -> int:
    try:
        from worker.devenv import run_dev
    except ModuleNotFoundError as error:
        # The production image has only the runtime dependencies; the emulator is a
        # development dependency.
        if (error.name or "").split(".")[0] not in _DEV_ONLY_MODULES:
            raise
        raise ConfigError(
            "dev needs the development install (the moto emulator is not installed): "
            "run `make setup`, or `pip install -e '.[dev]'`"
        ) from None

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be a TCP port (0 for any free port)")
    return run_dev(once=args.once, output_dir=args.output_dir, port=args.port)


def _cmd_provision(args: argparse.Namespace) -> int:
    from worker.admin import aws_errors, boto3_session
    from worker.config import Settings
    from worker.provisioning import provision

    settings = Settings.from_env()
    with aws_errors("provision"):
        created = provision(settings, session=boto3_session())
    print(f"queue: {created.queue_url}")
    print(f"dlq: {created.dlq_url}")
    for bucket in created.buckets:
        print(f"bucket: {bucket}")
    print(f"table: {created.table_name}")
    return EXIT_OK


def _cmd_enqueue(args: argparse.Namespace) -> int:
    from worker import admin

    job = admin.build_job(args.recording_id, args.call_end, args.connect_audio_key)
    print(admin.enqueue(job, admin.queue_url_from_env()))
    return EXIT_OK


def _cmd_redrive(args: argparse.Namespace) -> int:
    from worker import admin
    from worker.deadletters import Selection
    from worker.redrive import redrive

    def show(action: str, info: Any) -> None:
        print(f"{action}  {info.line()}", flush=True)

    result = redrive(
        admin.queue_url_from_env(),
        admin.dlq_url_from_env(),
        selection=Selection.of(args.reason, args.recording_id),
        max_messages=args.max_messages,
        dry_run=args.dry_run,
        on_entry=show,
    )
    verb = "would move" if args.dry_run else "moved"
    count = result.selected if args.dry_run else result.moved
    print(f"{verb} {count} message(s) from {result.dlq_url}; {result.kept} left untouched")
    problems = []
    if result.failed:
        problems.append(f"{result.failed} message(s) could not be sent; still in the DLQ")
    if result.not_deleted:
        problems.append(
            f"{len(result.not_deleted)} message(s) sent but not deleted from the DLQ "
            f"(hidden there for 12 h; delete them by hand): {', '.join(result.not_deleted)}"
        )
    if not result.complete:
        problems.append("stopped before reading the whole DLQ (time limit): run it again")
    if problems:
        print(f"komorebi-worker: {'; '.join(problems)}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_dlq(args: argparse.Namespace) -> int:
    import json

    from worker import admin
    from worker.deadletters import DeadLetterInfo, Selection, list_dead_letters, parse_since

    since = parse_since(args.since) if args.since else None
    sqs = admin.sqs_client()
    dlq_url = admin.resolve_dlq_url(admin.queue_url_from_env(), admin.dlq_url_from_env(), sqs=sqs)

    def show(info: DeadLetterInfo) -> None:
        print(json.dumps(info.to_json()) if args.json else info.line(), flush=True)

    listing = list_dead_letters(sqs, dlq_url, Selection.of(args.reason, since=since), show)
    if args.json:
        print(json.dumps(listing.summary()))
    else:
        print("\n".join(listing.summary_lines()))
    if listing.timed_out:
        print("komorebi-worker: stopped before reading the whole DLQ (time limit)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_backfill(args: argparse.Namespace) -> int:
    from worker import admin
    from worker.backfill import DEFAULT_RATE, Backfill, parse_window
    from worker.config import DEFAULT_TABLE_NAME
    from worker.ratelimit import parse_rate

    window = parse_window(args.start, args.end)
    try:
        rate = parse_rate(args.rate) if args.rate is not None else DEFAULT_RATE
    except ValueError as error:
        raise ConfigError(f"--rate: {error}") from None
    table = (os.environ.get("RECORDING_TABLE_NAME") or "").strip() or DEFAULT_TABLE_NAME
    run = Backfill(
        dynamodb=admin.client("dynamodb"),
        sqs=admin.sqs_client(),
        table_name=table,
        queue_url=admin.queue_url_from_env(),
        status=args.status,
        force=args.force,
        dry_run=args.dry_run,
        rate=rate,
        on_line=lambda line: print(line, flush=True),
    )
    result = run.run(window)
    print("\n".join(result.summary_lines(args.dry_run)))
    return EXIT_FAILURE if result.failed else EXIT_OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    from worker import admin, doctor
    from worker.config import Settings
    from worker.doctor_facts import gather
    from worker.ffmpeg_needs import merge_needs

    settings = Settings.from_env(require_queue=True)
    clients = {name: admin.client(name) for name in ("sqs", "s3", "dynamodb")}
    checks = doctor.run_checks(settings, gather(settings, clients), merge_needs())
    for check in checks:
        print(check.line(), flush=True)
    return EXIT_FAILURE if doctor.failed(checks) else EXIT_OK


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "merge": _cmd_merge,
    "run": _cmd_run,
    "dev": _cmd_dev,
    "provision": _cmd_provision,
    "enqueue": _cmd_enqueue,
    "redrive": _cmd_redrive,
    "dlq": _cmd_dlq,
    "backfill": _cmd_backfill,
    "doctor": _cmd_doctor,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
