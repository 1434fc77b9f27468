"""The commands that run and set up the worker (SPEC §7): ``run`` (the queue worker service,
:func:`worker.service.run_service`), ``dev`` (the whole pipeline on an embedded AWS emulator),
``provision`` (queue, DLQ, buckets and table) and ``enqueue`` (one job message).

Each is a thin shell over the module that owns the concept; heavy imports happen inside the
command that needs them, so every other command starts fast.
"""

from __future__ import annotations

import argparse

from worker.cli_parser import EXIT_OK
from worker.errors import ConfigError, SettingsError

# `dev` runs moto's server (moto[server]: flask, werkzeug): development dependencies only.
_DEV_ONLY_MODULES = frozenset({"moto", "flask", "flask_cors", "werkzeug"})


def cmd_run(args: argparse.Namespace) -> int:
    """`run`: the queue worker service, configured by the environment (SPEC §6)."""
    # First, before the heavy imports below (seconds on a busy task): a SIGTERM from now on
    # stops the worker cleanly with exit 0 instead of killing it (worker.signals).
    from worker import signals

    signals.install()

    import anyio

    from worker.config import Settings
    from worker.ffmpeg import which_tools
    from worker.service import run_service

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


def cmd_dev(args: argparse.Namespace) -> int:
    """`dev`: the whole pipeline on an embedded AWS emulator (development install only)."""
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


def cmd_provision(args: argparse.Namespace) -> int:
    """`provision`: create the queue, the DLQ, the buckets and the table; print them."""
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


def cmd_enqueue(args: argparse.Namespace) -> int:
    """`enqueue`: send one job message; print its message id."""
    from worker import admin

    job = admin.build_job(args.recording_id, args.call_end, args.connect_audio_key)
    print(admin.enqueue(job, admin.queue_url_from_env()))
    return EXIT_OK
