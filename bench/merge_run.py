"""This project's merge, measured in a fresh process: the exact code path the worker uses.

``worker.media.merge(MergeRequest(...))`` probes both inputs, runs the one-pass merge, probes
and checks the output and makes the thumbnail, exactly as ``worker.job`` calls it. Run as a
subprocess by the bench so its RSS starts clean:
``python -m bench.merge_run RECORDING CONNECT_WAV CALL_END OUTPUT THUMBNAIL [ALIGN]``
(``ALIGN`` auto, the default, or end: without the call-end sync); prints one JSON
line with the in-process wall time of ``merge`` (without the interpreter start-up and imports,
which a running worker has already paid) and the import time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

_t0 = time.perf_counter()
import anyio  # noqa: E402  (timed: imports are measured separately)

from worker.config import Settings  # noqa: E402
from worker.media import MergeOptions, MergeRequest, merge  # noqa: E402

_IMPORT_SECONDS = time.perf_counter() - _t0


def options_from_settings(settings: Settings) -> MergeOptions:
    """The merge options the worker derives from its settings (defaults here)."""
    return MergeOptions(
        align=settings.align,
        audio=settings.audio,
        loudness_target=settings.loudness_target,
        timeout_base_seconds=settings.ffmpeg_timeout_base_seconds,
        timeout_per_media_second=settings.ffmpeg_timeout_per_media_second,
    )


async def _run(request: MergeRequest) -> dict[str, object]:
    # CPU this interpreter spent before the work (start-up, imports): the bench subtracts it,
    # a running worker has paid it once.
    startup_cpu = time.process_time()
    started = time.perf_counter()
    result = await merge(request)
    return {
        "wall_seconds": time.perf_counter() - started,
        "startup_cpu_seconds": startup_cpu,
        "import_seconds": _IMPORT_SECONDS,
        "media_duration_seconds": result.media_duration_seconds,
        "output": str(result.output),
        "output_bytes": result.output.stat().st_size,
        "sync_method": result.sync.method,
        "sync_reason": result.sync.reason,
    }


def main(argv: list[str]) -> int:
    """CLI entry for the bench's subprocess."""
    recording, connect, call_end, output, thumbnail, *rest = argv
    settings = Settings(
        ac_audio_bucket="bench", input_bucket="bench", output_bucket="bench",
        connect_instance_alias="bench", align=rest[0] if rest else "auto",  # type: ignore[arg-type]
    )  # fmt: skip
    request = MergeRequest(
        recording=Path(recording),
        connect_audio=Path(connect),
        call_end_seconds=float(call_end),
        output=Path(output),
        thumbnail=Path(thumbnail),
        options=options_from_settings(settings),
    )
    print(json.dumps(anyio.run(_run, request)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
