"""The ``komorebi-worker`` command line (SPEC §7): :func:`main` and its command table.

Exit codes: 0 success, 2 usage or configuration error, 1 failure — with one clear line on
stderr. Each command is a thin shell over the module that owns the concept; where each one
lives:

- :mod:`worker.cli_parser`: the sub-commands, their flags and help, the exit codes;
- :mod:`worker.cli_merge`: ``merge`` (local files: checks, staged outputs, progress);
- :mod:`worker.cli_service`: ``run``, ``dev``, ``provision``, ``enqueue``;
- :mod:`worker.cli_operator`: ``redrive``, ``dlq list``, ``backfill``, ``doctor``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from worker.cli_merge import cmd_merge
from worker.cli_operator import cmd_backfill, cmd_dlq, cmd_doctor, cmd_redrive
from worker.cli_parser import EXIT_FAILURE, EXIT_USAGE, build_parser
from worker.cli_service import cmd_dev, cmd_enqueue, cmd_provision, cmd_run
from worker.errors import ConfigError, SettingsError, WorkerError

_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "merge": cmd_merge,
    "run": cmd_run,
    "dev": cmd_dev,
    "provision": cmd_provision,
    "enqueue": cmd_enqueue,
    "redrive": cmd_redrive,
    "dlq": cmd_dlq,
    "backfill": cmd_backfill,
    "doctor": cmd_doctor,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handler = _HANDLERS[args.command]
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
