"""The operator commands (issue 16): ``redrive`` (dead letters back to the queue), ``dlq list``,
``backfill`` (re-enqueue a creation-date range) and ``doctor`` (does this environment give a
job what it needs?).

Each is a thin shell over the module that owns the concept (:mod:`worker.redrive`,
:mod:`worker.deadletters`, :mod:`worker.backfill`, :mod:`worker.doctor`): it prints their lines
and turns their result into the exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from worker.cli_parser import EXIT_FAILURE, EXIT_OK
from worker.errors import ConfigError


def cmd_redrive(args: argparse.Namespace) -> int:
    """`redrive`: move (selected) dead letters back to the job queue."""
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


def cmd_dlq(args: argparse.Namespace) -> int:
    """`dlq list`: list the dead letters, consuming nothing."""
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


def cmd_backfill(args: argparse.Namespace) -> int:
    """`backfill`: re-enqueue the rows of a creation-date range, at a bounded rate."""
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


def cmd_doctor(args: argparse.Namespace) -> int:
    """`doctor`: check what a job needs (queues, buckets, table, ffmpeg), one line each."""
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
