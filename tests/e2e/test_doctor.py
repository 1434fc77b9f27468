"""``doctor`` (issue 16): what the merge needs from ffmpeg (derived, then found in the real
ffmpeg), and every check on moto and on LocalStack + dynalite: a healthy environment passes,
and each broken part fails exactly its own check, with one clear line."""

from __future__ import annotations

import functools
import json
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import run_cli
from tests.harness.fixtures_aws import AwsEnv, create_table
from tests.harness.fixtures_dlq import Denying, fresh_queues
from tests.harness.ports import free_port
from worker import cli, ffmpeg_needs
from worker.config import Settings
from worker.doctor import Check, ToolFacts, run_checks
from worker.doctor_facts import gather, gather_tools, static_prefix

LINE = re.compile(r"^(ok  |warn|FAIL)  [a-z_.]+: \S")

# --- what the merge needs (pure, then the real ffmpeg) -------------------------------------------


def test_the_needs_come_from_the_merge_command_lines() -> None:
    needs = ffmpeg_needs.merge_needs()
    assert {"aac", "libopus", "png"} <= needs.encoders
    assert {"adelay", "amix", "anullsrc", "aresample", "atrim", "concat", "volume"} <= (
        needs.filters
    )
    assert {"alimiter", "ebur128", "pan", "anull"} <= needs.filters
    assert needs.bsfs == {"setts"}
    assert {"mov", "matroska", "webm", "wav", "ffmetadata"} <= needs.demuxers
    assert {"mp4", "webm", "image2"} <= needs.muxers
    assert {"h264", "vp8", "vp9", "av1", "opus", "pcm_s16le"} <= needs.decoders


def test_filter_names_of_a_graph() -> None:
    graph = "[1:0]pan=mono|c0=c0,aresample=16000[conn];anullsrc=r=16000[q];[q][conn]concat=n=2"
    assert ffmpeg_needs.filter_names(graph) == {"pan", "aresample", "anullsrc", "concat"}
    # A named instance (the loudness run's ebur128@connect) is its filter.
    named = "[0:0]pan=mono|c0=c0,ebur128@connect=framelog=verbose[connect]"
    assert ffmpeg_needs.filter_names(named) == {"pan", "ebur128"}


def test_listings_are_parsed_by_kind() -> None:
    decoders = " ------\n V..... libdav1d  dav1d AV1 decoder (codec av1)\n A....D opus  Opus\n"
    assert ffmpeg_needs.parse_listing("decoders", decoders) == {"libdav1d", "av1", "opus"}
    demuxers = "File formats:\n D. = Demuxing\n --\n D  mov,mp4,m4a  QuickTime\n  E mp4  MP4\n"
    assert ffmpeg_needs.parse_listing("demuxers", demuxers) == {"mov", "mp4", "m4a"}
    assert ffmpeg_needs.parse_listing("muxers", demuxers) == {"mp4"}


def test_the_installed_ffmpeg_has_everything_the_merge_uses() -> None:
    tools = gather_tools()
    checks = [c for c in run_checks_tools(tools) if c.name.startswith(("ffmpeg", "ffprobe"))]
    assert checks and all(c.status == "ok" for c in checks), checks


def run_checks_tools(tools: Any) -> list[Check]:
    from worker.doctor import check_tools

    return check_tools(tools, ffmpeg_needs.merge_needs())


def test_static_prefix() -> None:
    assert static_prefix("connect/{instance}/CallRecordings/{yyyy}/x", "i1") == (
        "connect/i1/CallRecordings/"
    )
    assert static_prefix("{yyyy}/{mm}/x", "i1") == ""


# --- on AWS --------------------------------------------------------------------------------------


def _clients(world: AwsEnv) -> dict[str, Any]:
    return {name: world.client(name) for name in ("sqs", "s3", "dynamodb")}


@functools.cache
def _installed_tools() -> ToolFacts:
    return gather_tools()


def _doctor(
    world: AwsEnv,
    clients: dict[str, Any] | None = None,
    *,
    tools: ToolFacts | None = None,
    **overrides: str,
) -> list[Check]:
    env = {**world.env, "METRICS_HOST": "127.0.0.1", "METRICS_PORT": str(free_port())}
    settings = Settings.from_env({**env, **overrides}, require_queue=True)
    facts = gather(settings, clients or _clients(world), tools=tools or _installed_tools())
    checks = run_checks(settings, facts, ffmpeg_needs.merge_needs())
    for check in checks:
        assert LINE.match(check.line()), check.line()
        assert "\n" not in check.line()
    return checks


def _failures(checks: list[Check]) -> dict[str, str]:
    return {check.name: check.detail for check in checks if check.status == "FAIL"}


@pytest.mark.backends("moto", "localstack")
def test_a_provisioned_environment_passes(backend_world: AwsEnv) -> None:
    checks = _doctor(backend_world)
    assert _failures(checks) == {}
    names = {check.name for check in checks if check.status == "ok"}
    assert {
        "queue",
        "dlq",
        "queue.redrive",
        "queue.max_receive_count",
        "dlq.retention",
        "queue.visibility",
        "bucket.connect",
        "bucket.input",
        "bucket.output",
        "table",
        "table.write",
        "ffmpeg.encoders",
        "ffmpeg.filters",
        "metrics_port",
    } <= names
    output = next(c for c in checks if c.name == "bucket.output")
    assert "put" in output.detail
    # The probe upload left nothing behind: no object, no open multipart upload.
    s3 = backend_world.client("s3")
    listed = s3.list_objects_v2(Bucket=backend_world.output_bucket)
    assert not [o for o in listed.get("Contents", []) if "komorebi-doctor" in o["Key"]]
    uploads = s3.list_multipart_uploads(Bucket=backend_world.output_bucket).get("Uploads", [])
    assert not [u for u in uploads if "komorebi-doctor" in u["Key"]]


def _missing_dlq(world: AwsEnv, tmp: Path) -> dict[str, str]:
    return {"DLQ_URL": world.dlq_url.rsplit("/", 1)[0] + "/no-such-dlq"}


def _dlq_not_the_redrive_target(world: AwsEnv, tmp: Path) -> dict[str, str]:
    _, other_dlq = fresh_queues(world)  # a DLQ, but not the one the queue redrives to
    return {"DLQ_URL": other_dlq}


def _short_dlq_retention(world: AwsEnv, tmp: Path) -> dict[str, str]:
    queue_url, dlq_url = fresh_queues(world)
    world.client("sqs").set_queue_attributes(
        QueueUrl=dlq_url, Attributes={"MessageRetentionPeriod": "3600"}
    )
    return {"QUEUE_URL": queue_url, "DLQ_URL": dlq_url}


def _missing_bucket(world: AwsEnv, tmp: Path) -> dict[str, str]:
    return {"OUTPUT_BUCKET_NAME": "no-such-bucket-komorebi"}


def _wrong_table_key(world: AwsEnv, tmp: Path) -> dict[str, str]:
    return {"RECORDING_TABLE_NAME": create_table(world, key="id")}


def _ffmpeg_without_libopus(world: AwsEnv, tmp: Path) -> dict[str, str]:
    real = shutil.which("ffmpeg")
    stub = tmp / "ffmpeg"
    stub.write_text(f"#!/bin/sh\n{real} \"$@\" | grep -v ' libopus '\n")
    stub.chmod(0o755)
    return {"PATH": f"{tmp}:/usr/bin:/bin"}


SCENARIOS: dict[str, tuple[Callable[[AwsEnv, Path], dict[str, str]], set[str], str]] = {
    "missing dlq": (_missing_dlq, {"dlq"}, "NonExistentQueue|QueueDoesNotExist"),
    "dlq not the redrive target": (_dlq_not_the_redrive_target, {"queue.redrive"}, "not the DLQ"),
    "dlq retention too short": (_short_dlq_retention, {"dlq.retention"}, "3600 s <="),
    "missing bucket": (_missing_bucket, {"bucket.output"}, "NoSuchBucket"),
    "table with the wrong key": (_wrong_table_key, {"table"}, r"key id \(S, HASH\)"),
    "ffmpeg without an encoder": (_ffmpeg_without_libopus, {"ffmpeg.encoders"}, "libopus"),
}


@pytest.mark.backends("moto", "localstack")
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_each_broken_part_fails_its_own_check(
    backend_world: AwsEnv, scenario: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, expected, detail = SCENARIOS[scenario]
    overrides = make(backend_world, tmp_path)
    tools = None
    if "PATH" in overrides:
        monkeypatch.setenv("PATH", overrides.pop("PATH"))
        tools = gather_tools()  # the stub's, not the installed ffmpeg's
    failures = _failures(_doctor(backend_world, tools=tools, **overrides))
    assert set(failures) == expected, failures
    assert re.search(detail, " ".join(failures.values())), failures


def test_a_taken_metrics_port_fails(world: AwsEnv) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        failures = _failures(_doctor(world, METRICS_PORT=port))
    assert set(failures) == {"metrics_port"}
    assert "in use" in failures["metrics_port"]


def test_missing_permissions_are_one_clear_fail_each(world: AwsEnv) -> None:
    clients = _clients(world)
    clients["s3"] = Denying(clients["s3"], "list_objects_v2", "create_multipart_upload")
    clients["dynamodb"] = Denying(clients["dynamodb"], "update_item")
    clients["sqs"] = Denying(clients["sqs"], "get_queue_attributes")
    failures = _failures(_doctor(world, clients))
    assert set(failures) == {
        "queue",
        "bucket.connect",
        "bucket.input",
        "bucket.output",
        "table.write",
    }
    assert failures["bucket.output"].count("AccessDenied") == 2  # list, put
    assert "GetQueueAttributes: AccessDenied" in failures["queue"]
    assert "UpdateItem: AccessDenied" in failures["table.write"]


@pytest.mark.backends("moto", "localstack")
def test_doctor_command_exit_codes(
    backend_world: AwsEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**backend_world.env, "METRICS_HOST": "127.0.0.1", "METRICS_PORT": str(free_port())}
    healthy = run_cli("doctor", env=env)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert all(LINE.match(line) for line in healthy.stdout.splitlines()), healthy.stdout
    for name, value in {**env, "INPUT_BUCKET_NAME": "no-such-input-bucket"}.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("FAIL")] == [
        line for line in out if line.startswith("FAIL  bucket.input: ")
    ]
    monkeypatch.delenv("QUEUE_URL")
    assert cli.main(["doctor"]) == 2
    assert "QUEUE_URL" in capsys.readouterr().err


def test_the_worker_role_of_the_template_passes(world: AwsEnv) -> None:
    # infra/template.yaml's task role: items read and updated, never described; objects put
    # by multipart upload, never deleted; bucket settings unreadable (warnings only).
    clients = _clients(world)
    clients["s3"] = Denying(
        clients["s3"], "delete_object", "get_public_access_block", "get_bucket_encryption"
    )
    clients["dynamodb"] = Denying(clients["dynamodb"], "describe_table")
    checks = _doctor(world, clients)
    assert _failures(checks) == {}
    table = next(c for c in checks if c.name == "table")
    assert table.status == "ok" and "GetItem" in table.detail
    wrong = create_table(world, key="id")
    failures = _failures(_doctor(world, clients, RECORDING_TABLE_NAME=wrong))
    assert set(failures) == {"table"} and "GetItem: ValidationException" in failures["table"]


def test_an_unverifiable_read_is_a_warning_but_a_refused_write_fails(world: AwsEnv) -> None:
    # Nothing listed to read and HeadObject refused: a prefix-conditioned ListBucket makes
    # a missing key answer 403, so reading cannot be told apart from not being allowed.
    clients = _clients(world)
    clients["s3"] = Denying(clients["s3"], "head_object")
    checks = {c.name: c for c in _doctor(world, clients)}
    assert checks["bucket.connect"].status == "warn"
    assert checks["bucket.input"].status == "warn"
    assert checks["bucket.output"].status == "FAIL"


def test_queue_checks_warn_and_fail_on_their_own_facts() -> None:
    # Pure: the facts a gatherer would bring back from an odd but working queue.
    from worker.doctor import Outcome, QueueFacts, check_queues

    settings = Settings(
        ac_audio_bucket="a",
        input_bucket="i",
        output_bucket="o",
        connect_instance_alias="c",
        queue_url="q",
        visibility_timeout=300,
    )
    dlq_arn = "arn:aws:sqs:us-east-1:123456789012:jobs-dlq"
    queue = {
        "VisibilityTimeout": "30",
        "MessageRetentionPeriod": "345600",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1}),
    }
    dlq = {"QueueArn": dlq_arn, "MessageRetentionPeriod": "1209600", "KmsMasterKeyId": "k"}
    facts = QueueFacts("q", Outcome(value=queue), "d", "RedrivePolicy", Outcome(value=dlq))
    checks = {c.name: c.status for c in check_queues(settings, facts)}
    assert checks == {
        "queue": "ok",
        "queue.encryption": "warn",  # neither SSE-SQS nor KMS
        "queue.visibility": "warn",  # 30 s, the worker asks for 300 on each receive
        "dlq": "ok",
        "dlq.encryption": "ok",
        "queue.redrive": "ok",
        "queue.max_receive_count": "warn",  # 1: no retries at all
        "dlq.retention": "ok",
    }
    unpolicied = QueueFacts("q", Outcome(value={}), None, "DLQ_URL", Outcome(error="x"))
    assert [c.status for c in check_queues(settings, unpolicied) if c.name == "queue.redrive"] == [
        "FAIL"
    ]
