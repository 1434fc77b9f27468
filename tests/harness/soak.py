"""Soak: several worker processes on one queue, transient faults, SIGKILLs, a SIGTERM mid-job.

    python -m tests.harness.soak --messages 300          # `make soak`
    python -m tests.harness.soak --messages 40 --workers 2 --kills 1 --no-sigterm

What it does:

1. starts a moto server and a fault proxy (:mod:`tests.harness.faultproxy`) in front of it;
2. provisions a world like production (queue with redrive maxReceiveCount 8, DLQ, buckets,
   table) and sets the queue's visibility timeout to the workers' ``VISIBILITY_TIMEOUT`` (so a
   SIGKILLed worker's messages come back after it, as its leases expire);
3. seeds ``--messages`` jobs: valid short recordings (a few tiny files reused under many
   recording IDs, MP4 and WebM) and ~5 % poison (invalid body, missing row, row without
   agentID, an image and an HLS playlist as recordings);
4. runs ``--workers`` ``komorebi-worker run`` processes through the proxy; every
   ``--kill-every`` seconds (8) a random one is SIGKILLed and restarted until ``--min-kills``
   (10) kills (idle ones too once the work is done), then every ``--kill-every-later`` (20);
   once, one is SIGTERMed while it has a job in flight (it must exit 0) and restarted;
5. when everything has settled, stops the workers and checks: every valid recording DONE with
   an output that holds what it must (every decoded frame of its recording, the call's tones
   before the call end, the recording's own tone after it:
   :func:`tests.harness.media_tools.unified_output_problems`), every poison message in the
   DLQ with its reason, no message in flight, no lease left; counts duplicates (from the
   workers' logs), faults injected, kills, elapsed time.

Prints a report (and ``--json`` writes it); exits 1 if any check failed. :func:`run_soak` is
what ``tests/e2e/test_soak_small.py`` calls.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moto.server import ThreadedMotoServer

from tests.harness import hostile_support as hs
from tests.harness.faultproxy import FaultPlan, FaultProxy
from tests.harness.fixtures_aws import provision_world
from tests.harness.media_tools import unified_output_problems
from tests.harness.ports import free_port
from tests.harness.worker_harness import WorkerProcess, json_events, queue_depth

SOAK_FAULTS = FaultPlan(
    reset=0.03, delay=0.03, cut=0.01, drop=0.005, delay_seconds=0.3, drop_hold_seconds=3.0
)
POISON_KINDS = {
    # kind: expected DLQ errorReason
    "invalid_body": "invalid_message",
    "row_missing": "row_not_found",
    "no_agent": "invalid_row",
    "image": "media_not_allowed",
    "hls_playlist": "media_not_allowed",
}


@dataclass
class SoakConfig:
    """Knobs of one soak run."""

    messages: int = 300
    workers: int = 3
    poison_share: float = 0.05
    kill_every: float = 20.0
    kills: int | None = None  # stop killing after this many (None: keep going)
    min_kills: int = 0  # keep killing (idle workers too) until this many, then settle
    # After min_kills: kill this often (restarts cost the fleet throughput; a slower pace
    # lets the run settle on a loaded machine). None: keep kill_every.
    kill_every_later: float | None = None
    first_kill_after: float | None = None  # default: kill_every
    sigterm: bool = True
    faults: bool = True
    visibility: int = 15
    concurrency: int = 2
    grace: float = 10.0  # SHUTDOWN_GRACE_SECONDS: short makes the SIGTERM release jobs
    timeout: float = 1200.0
    seed: int = 1
    workdir: Path | None = None


@dataclass
class SoakReport:
    """The figures and the verdict."""

    messages: int = 0
    valid: int = 0
    poison: int = 0
    done: int = 0
    outputs_valid: int = 0
    lost: int = 0
    dlq: int = 0
    poison_in_dlq_with_reason: int = 0
    unexpected_dlq: int = 0
    in_flight_at_end: tuple[int, int] = (0, 0)
    leases_left: int = 0
    kills: int = 0
    sigterms: int = 0
    sigterm_exit_codes: list[int] = field(default_factory=list)
    final_exit_codes: list[int] = field(default_factory=list)
    unexpected_exits: int = 0
    duplicates_acknowledged: int = 0
    merged_more_than_once: int = 0
    released_on_shutdown: int = 0
    retries_by_reason: dict[str, int] = field(default_factory=dict)
    dlq_by_reason: dict[str, int] = field(default_factory=dict)
    faults: dict[str, Any] = field(default_factory=dict)
    elapsed_seconds: float = 0.0
    scratch_left_files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems


@dataclass(frozen=True)
class Recording:
    """A tiny valid recording (reused under many IDs) and the tone its audio carries."""

    path: Path
    tone: int


@dataclass(frozen=True)
class Job:
    """One seeded message."""

    recording_id: str
    body: str
    poison: str | None  # POISON_KINDS key
    recording: Recording | None = None  # valid jobs: what the output must hold
    call_end: float = 0.0


class _Slot:
    """One worker position: the current process and its incarnations' logs."""

    def __init__(self, index: int, base_env: dict[str, str], folder: Path) -> None:
        self.index = index
        self.base_env = base_env
        self.folder = folder
        self.scratch = folder / f"scratch-{index}"
        self.scratch.mkdir()
        self.incarnation = 0
        self.logs: list[Path] = []
        self.process: WorkerProcess | None = None

    def start(self) -> None:
        self.incarnation += 1
        log = self.folder / f"worker-{self.index}-{self.incarnation}.log"
        self.logs.append(log)
        env = {
            **self.base_env,
            "METRICS_PORT": str(free_port()),
            "METRICS_HOST": "127.0.0.1",
            "SCRATCH_DIR": str(self.scratch),
        }
        self.process = WorkerProcess(env, log)

    @property
    def worker(self) -> WorkerProcess:
        assert self.process is not None
        return self.process


def _media(folder: Path) -> dict[str, Recording]:
    """Tiny valid recordings (reused under many IDs), each with its own tone."""
    return {
        "mp4_2s": Recording(hs.make_recording(folder / "a.mp4", 2.0, 1000), 1000),
        "mp4_3s": Recording(hs.make_recording(folder / "b.mp4", 3.0, 1200), 1200),
        "webm_2s": Recording(hs.make_webm(folder / "c.webm", 2.0, 900), 900),
    }


def _seed(world: hs.World, config: SoakConfig, folder: Path) -> list[Job]:
    rng = random.Random(config.seed)
    media = _media(folder)
    connect = hs.make_connect_wav(folder / "connect.wav").read_bytes()  # the small contact's
    png = hs.make_png(folder / "i.png").read_bytes()
    poison_count = max(1, round(config.messages * config.poison_share))
    poison_at = set(rng.sample(range(config.messages), poison_count))
    kinds = list(POISON_KINDS)
    jobs: list[Job] = []
    for index in range(config.messages):
        rid = f"soak-{index:04d}"
        call_end = round(rng.uniform(0.3, 1.8), 3)
        body = json.dumps({"recordingID": rid, "callEndingTimestamp": call_end})
        if index in poison_at:
            kind = kinds[len([j for j in jobs if j.poison]) % len(kinds)]
            if kind == "invalid_body":
                body = json.dumps({"recordingID": rid + "/../x", "callEndingTimestamp": 1})
            if kind not in ("row_missing", "invalid_body"):
                world.put_row(rid, agent_id=None if kind == "no_agent" else hs.AGENT)
            data = png if kind == "image" else hs.hls_playlist("file:///etc/passwd")
            world.put_recording(rid, data)
            world.put_connect(rid, connect)
            jobs.append(Job(rid, body, kind))
            continue
        recording = media[rng.choice(sorted(media))]
        world.put_row(rid)
        world.put_recording(rid, recording.path.read_bytes())
        world.put_connect(rid, connect)
        jobs.append(Job(rid, body, None, recording, call_end))
    return jobs


def _settled(world: hs.World, jobs: list[Job]) -> bool:
    if queue_depth(world.aws) != (0, 0):
        return False
    poison = sum(1 for job in jobs if job.poison)
    if sum(queue_depth(world.aws, world.aws.dlq_url)) < poison:
        return False
    rows = world.rows()
    return all(
        rows.get(job.recording_id, {}).get("processingStatus") == "DONE"
        for job in jobs
        if not job.poison
    )


def _jobs_in_flight(worker: WorkerProcess) -> float:
    return hs.metric_value(worker.metrics(), "komorebi_jobs_in_flight")


def _sigterm_mid_job(slot: _Slot, report: SoakReport, say: Any) -> None:
    """SIGTERM the slot's worker while it has a job in flight; it must exit 0."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _jobs_in_flight(slot.worker) < 1:
        time.sleep(0.05)
    in_flight = _jobs_in_flight(slot.worker)
    slot.worker.signal(signal.SIGTERM)
    assert slot.worker.process is not None
    try:
        code = slot.worker.process.wait(60)
    except Exception:
        slot.worker.kill()
        code = -9
    report.sigterms += 1
    report.sigterm_exit_codes.append(code)
    say(f"SIGTERM worker {slot.index} with {in_flight:.0f} job(s) in flight: exit {code}")
    if code != 0:
        report.problems.append(f"worker {slot.index} exited {code} after SIGTERM (expected 0)")
    slot.start()


def _probe_output(world: hs.World, job: Job, key: str, folder: Path) -> str | None:
    """What is wrong with a valid job's output, by what it holds (None: nothing)."""
    assert job.recording is not None
    local = folder / f"{job.recording_id}{Path(key).suffix}"
    try:
        world.download_output(key, local)
        problems = unified_output_problems(
            local,
            job.recording.path,
            call_end=job.call_end,
            connect_seconds=hs.SMALL_CONNECT_SECONDS,
            connect_tones=hs.SMALL_CONNECT_TONES,
            recording_tone=job.recording.tone,
        )
    except Exception as error:
        return f"{job.recording_id}: output unreadable: {type(error).__name__}: {error}"[:300]
    finally:
        local.unlink(missing_ok=True)
    if problems:
        return f"{job.recording_id}: output does not hold its call: {problems[:3]}"
    return None


def _verify(world: hs.World, jobs: list[Job], slots: list[_Slot], report: SoakReport,
            folder: Path) -> None:  # fmt: skip
    rows = world.rows()
    dlq = {message["Body"]: message for message in world.drain_dlq()}
    report.dlq = len(dlq)
    report.in_flight_at_end = queue_depth(world.aws)
    if report.in_flight_at_end != (0, 0):
        report.problems.append(f"queue not empty at the end: {report.in_flight_at_end}")
    report.leases_left = sum(1 for row in rows.values() if row.get("leaseOwner"))
    if report.leases_left:
        report.problems.append(f"{report.leases_left} lease(s) left in the table")
    reasons: Counter[str] = Counter()
    to_probe: list[tuple[Job, str]] = []
    for job in jobs:
        if job.poison:
            message = dlq.pop(job.body, None)
            if message is None:
                report.problems.append(f"poison {job.recording_id} ({job.poison}) not in the DLQ")
                continue
            reason = message.get("MessageAttributes", {}).get("errorReason", {}).get("StringValue")
            reasons[str(reason)] += 1
            if reason == POISON_KINDS[job.poison]:
                report.poison_in_dlq_with_reason += 1
            else:
                report.problems.append(
                    f"poison {job.recording_id} ({job.poison}): DLQ reason {reason!r}, "
                    f"expected {POISON_KINDS[job.poison]!r}"
                )
            continue
        row = rows.get(job.recording_id, {})
        if row.get("processingStatus") != "DONE" or row.get("isProcessed") is not True:
            report.lost += 1
            report.problems.append(f"{job.recording_id} not DONE: {row.get('processingStatus')}")
            continue
        report.done += 1
        to_probe.append((job, str(row["videoKey"])))
    report.dlq_by_reason = dict(reasons)
    report.unexpected_dlq = len(dlq)
    if dlq:
        report.problems.append(f"{len(dlq)} unexpected DLQ message(s): {list(dlq)[:3]}")
    probe_dir = folder / "probe"
    probe_dir.mkdir(exist_ok=True)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda item: _probe_output(world, *item, probe_dir), to_probe))
    report.outputs_valid = sum(result is None for result in results)
    report.problems += [result for result in results if result]
    # Duplicates and outcomes, from every incarnation's log.
    succeeded: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    for slot in slots:
        for log in slot.logs:
            for event in json_events(log.read_text(errors="replace"), other_lines=True):
                name = event.get("event")
                if name == "job.duplicate":
                    report.duplicates_acknowledged += 1
                elif name == "job.succeeded":
                    succeeded[str(event.get("recording_id"))] += 1
                elif name == "job.released":
                    report.released_on_shutdown += 1
                elif name == "job.retry":
                    retries[str(event.get("reason"))] += 1
                text = json.dumps(event)
                if hs.leaks(text, urls=False):
                    report.problems.append(f"log leak in {log.name}: {hs.leaks(text, urls=False)}")
    report.merged_more_than_once = sum(1 for n in succeeded.values() if n > 1)
    report.retries_by_reason = dict(retries)
    report.scratch_left_files = sum(
        1 for slot in slots for path in slot.scratch.rglob("*") if path.is_file()
    )


def run_soak(config: SoakConfig, say: Any = print) -> SoakReport:
    """Run one soak (see the module docstring) and return its report."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    report = SoakReport(messages=config.messages)
    folder = Path(config.workdir or tempfile.mkdtemp(prefix="komorebi-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    proxy = FaultProxy(endpoint, FaultPlan(), seed=config.seed).start()
    slots: list[_Slot] = []
    rng = random.Random(config.seed + 1)
    try:
        world = hs.World(provision_world(endpoint))
        world.set_queue_visibility(config.visibility)
        jobs = _seed(world, config, folder)
        report.valid = sum(1 for job in jobs if not job.poison)
        report.poison = len(jobs) - report.valid
        say(f"seeded {len(jobs)} messages ({report.poison} poison) in {folder}")
        base_env = hs.hostile_env(
            world.aws,
            folder,
            AWS_ENDPOINT_URL=proxy.endpoint,
            WORKER_CONCURRENCY=str(config.concurrency),
            VISIBILITY_TIMEOUT=str(config.visibility),
            SHUTDOWN_GRACE_SECONDS=str(config.grace),
            RETRY_BACKOFF_BASE_SECONDS="2",
            RETRY_BACKOFF_MAX_SECONDS="10",
            AWS_MAX_ATTEMPTS="6",
            FFMPEG_TIMEOUT_BASE_SECONDS="60",
        )
        slots = [_Slot(i, base_env, folder) for i in range(config.workers)]
        for slot in slots:
            slot.start()
        if config.faults:
            proxy.set_plan(SOAK_FAULTS)
        started = time.monotonic()
        world.send_batch(job.body for job in jobs)
        next_kill = started + (config.first_kill_after or config.kill_every)
        sigterm_at = started + (config.first_kill_after or config.kill_every) * 1.5
        sigterm_done = not config.sigterm
        last_check = 0.0
        while True:
            now = time.monotonic()
            if now - started > config.timeout:
                report.problems.append(f"not settled after {config.timeout:.0f} s")
                break
            for slot in slots:
                if not slot.worker.alive():
                    code = slot.worker.process.poll() if slot.worker.process else None
                    report.unexpected_exits += 1
                    report.problems.append(f"worker {slot.index} exited by itself ({code})")
                    slot.start()
            killing = config.kills is None or report.kills < config.kills
            if killing and now >= next_kill:
                # Prefer a worker with a job in flight (a kill mid-job is the interesting one);
                # after 5 s of idle workers, kill one anyway.
                order = rng.sample(slots, len(slots))
                busy = [(slot, _jobs_in_flight(slot.worker)) for slot in order]
                slot, in_flight = next(((s, n) for s, n in busy if n >= 1), busy[0])
                if in_flight < 1 and now < next_kill + 5:
                    time.sleep(0.1)
                    continue
                slot.worker.kill()
                report.kills += 1
                say(
                    f"{now - started:6.1f}s SIGKILL worker {slot.index} "
                    f"({in_flight:.0f} job(s) in flight); restarting"
                )
                slot.start()
                later = report.kills >= config.min_kills and config.kill_every_later
                next_kill = now + (config.kill_every_later if later else config.kill_every)
            if not sigterm_done and now >= sigterm_at:
                _sigterm_mid_job(rng.choice(slots), report, say)
                sigterm_done = True
            if now - last_check >= 2.0:
                last_check = now
                kills_done = report.kills >= config.min_kills and (
                    config.kills is None or report.kills >= config.kills
                )
                if kills_done and sigterm_done and _settled(world, jobs):
                    break
            time.sleep(0.2)
        report.elapsed_seconds = round(time.monotonic() - started, 1)
        proxy.set_plan(FaultPlan())
        # An idle worker finishes its long poll (<= 20 s) before it exits (SPEC §6): 60 s.
        for slot in slots:
            report.final_exit_codes.append(slot.worker.stop(60))
        report.faults = proxy.summary()
        if report.kills < config.min_kills:
            report.problems.append(f"only {report.kills} SIGKILLs, expected >= {config.min_kills}")
        if [code for code in report.final_exit_codes if code != 0]:
            report.problems.append(f"final SIGTERM exit codes {report.final_exit_codes}")
        _verify(world, jobs, slots, report, folder)
    finally:
        for slot in slots:
            if slot.process is not None:
                slot.worker.kill()
        proxy.stop()
        server.stop()
        if config.workdir is None and report.ok:
            shutil.rmtree(folder, ignore_errors=True)
    return report


def format_report(report: SoakReport) -> str:
    """A human-readable summary."""
    faults = report.faults.get("faults", {})
    lines = [
        f"messages          {report.messages} ({report.valid} valid, {report.poison} poison)",
        f"done              {report.done} / {report.valid}, "
        f"outputs valid by content {report.outputs_valid}",
        f"lost              {report.lost}",
        f"DLQ               {report.dlq} ({report.poison_in_dlq_with_reason} poison with the "
        f"expected reason, {report.unexpected_dlq} unexpected) {report.dlq_by_reason}",
        f"in flight at end  visible {report.in_flight_at_end[0]}, not visible "
        f"{report.in_flight_at_end[1]}",
        f"leases left       {report.leases_left}",
        f"kills             {report.kills} SIGKILL, {report.sigterms} SIGTERM mid-job "
        f"(exit {report.sigterm_exit_codes})",
        f"duplicates        {report.duplicates_acknowledged} acknowledged without work, "
        f"{report.merged_more_than_once} recordings merged more than once",
        f"released (SIGTERM) {report.released_on_shutdown}; retries {report.retries_by_reason}",
        f"faults injected   {sum(faults.values())} {faults} "
        f"by service {report.faults.get('faults_by_service', {})}",
        f"requests proxied  {report.faults.get('requests', {})}",
        f"scratch files left {report.scratch_left_files} (from SIGKILLed jobs)",
        f"elapsed           {report.elapsed_seconds} s",
        f"verdict           {'OK' if report.ok else 'FAILED'}",
    ]
    lines += [f"  problem: {problem}" for problem in report.problems[:30]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m tests.harness.soak``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=8.0)
    parser.add_argument("--kills", type=int, default=None, help="stop after N SIGKILLs")
    parser.add_argument(
        "--min-kills", type=int, default=10, help="keep killing until at least N SIGKILLs"
    )
    parser.add_argument(
        "--kill-every-later", type=float, default=20.0, help="kill interval after --min-kills"
    )
    parser.add_argument("--no-sigterm", action="store_true")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--visibility", type=int, default=15)
    parser.add_argument("--grace", type=float, default=10.0, help="SHUTDOWN_GRACE_SECONDS")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    args = parser.parse_args(argv)
    config = SoakConfig(
        messages=args.messages,
        workers=args.workers,
        kill_every=args.kill_every,
        kills=args.kills,
        min_kills=args.min_kills,
        kill_every_later=args.kill_every_later,
        sigterm=not args.no_sigterm,
        faults=not args.no_faults,
        visibility=args.visibility,
        grace=args.grace,
        seed=args.seed,
        timeout=args.timeout,
        workdir=args.workdir,
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    report = run_soak(config, say=lambda text: print(text, flush=True))
    print(format_report(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
