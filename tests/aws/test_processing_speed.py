"""komorebi_processing_speed_ratio measures what it says: media seconds per wall second of
the ffmpeg merge pass, not of the probes, sync, loudness, thumbnail and check around it.

A slow step patched in around the pass (a thumbnail and an audio measurement that each take a
second longer) must not show in the pass's time: the pass plus the delays fits inside the
whole merge's time, which is only true when the delays are not counted in the pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.harness.fixtures_aws import AwsEnv
from tests.harness.worker_harness import metric, seed_contact, settings_for
from worker import job as job_module
from worker import media
from worker.aws import AwsClients
from worker.job import JobDeps, process_job
from worker.media import run as run_module
from worker.messages import JobMessage
from worker.recordings import RecordingTable
from worker.storage import ObjectStore

pytestmark = pytest.mark.anyio

DELAY = 1.0


@pytest.fixture
def slow_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thumbnail's step after the pass (its own run when the merge's wrote none) and the
    audio measurement (sync, loudness) each take DELAY longer."""

    def slowed(step: Callable[..., Any]) -> Callable[..., Any]:
        async def slow(*args: Any, **kwargs: Any) -> Any:
            await anyio.sleep(DELAY)
            return await step(*args, **kwargs)

        return slow

    monkeypatch.setattr(run_module, "finish_thumbnail", slowed(run_module.finish_thumbnail))
    monkeypatch.setattr(run_module, "measure_audio", slowed(run_module.measure_audio))


async def test_the_merge_pass_time_leaves_out_the_steps_around_it(
    generated: Callable[[str], Path], tmp_path: Path, slow_steps: None
) -> None:
    request = media.MergeRequest(
        recording=generated("h264-aac"),
        connect_audio=generated("connect-16k-stereo-2s"),
        call_end_seconds=3.0,
        output=tmp_path / "out.mp4",
        thumbnail=tmp_path / "thumb.png",
    )
    started = time.monotonic()
    result = await media.merge(request)
    whole = time.monotonic() - started

    assert result.media_duration_seconds == pytest.approx(4.0, abs=0.1)
    assert result.merge_pass_seconds > 0
    # Both delays happened outside the pass.
    assert result.merge_pass_seconds + 2 * DELAY <= whole


def _speed() -> tuple[float, float]:
    return metric("komorebi_processing_speed_ratio_sum"), metric(
        "komorebi_processing_speed_ratio_count"
    )


async def test_a_job_observes_the_speed_of_its_merge_pass(
    world: AwsEnv,
    clients: AwsClients,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    slow_steps: None,
) -> None:
    settings = settings_for(world, tmp_path)
    deps = JobDeps(
        settings=settings,
        table=RecordingTable(clients.dynamodb, settings.table_name),
        store=ObjectStore(clients.s3),
        worker_id="speed-test",
    )
    merged: list[media.MergeResult] = []
    real_merge = job_module.media.merge

    async def capture(request: media.MergeRequest, **kwargs: Any) -> media.MergeResult:
        result = await real_merge(request, **kwargs)
        merged.append(result)
        return result

    monkeypatch.setattr(job_module.media, "merge", capture)
    contact = seed_contact(world)
    before_sum, before_count = _speed()
    started = time.monotonic()
    result = await process_job(
        JobMessage(contact.recording_id, 5.0), deps, scratch=deps.settings.scratch_dir
    )
    whole = time.monotonic() - started
    after_sum, after_count = _speed()

    assert not result.duplicate
    [done] = merged
    assert after_count == before_count + 1
    observed = after_sum - before_sum
    assert observed == pytest.approx(done.media_duration_seconds / done.merge_pass_seconds)
    # The delays are not in the ratio's denominator (the whole stage's time would be).
    assert done.merge_pass_seconds + 2 * DELAY <= whole
