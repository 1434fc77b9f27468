"""The shape of the ``komorebi-worker`` command line (SPEC §7): sub-commands, flags, help,
and the exit codes every command keeps.

One builder per sub-command that takes options; the commands themselves are
:mod:`worker.cli_merge` (``merge``), :mod:`worker.cli_service` (``run``, ``dev``,
``provision``, ``enqueue``) and :mod:`worker.cli_operator` (``redrive``, ``dlq``,
``backfill``, ``doctor``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from worker import __version__
from worker.config import AudioSettings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


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
    _add_merge(commands)
    _add_dev(commands)
    commands.add_parser("provision", help="create queue, DLQ, buckets and table")
    _add_enqueue(commands)
    # The operator commands (issue 16).
    _add_redrive(commands)
    _add_dlq(commands)
    _add_backfill(commands)
    commands.add_parser("doctor", help="check what a job needs: queues, buckets, table, ffmpeg")
    return parser


def _add_merge(commands: Any) -> None:
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


def _add_dev(commands: Any) -> None:
    dev = commands.add_parser("dev", help="whole pipeline on an embedded AWS emulator")
    dev.add_argument("--once", action="store_true", help="exit when the queue is empty")
    dev.add_argument(
        "--output-dir",
        type=Path,
        default=Path("komorebi-output"),
        help="where the unified recording is written",
    )
    dev.add_argument("--port", type=int, default=0, help="emulator port (0: any free port)")


def _add_enqueue(commands: Any) -> None:
    enqueue = commands.add_parser("enqueue", help="send a job message")
    enqueue.add_argument("recording_id", help="the recording (DynamoDB videoID)")
    enqueue.add_argument("call_end", help="call end: HH:MM:SS[.fff], MM:SS or seconds")
    enqueue.add_argument(
        "--connect-audio-key", default=None, help="exact S3 key of the Connect recording"
    )


def _add_redrive(commands: Any) -> None:
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


def _add_dlq(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="the dead-letter queue")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    listing = dlq_commands.add_parser("list", help="list dead letters, consuming nothing")
    listing.add_argument(
        "--reason", action="append", help="only this reason, or reason:last_reason (repeatable)"
    )
    listing.add_argument("--since", default=None, help="failed at or after: ISO 8601, or 6h, 2d")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")


def _add_backfill(commands: Any) -> None:
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
