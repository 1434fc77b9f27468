"""What the second AWS implementation (LocalStack for SQS/S3, dynalite for DynamoDB) checks
that moto does not — the reasons the end-to-end tests also run there (docs/deploy.md, "Two
AWS emulators")."""

from __future__ import annotations

import base64
import os
import zlib

import anyio
import pytest
from botocore.exceptions import ClientError

from tests.harness.fixtures_aws import AwsEnv
from tests.harness.worker_harness import get_row, seed_contact
from worker.aws import AwsClients
from worker.errors import LeaseHeld
from worker.recordings import RecordingTable
from worker.storage import MIB

pytestmark = [pytest.mark.anyio, pytest.mark.backends("localstack")]


async def test_concurrent_lease_claims_have_exactly_one_winner(
    backend_world: AwsEnv, backend_clients: AwsClients
) -> None:
    # DynamoDB serialises conditional writes on an item, and so does dynalite: of 20 claims
    # sent at once exactly one wins, the others see LeaseHeld, the attempt is counted once.
    # moto does not lock (it can let two win), so this runs on dynalite only.
    table = RecordingTable(backend_clients.dynamodb, backend_world.table_name)
    rid = seed_contact(backend_world, recording=None, connect_audio=None).recording_id
    winners: list[str] = []
    held: list[str] = []

    async def claim(owner: str) -> None:
        try:
            await table.claim_lease(rid, owner, 300)
            winners.append(owner)
        except LeaseHeld:
            held.append(owner)

    async with anyio.create_task_group() as group:
        for number in range(20):
            group.start_soon(claim, f"worker-{number}")
    assert len(winners) == 1 and len(held) == 19
    row = get_row(backend_world, rid)
    assert row["leaseOwner"] == winners[0] and int(row["processingAttempts"]) == 1


def test_a_part_with_a_wrong_crc32_is_refused(backend_world: AwsEnv) -> None:
    # LocalStack verifies each part's CRC32 (as S3 does; moto accepts anything), so the
    # multipart uploads of tests/aws/test_storage.py prove the worker's checksums right there.
    s3 = backend_world.client("s3")
    bucket = backend_world.output_bucket
    upload = s3.create_multipart_upload(Bucket=bucket, Key="crc/k", ChecksumAlgorithm="CRC32")
    data = os.urandom(5 * MIB)
    wrong = base64.b64encode((zlib.crc32(data) ^ 1).to_bytes(4, "big")).decode()
    try:
        with pytest.raises(ClientError) as refused:
            s3.upload_part(
                Bucket=bucket, Key="crc/k", UploadId=upload["UploadId"], PartNumber=1,
                Body=data, ChecksumAlgorithm="CRC32", ChecksumCRC32=wrong,
            )  # fmt: skip
        assert refused.value.response["Error"]["Code"] == "BadDigest"
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key="crc/k", UploadId=upload["UploadId"])
