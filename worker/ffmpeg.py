"""Running ffmpeg/ffprobe safely: allow-lists, time limits, kill on cancel, stderr tails.

The only module of the worker that starts a process. Every input we hand to ffmpeg or ffprobe
is untrusted (SPEC §5). The helpers here make sure that each run:

- restricts demuxers and protocols and names files with an explicit ``file:`` prefix
  (:func:`input_args`, :func:`file_url`, from :mod:`worker.ffmpeg_inputs`, where the pure
  argument builders take them from);
- is killed (and reaped) when its time limit passes or when the calling anyio scope is
  cancelled, so no ffmpeg outlives its job;
- keeps only the last lines of stderr (bounded memory) for a one-line error message.
"""

from __future__ import annotations

import collections
import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import ByteReceiveStream, Process

from worker.errors import ConfigError, MediaError, MediaProcessKilled, MediaTimeout, ScratchFull

# The input rules, re-exported: runs are built with them (e.g. ffmpeg.input_args).
from worker.ffmpeg_inputs import FFMPEG as FFMPEG
from worker.ffmpeg_inputs import FFPROBE as FFPROBE
from worker.ffmpeg_inputs import FORMAT_WHITELIST as FORMAT_WHITELIST
from worker.ffmpeg_inputs import PROTOCOL_WHITELIST as PROTOCOL_WHITELIST
from worker.ffmpeg_inputs import file_url as file_url
from worker.ffmpeg_inputs import input_args as input_args
from worker.limits import SHUTDOWN
from worker.observability import FFMPEG_FAILURES

log = structlog.get_logger(__name__)

STDERR_TAIL_LINES = 20


@dataclass
class RunResult:
    """What a finished (successful) run left behind."""

    returncode: int
    stderr_tail: list[str]


class StderrTail:
    """The last ``limit`` non-empty stderr lines (bounded memory, however chatty ffmpeg is)."""

    def __init__(self, limit: int = STDERR_TAIL_LINES) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=limit)

    def add(self, line: str) -> None:
        """Keep ``line`` if it says something."""
        line = line.strip()
        if line:
            self.lines.append(line)

    def most_relevant(self) -> str:
        """The line that best explains a failure: the last one that is not boilerplate."""
        for line in reversed(self.lines):
            if not _BOILERPLATE.search(line):
                return line
        return self.lines[-1] if self.lines else "no error output"


_BOILERPLATE = re.compile(
    r"^(Conversion failed!|Exiting normally|Error while filtering: |"
    r"Error opening output files?: Invalid argument$)"
)


_REFUSED_FORMAT = re.compile(r"\[(\w+) @ [^\]]*\] Format not on whitelist")


def classify(tail: StderrTail) -> str:
    """A low-cardinality reason for a failed run, from its stderr."""
    text = "\n".join(tail.lines)
    if "No space left on device" in text:
        return "scratch_full"
    if "not on whitelist" in text or "not in allowed" in text:
        return "not_allowed"
    if "Invalid data found" in text or "moov atom not found" in text:
        return "invalid_data"
    return "ffmpeg_error"


async def _read_lines(stream: ByteReceiveStream, handle: Callable[[str], None]) -> None:
    """Feed ``handle`` one decoded line at a time; memory is bounded by the longest line."""
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            handle(raw.decode("utf-8", "replace").rstrip("\r"))
        if len(buffer) > 1 << 16:
            # A pathological "line" (no newline): keep only its end.
            buffer = buffer[-(1 << 12) :]
    if buffer:
        handle(buffer.decode("utf-8", "replace"))


async def _read_chunks(stream: ByteReceiveStream, handle: Callable[[bytes], None]) -> None:
    """Feed ``handle`` the raw bytes of ``stream`` (binary output, e.g. PCM on a pipe)."""
    async for chunk in stream:
        handle(chunk)


async def run(
    args: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109 - the limit is per process, enforced inside
    what: str,
    on_stdout_line: Callable[[str], None] | None = None,
    on_stdout_bytes: Callable[[bytes], None] | None = None,
) -> RunResult:
    """Run ``args``, stream its stdout lines to ``on_stdout_line``, enforce ``timeout``.

    ``on_stdout_bytes`` instead receives stdout as raw chunks (binary output such as
    ``-f f32le pipe:1``); the caller bounds what it keeps.

    Raises :class:`MediaTimeout` past the limit, :class:`ScratchFull` on ENOSPC and
    :class:`MediaError` for any other non-zero exit, each with one line taken from the
    stderr tail. When the calling scope is cancelled, the process is killed and reaped before
    the cancellation propagates.
    """
    tail = StderrTail()
    started = time.monotonic()
    process: Process | None = None
    timed_out = False
    try:
        try:
            process = await _spawn(args)
        except FileNotFoundError:
            raise ConfigError(f"{args[0]} is not installed (not found on PATH)") from None
        with anyio.move_on_after(timeout) as scope:
            async with anyio.create_task_group() as group:
                assert process.stdout is not None and process.stderr is not None
                group.start_soon(_read_lines, process.stderr, tail.add)
                if on_stdout_bytes is not None:
                    group.start_soon(_read_chunks, process.stdout, on_stdout_bytes)
                else:
                    group.start_soon(_read_lines, process.stdout, on_stdout_line or _ignore)
            await process.wait()
        timed_out = scope.cancelled_caught
    finally:
        if process is not None:
            await _reap(process)
    assert process is not None
    if timed_out:
        FFMPEG_FAILURES.labels(reason="timeout").inc()
        log.warning("ffmpeg_timeout", what=what, limit_seconds=round(timeout, 1))
        raise MediaTimeout(f"{what} took longer than its {math.ceil(timeout)} s limit")
    _raise_for_exit(process.returncode, tail, what=what, started=started)
    return RunResult(process.returncode or 0, list(tail.lines))


def _raise_for_exit(returncode: int | None, tail: StderrTail, *, what: str, started: float) -> None:
    """The error (recorded and logged) for a process that exited unsuccessfully; nothing for
    success. One line of the stderr tail explains it, directories stripped."""
    if returncode is not None and returncode < 0:
        # Killed by a signal we did not send (we only kill on timeout or cancellation, both
        # handled above): the OOM killer or the host, not bad media. Retry later.
        FFMPEG_FAILURES.labels(reason="killed").inc()
        log.warning("ffmpeg_killed", what=what, signal=-returncode)
        raise MediaProcessKilled(f"{what} was killed by signal {-returncode}")
    if returncode != 0:
        reason = classify(tail)
        FFMPEG_FAILURES.labels(reason=reason).inc()
        log.warning(
            "ffmpeg_failed",
            what=what,
            returncode=returncode,
            reason=reason,
            stderr_tail=list(tail.lines),
            seconds=round(time.monotonic() - started, 3),
        )
        detail = strip_directories(tail.most_relevant())
        if reason == "scratch_full":
            raise ScratchFull(f"{what}: no space left on device")
        if reason == "not_allowed":
            refused = _REFUSED_FORMAT.search("\n".join(tail.lines))
            kind = f"a {refused[1]} file" if refused else "a playlist, script or URL"
            raise MediaError(
                f"{what}: input is {kind}, not an allowed media container "
                "(mp4/mov, webm/matroska, wav)",
                reason="media_not_allowed",
            )
        raise MediaError(f"{what} failed: {detail}")


# ``file:/scratch/job-x/recording-input.mp4`` or ``/scratch/...``: the directories say nothing
# to whoever reads the DLQ or the row, and reveal the host's layout.
_PATH = re.compile(r"(?:file:)?/(?:[^\s:/'\"]+/)+([^\s:/'\"]+)")


def strip_directories(text: str) -> str:
    """``text`` with every absolute path (or ``file:`` URL) reduced to its file name."""
    return _PATH.sub(r"\1", text)


async def _spawn(args: Sequence[str]) -> Process:
    """Start ``args`` in its own session; a cancellation cannot interrupt the start.

    Shielded because a cancellation delivered while the child is being spawned would lose the
    Process object and leave ffmpeg running with nobody to kill it.
    """
    with anyio.CancelScope(shield=True):
        # Own session: a terminal's Ctrl-C reaches us, and we stop ffmpeg ourselves.
        process = await anyio.open_process(
            list(args), stdin=subprocess.DEVNULL, stdout=-1, stderr=-1, start_new_session=True
        )
    return process


async def _reap(process: Process) -> None:
    """Kill ``process`` if still running and reap it, even from inside a cancelled scope."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            try:
                process.kill()
            except ProcessLookupError:  # exited in the meantime
                pass
        with anyio.move_on_after(SHUTDOWN.kill_ffmpeg):
            await process.aclose()


def _ignore(_line: str) -> None:
    return None


def which_tools() -> dict[str, str | None]:
    """Where ffmpeg/ffprobe live (None when missing): for clear start-up errors."""
    return {name: shutil.which(name) for name in (FFMPEG, FFPROBE)}
