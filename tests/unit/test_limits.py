"""worker.limits: every shared limit written once, and the shutdown budget's arithmetic.

The budget is the sum of the bounds the stop path really uses; these tests pin both the sum
(inside Fargate's 120 s stop timeout with the default and the deployed grace) and that each
named part is the number the module running that step reads.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.infra_helpers import load_template
from worker import (
    config,
    consumer,
    delivery,
    job_lease,
    limits,
    messages,
    protection,
    provisioning,
    queue,
    shutdown,
)
from worker.config import Settings, SettingsError
from worker.limits import SHUTDOWN, ShutdownBudget
from worker.media.plan import MergeOptions
from worker.media.timeline import header_duration_plausible

REQUIRED = {
    "AC_AUDIO_BUCKET_NAME": "connect-audio",
    "INPUT_BUCKET_NAME": "input",
    "OUTPUT_BUCKET_NAME": "output",
    "CONNECT_INSTANCE_ALIAS": "komorebi",
}
DEFAULT_GRACE = Settings.__dataclass_fields__["shutdown_grace_seconds"].default


def test_the_worst_case_stop_with_the_default_grace_fits_fargates_stop_timeout() -> None:
    assert DEFAULT_GRACE == 100.0
    # Spelled out, part by part: grace, then one cancelled job's clean-ups one after the
    # other (kill ffmpeg, release the lease, remove scratch, give the message back), then
    # protection off and the HTTP server.
    busy = (
        DEFAULT_GRACE
        + SHUTDOWN.kill_ffmpeg
        + SHUTDOWN.release_lease
        + SHUTDOWN.remove_scratch
        + SHUTDOWN.give_back
        + SHUTDOWN.protection_off
        + SHUTDOWN.http_stop
    )
    assert busy == SHUTDOWN.busy(DEFAULT_GRACE) == 119.0
    # A job that finished just before the grace ended settles instead (no longer).
    assert DEFAULT_GRACE + SHUTDOWN.settle + SHUTDOWN.exit() <= busy
    # Idle: the receive in progress runs to its own timeout, what it brought is given back.
    idle = (
        limits.SQS_MAX_WAIT_SECONDS
        + SHUTDOWN.receive_overrun
        + SHUTDOWN.give_back
        + SHUTDOWN.protection_off
        + SHUTDOWN.http_stop
    )
    assert idle == SHUTDOWN.idle() == 45.0
    assert SHUTDOWN.total(DEFAULT_GRACE) == max(busy, idle)
    assert SHUTDOWN.total(DEFAULT_GRACE) <= limits.FARGATE_STOP_TIMEOUT_SECONDS == 120.0


@pytest.mark.parametrize("grace", [0.0, 0.5, 1.0, 3.0, 10.0, 40.0, 99.0, 101.0])
def test_every_grace_up_to_the_maximum_fits(grace: float) -> None:
    assert grace <= SHUTDOWN.max_grace()
    assert SHUTDOWN.total(grace) <= SHUTDOWN.stop_timeout
    # The busy worker's receive is over before the grace (or within a second of a tiny one).
    assert SHUTDOWN.busy_poll_wait(grace) + SHUTDOWN.receive_finish <= max(grace, 1.0) + 1.0


def test_a_grace_past_the_maximum_does_not_fit() -> None:
    assert SHUTDOWN.max_grace() == 101.0
    assert SHUTDOWN.total(SHUTDOWN.max_grace()) == SHUTDOWN.stop_timeout
    assert SHUTDOWN.total(SHUTDOWN.max_grace() + 0.5) > SHUTDOWN.stop_timeout


def test_a_larger_part_shrinks_the_allowed_grace() -> None:
    slower = ShutdownBudget(give_back=10.0)
    assert slower.max_grace() == SHUTDOWN.max_grace() - 5.0
    assert slower.total(DEFAULT_GRACE) > slower.stop_timeout
    # A slower settling counts too.
    assert ShutdownBudget(settle=20.0).total(DEFAULT_GRACE) == 125.0


def test_busy_poll_wait_is_half_the_grace_capped_at_the_long_poll() -> None:
    assert SHUTDOWN.busy_poll_wait(100.0) == 20
    assert SHUTDOWN.busy_poll_wait(30.0) == 15
    assert SHUTDOWN.busy_poll_wait(1.0) == 0
    assert SHUTDOWN.busy_poll_wait(0.0) == 0


def test_config_refuses_a_grace_that_breaks_the_budget_in_one_line() -> None:
    assert Settings.from_env(REQUIRED).shutdown_grace_seconds == DEFAULT_GRACE
    assert Settings.from_env({**REQUIRED, "SHUTDOWN_GRACE_SECONDS": "101"})
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**REQUIRED, "SHUTDOWN_GRACE_SECONDS": "110"})
    assert caught.value.problems == [
        "SHUTDOWN_GRACE_SECONDS=110: must be at most 101 (the grace plus the shutdown's "
        "clean-ups must fit Fargate's 120 s stop timeout)"
    ]


def test_each_part_is_the_bound_the_stop_path_uses() -> None:
    assert SHUTDOWN.release_lease == job_lease.LEASE_RELEASE_TIMEOUT_SECONDS
    assert SHUTDOWN.give_back == delivery.RELEASE_TIMEOUT_SECONDS
    assert SHUTDOWN.settle == delivery.SETTLE_TIMEOUT_SECONDS
    assert SHUTDOWN.receive_overrun == consumer.RECEIVE_OVERRUN_SECONDS
    assert SHUTDOWN.receive_finish == shutdown.RECEIVE_FINISH_SECONDS
    assert SHUTDOWN.protection_off == protection.DEFAULT_TIMEOUT_SECONDS
    assert SHUTDOWN.receive_wait == queue.SQS_MAX_WAIT_SECONDS == limits.SQS_MAX_WAIT_SECONDS


def test_the_deployed_task_fits_the_budget() -> None:
    template: dict[str, Any] = load_template()
    definitions = template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    worker = next(d for d in definitions if d["Name"] == "worker")
    env = {item["Name"]: item["Value"] for item in worker["Environment"]}
    assert worker["StopTimeout"] == limits.FARGATE_STOP_TIMEOUT_SECONDS
    assert SHUTDOWN.total(float(env["SHUTDOWN_GRACE_SECONDS"])) <= worker["StopTimeout"]


def test_media_limits_have_one_home() -> None:
    # The call end and a media timeline share the one-week bound.
    assert messages.MAX_CALL_END_SECONDS is limits.MAX_MEDIA_SECONDS
    assert messages.parse_timestamp(limits.MAX_MEDIA_SECONDS) == limits.MAX_MEDIA_SECONDS
    with pytest.raises(ValueError, match="implausibly large"):
        messages.parse_timestamp(limits.MAX_MEDIA_SECONDS + 1)
    # A header claiming more than a week is not believed, whatever the file's size.
    assert header_duration_plausible(limits.MAX_MEDIA_SECONDS, 10**12)
    assert not header_duration_plausible(limits.MAX_MEDIA_SECONDS + 1, 10**12)
    # The media engine's own defaults are the settings' defaults.
    defaults = Settings(
        ac_audio_bucket="a", input_bucket="i", output_bucket="o", connect_instance_alias="c"
    )
    assert MergeOptions().timeout_base_seconds == defaults.ffmpeg_timeout_base_seconds
    assert MergeOptions().timeout_per_media_second == defaults.ffmpeg_timeout_per_media_second
    assert config.SQS_MAX_VISIBILITY_SECONDS == limits.SQS_MAX_VISIBILITY_SECONDS
    # The queue is created with the worker's default visibility.
    assert defaults.visibility_timeout == provisioning.QUEUE_VISIBILITY_TIMEOUT_SECONDS
