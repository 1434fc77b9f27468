"""ObjectStore against a real moto server: listing, streamed/ranged downloads, uploads."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from tests.harness.fixtures_aws import AwsEnv
from tests.harness.worker_harness import mounted_tmpfs
from worker.aws import AwsClients
from worker.errors import AwsUnavailable, ObjectChanged, ObjectNotFound, ScratchFull
from worker.observability import BYTES_TRANSFERRED
from worker.storage import MIB, ObjectStore, downloads

pytestmark = pytest.mark.anyio
# Transfers that must also work on LocalStack's S3, which (unlike moto) verifies each part's
# CRC32 (BadDigest on a mismatch) and the composite checksum.
on_both_backends = pytest.mark.backends("moto", "localstack")


@pytest.fixture
async def clients(backend_clients: AwsClients) -> AwsClients:
    """The worker's clients on this test's backend (moto unless marked)."""
    return backend_clients


@dataclass
class S3Env:
    """A fresh, empty bucket for one test and a boto3 client to seed and inspect it."""

    bucket: str
    boto: Any


@pytest.fixture
def s3env(backend_world: AwsEnv) -> S3Env:
    boto = backend_world.client("s3")
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    boto.create_bucket(Bucket=bucket)
    return S3Env(bucket, boto)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _crc32_b64(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def _transferred(direction: str) -> float:
    return BYTES_TRANSFERRED.labels(direction=direction)._value.get()


def _record_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every ``operation`` call the real client makes."""
    seen: list[dict[str, Any]] = []

    def hook(params: dict[str, Any], **_: Any) -> None:
        seen.append(dict(params))

    client.meta.events.register(f"provide-client-params.s3.{operation}", hook)
    return seen


async def test_list_prefix_paginates_and_filters(s3env: S3Env, clients: AwsClients) -> None:
    s3 = s3env.boto
    wanted = [f"connect/x/2024/01/02/rec-{i:02d}_x.wav" for i in range(7)]
    for index, key in enumerate(wanted):
        s3.put_object(Bucket=s3env.bucket, Key=key, Body=b"a" * (index + 1))
    s3.put_object(Bucket=s3env.bucket, Key="connect/x/2024/01/03/other.wav", Body=b"b")
    calls = _record_calls(clients.s3, "ListObjectsV2")

    found = await ObjectStore(clients.s3).list_prefix(
        s3env.bucket, "connect/x/2024/01/02/", page_size=3
    )

    assert [o.key for o in found] == wanted
    assert [o.size for o in found] == list(range(1, 8))
    assert all(o.last_modified.tzinfo is not None for o in found)
    assert len(calls) == 3  # 3 + 3 + 1: every page was followed
    assert await ObjectStore(clients.s3).list_prefix(s3env.bucket, "nothing/") == []


async def test_download_small_object(s3env: S3Env, clients: AwsClients, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    s3env.boto.put_object(Bucket=s3env.bucket, Key="a/b.mp4", Body=data)
    before = _transferred("download")
    destination = tmp_path / "b.mp4"

    size = await ObjectStore(clients.s3).download(s3env.bucket, "a/b.mp4", destination)

    assert size == len(data)
    assert destination.read_bytes() == data
    assert _transferred("download") - before == len(data)


async def test_download_empty_object(s3env: S3Env, clients: AwsClients, tmp_path: Path) -> None:
    s3env.boto.put_object(Bucket=s3env.bucket, Key="empty", Body=b"")
    destination = tmp_path / "empty"
    assert await ObjectStore(clients.s3).download(s3env.bucket, "empty", destination) == 0
    assert destination.read_bytes() == b""


@on_both_backends
async def test_large_download_uses_parallel_ranges(
    s3env: S3Env, clients: AwsClients, tmp_path: Path
) -> None:
    data = os.urandom(12 * MIB + 12345)
    s3env.boto.put_object(Bucket=s3env.bucket, Key="big.webm", Body=data)
    calls = _record_calls(clients.s3, "GetObject")
    destination = tmp_path / "big.webm"

    store = ObjectStore(clients.s3, part_size=5 * MIB, max_concurrency=3)
    size = await store.download(s3env.bucket, "big.webm", destination)

    assert size == len(data)
    assert _sha(destination.read_bytes()) == _sha(data)
    ranges = sorted(call["Range"] for call in calls)
    assert ranges == sorted(
        [
            f"bytes=0-{5 * MIB - 1}",
            f"bytes={5 * MIB}-{10 * MIB - 1}",
            f"bytes={10 * MIB}-{len(data) - 1}",
        ]
    )
    assert all(call.get("IfMatch") for call in calls)  # pinned to one version of the object


async def test_download_missing_key_raises_object_not_found(
    s3env: S3Env, clients: AwsClients, tmp_path: Path
) -> None:
    destination = tmp_path / "missing.mp4"
    with pytest.raises(ObjectNotFound) as caught:
        await ObjectStore(clients.s3).download(s3env.bucket, "no/such.mp4", destination)
    assert caught.value.key == "no/such.mp4"
    assert not destination.exists()
    with pytest.raises(ObjectNotFound):
        await ObjectStore(clients.s3).download("no-such-bucket-xyz", "k", destination)


async def test_download_over_scratch_cap_raises_before_writing(
    s3env: S3Env, clients: AwsClients, tmp_path: Path
) -> None:
    s3env.boto.put_object(Bucket=s3env.bucket, Key="k", Body=b"x" * 5000)
    destination = tmp_path / "k"
    store = ObjectStore(clients.s3, scratch_max_bytes=4999)
    with pytest.raises(ScratchFull):
        await store.download(s3env.bucket, "k", destination)
    assert not destination.exists()
    # At the cap exactly it fits, every byte of it.
    size = await ObjectStore(clients.s3, scratch_max_bytes=5000).download(
        s3env.bucket, "k", destination
    )
    assert size == 5000
    assert destination.read_bytes() == b"x" * 5000


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real full disk (see ``mounted_tmpfs``: fails under CI if impossible)."""
    with mounted_tmpfs(tmp_path / "tiny", "1m") as mount_point:
        yield mount_point


async def test_download_to_full_disk_raises_scratch_full(
    s3env: S3Env, clients: AwsClients, tiny_tmpfs: Path
) -> None:
    s3env.boto.put_object(Bucket=s3env.bucket, Key="k", Body=os.urandom(2 * MIB))
    with pytest.raises(ScratchFull):
        await ObjectStore(clients.s3).download(s3env.bucket, "k", tiny_tmpfs / "k")
    assert list(tiny_tmpfs.iterdir()) == []


@on_both_backends
async def test_small_upload_has_content_type_and_crc32(
    s3env: S3Env, clients: AwsClients, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    source = tmp_path / "thumbnail.png"
    source.write_bytes(data)
    before = _transferred("upload")

    size = await ObjectStore(clients.s3).upload(
        source, s3env.bucket, "o/thumbnail.png", content_type="image/png"
    )

    assert size == len(data)
    assert _transferred("upload") - before == len(data)
    s3 = s3env.boto
    head = s3.head_object(Bucket=s3env.bucket, Key="o/thumbnail.png", ChecksumMode="ENABLED")
    assert head["ContentType"] == "image/png"
    assert base64.b64decode(head["ChecksumCRC32"]) == _crc32_b64(data)
    body = s3.get_object(Bucket=s3env.bucket, Key="o/thumbnail.png")["Body"].read()
    assert body == data


@on_both_backends
async def test_multipart_upload_above_part_size(
    s3env: S3Env, clients: AwsClients, tmp_path: Path
) -> None:
    data = os.urandom(11 * MIB + 777)
    source = tmp_path / "recording.mp4"
    source.write_bytes(data)
    calls = _record_calls(clients.s3, "UploadPart")

    store = ObjectStore(clients.s3, part_size=5 * MIB, max_concurrency=2)
    size = await store.upload(source, s3env.bucket, "o/recording.mp4", content_type="video/mp4")

    assert size == len(data)
    assert sorted(call["PartNumber"] for call in calls) == [1, 2, 3]
    s3 = s3env.boto
    head = s3.head_object(Bucket=s3env.bucket, Key="o/recording.mp4", ChecksumMode="ENABLED")
    assert head["ContentType"] == "video/mp4"
    assert head["ContentLength"] == len(data)
    attributes = s3.get_object_attributes(
        Bucket=s3env.bucket, Key="o/recording.mp4", ObjectAttributes=["Checksum"]
    )
    # A multipart CRC32 is the CRC32 of the parts' CRC32s (S3's COMPOSITE checksum).
    parts = [data[i : i + 5 * MIB] for i in range(0, len(data), 5 * MIB)]
    composite = zlib.crc32(b"".join(_crc32_b64(p) for p in parts)).to_bytes(4, "big")
    checksum = attributes["Checksum"]["ChecksumCRC32"].split("-")[0]
    assert base64.b64decode(checksum) == composite
    body = s3.get_object(Bucket=s3env.bucket, Key="o/recording.mp4")["Body"].read()
    assert _sha(body) == _sha(data)
    assert s3.list_multipart_uploads(Bucket=s3env.bucket).get("Uploads", []) == []


@on_both_backends
async def test_failed_multipart_upload_is_aborted(
    s3env: S3Env, clients: AwsClients, tmp_path: Path
) -> None:
    source = tmp_path / "recording.mp4"
    source.write_bytes(os.urandom(11 * MIB))

    def fail_part_two(params: dict[str, Any], **_: Any) -> None:
        if params["PartNumber"] == 2:
            raise ConnectionResetError("injected: connection reset while sending part 2")

    clients.s3.meta.events.register("provide-client-params.s3.UploadPart", fail_part_two)
    store = ObjectStore(clients.s3, part_size=5 * MIB, max_concurrency=1)
    with pytest.raises(AwsUnavailable, match="ConnectionResetError"):
        await store.upload(source, s3env.bucket, "o/failed.mp4", content_type="video/mp4")

    s3 = s3env.boto
    assert s3.list_multipart_uploads(Bucket=s3env.bucket).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=s3env.bucket).get("KeyCount", 0) == 0


async def test_cancelled_multipart_upload_is_aborted(
    s3env: S3Env, clients: AwsClients, tmp_path: Path
) -> None:
    source = tmp_path / "recording.mp4"
    source.write_bytes(os.urandom(11 * MIB))
    store = ObjectStore(clients.s3, part_size=5 * MIB, max_concurrency=1)

    with anyio.CancelScope() as scope:

        def cancel_at_part_two(params: dict[str, Any], **_: Any) -> None:
            if params["PartNumber"] == 2:
                scope.cancel()  # as a SIGTERM past the grace period would

        clients.s3.meta.events.register("provide-client-params.s3.UploadPart", cancel_at_part_two)
        await store.upload(source, s3env.bucket, "o/cancel.mp4", content_type="video/mp4")
    assert scope.cancelled_caught

    s3 = s3env.boto
    assert s3.list_multipart_uploads(Bucket=s3env.bucket).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=s3env.bucket).get("KeyCount", 0) == 0


async def test_cancelled_download_leaves_no_partial_file(
    s3env: S3Env, clients: AwsClients, tmp_path: Path
) -> None:
    s3env.boto.put_object(Bucket=s3env.bucket, Key="big", Body=os.urandom(11 * MIB))
    destination = tmp_path / "big"
    store = ObjectStore(clients.s3, part_size=5 * MIB, max_concurrency=1)
    with anyio.CancelScope() as scope:
        ranges_seen: list[str] = []

        def cancel_on_second_range(params: dict[str, Any], **_: Any) -> None:
            ranges_seen.append(params.get("Range", ""))
            if len(ranges_seen) == 2:
                scope.cancel()

        clients.s3.meta.events.register(
            "provide-client-params.s3.GetObject", cancel_on_second_range
        )
        await store.download(s3env.bucket, "big", destination)
    assert scope.cancelled_caught
    assert not destination.exists()


def test_part_size_below_s3_minimum_is_rejected() -> None:
    with pytest.raises(ValueError, match="part_size"):
        ObjectStore(object(), part_size=MIB)


async def test_object_replaced_mid_download_is_detected(
    s3env: S3Env, clients: AwsClients, tmp_path: Path
) -> None:
    s3env.boto.put_object(Bucket=s3env.bucket, Key="k", Body=os.urandom(11 * MIB))
    ranges_seen: list[str] = []

    def replace_before_second_range(params: dict[str, Any], **_: Any) -> None:
        ranges_seen.append(params.get("Range", ""))
        if len(ranges_seen) == 2:  # the backend re-uploads the object while we read it
            s3env.boto.put_object(Bucket=s3env.bucket, Key="k", Body=os.urandom(11 * MIB))

    clients.s3.meta.events.register(
        "provide-client-params.s3.GetObject", replace_before_second_range
    )
    destination = tmp_path / "k"
    store = ObjectStore(clients.s3, part_size=5 * MIB, max_concurrency=1)
    with pytest.raises(ObjectChanged):
        await store.download(s3env.bucket, "k", destination)
    assert not destination.exists()


class _BreakingBody:
    """A real GetObject body that breaks after ``chunks`` reads, as a dropped connection does
    half-way through a transfer (botocore does not retry a body; the store must)."""

    def __init__(self, body: Any, chunks: int) -> None:
        self._body = body
        self._left = chunks

    async def __aenter__(self) -> _BreakingBody:
        await self._body.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._body.__aexit__(*exc)

    async def read(self, size: int = -1) -> bytes:
        if self._left == 0:
            raise aiohttp.ClientPayloadError("connection lost half-way")
        self._left -= 1
        return bytes(await self._body.read(size))


class _FirstAttemptBreaks:
    """The worker's real S3 client, whose first GET of each range breaks mid-body."""

    def __init__(self, s3: Any, chunks: int) -> None:
        self._s3 = s3
        self._chunks = chunks
        self.broken: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    async def get_object(self, **kwargs: Any) -> Any:
        response = await self._s3.get_object(**kwargs)
        key = kwargs.get("Range", "all")
        if key not in self.broken:
            self.broken.add(key)
            response["Body"] = _BreakingBody(response["Body"], self._chunks)
        return response


@pytest.mark.parametrize("size", [3 * MIB, 11 * MIB])  # one GET; three ranged GETs
async def test_retried_downloads_count_their_bytes_once(
    s3env: S3Env,
    clients: AwsClients,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
) -> None:
    monkeypatch.setattr(downloads, "WRITE_CHUNK", 256 * 1024)  # counted as it is written
    payload = os.urandom(size)
    s3env.boto.put_object(Bucket=s3env.bucket, Key="flaky", Body=payload)
    flaky = _FirstAttemptBreaks(clients.s3, chunks=6)
    store = ObjectStore(flaky, part_size=5 * MIB)
    before = _transferred("download")
    assert await store.download(s3env.bucket, "flaky", tmp_path / "flaky") == size
    assert flaky.broken  # every GET broke once and was retried
    assert (tmp_path / "flaky").read_bytes() == payload
    assert _transferred("download") - before == size
