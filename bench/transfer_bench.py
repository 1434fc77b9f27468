"""S3 throughput: this project's ``worker.storage.ObjectStore`` vs boto3's managed transfer.

One moto server runs in its own process (so the server's CPU does not share the client's GIL);
a 256 MiB random file is uploaded and downloaded by each implementation, alternating, in the
same run, each transfer in a fresh measured subprocess:

- project: ``ObjectStore(s3, part_size=S3_PART_SIZE_BYTES, max_concurrency=S3_MAX_CONCURRENCY)``
  on the aiobotocore client from ``worker.aws.open_clients`` (the worker's own settings);
- boto3: ``upload_file`` / ``download_file`` with a ``TransferConfig`` of the same part size and
  concurrency.

Subprocess entry: ``python -m bench.transfer_bench IMPL DIRECTION BUCKET KEY FILE`` with the
endpoint in ``AWS_ENDPOINT_URL``; prints one JSON line with the in-process wall time.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.measure import Measurement, measure

MIB = 1024 * 1024
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def aws_env(endpoint: str) -> dict[str, str]:
    """Environment pointing the SDKs at the emulator with its dummy credentials."""
    return {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


@contextlib.contextmanager
def moto_process() -> Iterator[str]:
    """A moto server in its own process on 127.0.0.1; yields its endpoint, stops it by PID."""
    with moto_server() as (endpoint, _pid):
        yield endpoint


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[str, int]]:
    """Like :func:`moto_process`, yielding (endpoint, pid) so its CPU can be accounted."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto server did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", server.pid
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# --- subprocess side -------------------------------------------------------------------------


async def _project(direction: str, bucket: str, key: str, path: Path) -> tuple[float, float]:
    from worker.aws import open_clients
    from worker.config import Settings
    from worker.storage import ObjectStore

    settings = Settings.from_env(
        {
            "AC_AUDIO_BUCKET_NAME": bucket,
            "INPUT_BUCKET_NAME": bucket,
            "OUTPUT_BUCKET_NAME": bucket,
            "CONNECT_INSTANCE_ALIAS": "bench",
        }
    )
    async with open_clients(settings) as clients:
        store = ObjectStore(
            clients.s3,
            part_size=settings.s3_part_size_bytes,
            max_concurrency=settings.s3_max_concurrency,
        )
        started, cpu = time.perf_counter(), time.process_time()
        if direction == "upload":
            await store.upload(path, bucket, key, content_type="application/octet-stream")
        else:
            await store.download(bucket, key, path)
        return time.perf_counter() - started, time.process_time() - cpu


def _boto3(direction: str, bucket: str, key: str, path: Path) -> tuple[float, float]:
    import boto3
    from boto3.s3.transfer import TransferConfig

    from worker.config import Settings

    settings = Settings(
        ac_audio_bucket=bucket, input_bucket=bucket, output_bucket=bucket,
        connect_instance_alias="bench",
    )  # fmt: skip
    config = TransferConfig(
        multipart_threshold=settings.s3_part_size_bytes,
        multipart_chunksize=settings.s3_part_size_bytes,
        max_concurrency=settings.s3_max_concurrency,
    )
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    started, cpu = time.perf_counter(), time.process_time()
    if direction == "upload":
        s3.upload_file(str(path), bucket, key, Config=config)
    else:
        s3.download_file(bucket, key, str(path), Config=config)
    return time.perf_counter() - started, time.process_time() - cpu


def main(argv: list[str]) -> int:
    """Subprocess entry: one transfer, prints its in-process wall time as JSON."""
    impl, direction, bucket, key, path = argv
    # Wall and CPU (all threads of the process) of the transfer alone, imports excluded.
    if impl == "project":
        import anyio

        wall, cpu = anyio.run(_project, direction, bucket, key, Path(path))
    else:
        wall, cpu = _boto3(direction, bucket, key, Path(path))
    print(
        json.dumps({"wall_seconds": wall, "cpu_seconds": cpu, "bytes": Path(path).stat().st_size})
    )
    return 0


# --- orchestration ---------------------------------------------------------------------------


def _one(
    impl: str, direction: str, bucket: str, key: str, path: Path, env: dict[str, str]
) -> Measurement:
    m = measure(
        [sys.executable, "-m", "bench.transfer_bench", impl, direction, bucket, key, str(path)],
        env=env,
    )
    if m.returncode != 0:
        raise RuntimeError(f"{impl} {direction} failed: {m.stderr_tail}")
    return m


UNSIGNED_CONFIG = "[default]\ns3 =\n    payload_signing_enabled = false\n"


def run_transfer_bench(
    workdir: Path,
    size_mib: int = 256,
    rounds: int = 2,
    impls: tuple[str, ...] = ("project", "boto3"),
    variants: tuple[str, ...] = ("signed", "unsigned"),
) -> dict[str, Any]:
    """Upload+download ``size_mib`` MiB with both implementations, alternating, ``rounds`` times.

    Two variants, both clients alike: ``signed`` is what the SDKs do over plain HTTP (moto):
    a SHA-256 of every request body for SigV4; ``unsigned`` sets the shared config file's
    ``s3.payload_signing_enabled = false``, which is what both SDKs do by themselves over HTTPS
    when a CRC32 checksum header is present (production S3). Returns, per variant,
    implementation and direction, the best (highest) MiB/s over the rounds with CPU time and
    peak RSS of that transfer's process, and the ratios project / boto3.
    """
    import boto3

    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "transfer-source.bin"
    if not source.exists() or source.stat().st_size != size_mib * MIB:
        with source.open("wb") as out:
            for _ in range(size_mib):
                out.write(os.urandom(MIB))
    unsigned_config = workdir / "aws-config-unsigned"
    unsigned_config.write_text(UNSIGNED_CONFIG)
    runs: list[dict[str, Any]] = []
    with moto_process() as endpoint:
        s3 = boto3.client(
            "s3", endpoint_url=endpoint, region_name=REGION,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        bucket = "bench-transfer"
        s3.create_bucket(Bucket=bucket)
        for variant in variants:
            env = aws_env(endpoint)
            env["AWS_CONFIG_FILE"] = str(unsigned_config) if variant == "unsigned" else os.devnull
            for round_no in range(rounds):
                for impl in impls:
                    key = f"{variant}-{impl}-{round_no}.bin"
                    target = workdir / f"transfer-{impl}.bin"
                    up = _one(impl, "upload", bucket, key, source, env)
                    down = _one(impl, "download", bucket, key, target, env)
                    if target.stat().st_size != source.stat().st_size:
                        raise RuntimeError(f"{impl} download has the wrong size")
                    target.unlink()
                    s3.delete_object(Bucket=bucket, Key=key)
                    for direction, m in (("upload", up), ("download", down)):
                        runs.append(
                            {
                                "variant": variant,
                                "impl": impl,
                                "direction": direction,
                                "round": round_no,
                                "wall_seconds": m.report["wall_seconds"],
                                "mib_per_s": size_mib / m.report["wall_seconds"],
                                "cpu_seconds": m.report["cpu_seconds"],
                                "peak_rss_bytes": m.peak_rss_bytes,
                            }
                        )
    source.unlink()
    best: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for run in runs:
        slot = best.setdefault(run["variant"], {}).setdefault(run["impl"], {})
        current = slot.get(run["direction"])
        if current is None or run["mib_per_s"] > current["mib_per_s"]:
            slot[run["direction"]] = run
    ratios = {
        variant: {
            direction: by_impl["project"][direction]["mib_per_s"]
            / by_impl["boto3"][direction]["mib_per_s"]
            for direction in ("upload", "download")
        }
        for variant, by_impl in best.items()
    }
    return {"size_mib": size_mib, "rounds": rounds, "runs": runs, "best": best, "ratios": ratios}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
