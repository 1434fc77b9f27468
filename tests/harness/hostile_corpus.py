"""The hostile-input corpus, run once per session through one real worker process.

Every case is a queue message (and, for media/connect/row cases, the row and objects it
needs). ``hostile_run`` seeds them all on a fresh emulator world, starts ONE
``komorebi-worker run`` process (fast retries, short redrive: maxReceiveCount 3), sends every
message, waits until each has reached its end state, then sends a valid "canary" job that must
still succeed, stops the worker with SIGTERM and collects: DLQ messages with their attributes,
rows, output keys, metrics and the worker's log. ``check_case`` asserts one case's outcome.

Outcomes:
- ``dlq``: permanent — in the DLQ at once with errorClass/errorReason/errorMessage attributes,
  the row FAILED (when it exists), no output;
- ``exhausted``: transient — retried with backoff, then dead-lettered by the worker itself on
  the last receive (reason ``retries_exhausted``, the transient reason as ``errorDetail``),
  the row FAILED;
- ``done``: processed — row DONE, the output checked by what it holds (every decoded frame of
  the recording, the call's tones before the call end, the recording's tone after it:
  :func:`tests.harness.hostile_support.small_contact_problems`), and its header's duration the
  real one (not the hours a hostile header claimed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import hostile_support as hs
from tests.harness.fixtures_aws import CONNECT_ALIAS, provision_world
from tests.harness.polling import wait_until
from tests.harness.worker_harness import WorkerProcess, json_events, queue_depth

MAX_RECEIVE_COUNT = 3
RECORDING_SECONDS = hs.SMALL_RECORDING_SECONDS
OLD_CONNECT_TONE = 300  # an older Connect recording of the same contact: must not be used
# What a ``done`` case's output must hold the frames of: the valid file its recording is (or
# was derived from), by the media key.
REFERENCES = {"valid_mp4": "rec.mp4", "hours_mp4": "rec.mp4", "hours_webm": "rec.webm"}


@dataclass(frozen=True)
class Case:
    """One hostile input and what must come of it."""

    name: str
    kind: str  # message | media | connect | row
    outcome: str  # dlq | exhausted | done
    reasons: tuple[str, ...] = ()
    raw_body: str | None = None  # message cases: the body as sent
    call_end: object = "00:00:01"
    row: str = "ok"  # ok | none | no_agent | bad_date | bad_agent
    recording: str | None = "valid_mp4"  # key into the media table, None: no object
    connect: tuple[str, ...] = ("connect_wav",)  # media keys, oldest first
    expected_duration: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def recording_id(self) -> str | None:
        """The (valid) recording ID the case's message names, if any."""
        if self.raw_body is not None:
            return None
        return "hc-" + self.name.replace("_", "-")

    @property
    def body(self) -> str:
        """The SQS body."""
        if self.raw_body is not None:
            return self.raw_body
        return json.dumps(
            {"recordingID": self.recording_id, "callEndingTimestamp": self.call_end, **self.extra}
        )


def _msg(name: str, body: str, reason: str = "invalid_message") -> Case:
    return Case(name, "message", "dlq", (reason,), raw_body=body)


def _job(recording_id: object, call_end: object, **extra: object) -> str:
    return json.dumps({"recordingID": recording_id, "callEndingTimestamp": call_end, **extra})


_CANARY_ID = "hc-canary-after-hostile"


def _connect_key(recording_id: str, stamp: str = "_20261127T10:05") -> str:
    """A key in the Connect layout (the test instance, the rows' creation day)."""
    return f"connect/{CONNECT_ALIAS}/CallRecordings/{hs.day_path()}/{recording_id}{stamp}_UTC.wav"


def _foreign_key(name: str, key: str) -> Case:
    """A connectAudioKey that is not the case's own Connect recording (which is uploaded):
    dead-lettered at once as invalid_message, never merged."""
    return Case(name, "connect", "dlq", ("invalid_message",), extra={"connectAudioKey": key})


CASES: list[Case] = [
    # --- messages (SPEC §2) ---
    _msg("not_json", "this is not json {"),
    _msg("blank_body", "   "),
    _msg("json_array", '["hc-array", "00:00:01"]'),
    _msg("json_string", '"hc-string"'),
    _msg("json_null", "null"),
    _msg("deeply_nested", "[" * 50000 + "]" * 50000),
    _msg("id_number", _job(12345, "00:00:01")),
    _msg("id_null", _job(None, "00:00:01")),
    _msg("call_end_bool", _job("hc-bool", True)),
    _msg("call_end_object", _job("hc-object", {"h": 1})),
    _msg("missing_recording_id", json.dumps({"callEndingTimestamp": "00:00:01"})),
    _msg("missing_call_end", json.dumps({"recordingID": "hc-missing-end"})),
    _msg("empty_object", "{}"),
    _msg("negative_number", _job("hc-negative", -5)),
    _msg("negative_clock", _job("hc-negative-clock", "-00:00:05")),
    _msg("nan_literal", '{"recordingID": "hc-nan", "callEndingTimestamp": NaN}'),
    _msg("nan_string", _job("hc-nan-string", "NaN")),
    _msg("infinity_literal", '{"recordingID": "hc-inf", "callEndingTimestamp": Infinity}'),
    _msg("huge_number", _job("hc-huge", 1e30)),
    _msg("string_1e309", _job("hc-1e309", "1e309")),
    _msg("number_1e309", '{"recordingID": "hc-1e309n", "callEndingTimestamp": 1e309}'),
    _msg("bad_clock", _job("hc-bad-clock", "12:99:99")),
    _msg("id_slash", _job("a/b", "00:00:01")),
    _msg("id_dotdot", _job("..", "00:00:01")),
    _msg("id_traversal", _job("../../etc/passwd", "00:00:01")),
    _msg("id_star", _job("rec*", "00:00:01")),
    _msg("id_space", _job("rec 1", "00:00:01")),
    _msg("id_unicode", _job("récording-ü", "00:00:01")),
    _msg("id_129_chars", _job("a" * 129, "00:00:01")),
    _msg("id_empty", _job("", "00:00:01")),
    _msg("id_newline", _job("rec\nline", "00:00:01")),
    _msg("id_url", _job("http://127.0.0.1/x", "00:00:01")),
    _msg("connect_key_number", _job("hc-key-number", "00:00:01", connectAudioKey=5)),
    # Valid JSON ("\\ud800") that once escaped the handler (UnicodeEncodeError): the row
    # exists, so it must end FAILED too.
    Case(
        "connect_key_lone_surrogate",
        "message",
        "dlq",
        ("invalid_message",),
        extra={"connectAudioKey": "\ud800"},
    ),
    Case(
        "extra_fields_ignored",
        "message",
        "done",
        extra={"unknown": {"nested": [1, 2]}, "priority": "high", "x": None},
        expected_duration=RECORDING_SECONDS,
    ),
    Case("call_end_seconds_number", "message", "done", call_end=1, expected_duration=2.0),
    # --- recordings (SPEC §5: untrusted inputs) ---
    Case("zero_bytes", "media", "dlq", ("media_invalid",), recording="zero"),
    Case("truncated_mp4_no_moov", "media", "dlq", ("media_invalid",), recording="trunc_mp4"),
    Case("truncated_webm", "media", "dlq", ("media_invalid",), recording="trunc_webm"),
    Case(
        "truncated_fragmented_mp4",
        "media",
        "dlq",
        ("output_rejected", "media_invalid"),
        recording="trunc_frag",
    ),
    Case("png_image", "media", "dlq", ("media_not_allowed", "media_invalid"), recording="png"),
    Case("audio_only", "media", "dlq", ("media_no_video",), recording="audio_only"),
    Case("wav_renamed_mp4", "media", "dlq", ("media_no_video",), recording="wav"),
    Case("hls_file_passwd", "media", "dlq", ("media_not_allowed",), recording="hls_file"),
    Case("hls_http_local", "media", "dlq", ("media_not_allowed",), recording="hls_http"),
    Case("ffconcat_file_passwd", "media", "dlq", ("media_not_allowed",), recording="cc_file"),
    Case("ffconcat_http_local", "media", "dlq", ("media_not_allowed",), recording="cc_http"),
    Case("passwd_as_recording", "media", "dlq", ("media_invalid",), recording="passwd"),
    Case("header_claims_hours_mp4", "media", "done", recording="hours_mp4", expected_duration=2.0),
    Case(
        "header_claims_hours_webm", "media", "done", recording="hours_webm", expected_duration=2.0
    ),
    Case("recording_missing", "media", "dlq", ("recording_not_found",), recording=None),
    # --- Connect audio ---
    Case("connect_missing", "connect", "exhausted", ("connect_audio_not_ready",), connect=()),
    # A 0-byte object is treated as "not uploaded yet" (recordings.choose_connect_audio).
    Case("connect_empty", "connect", "exhausted", ("connect_audio_not_ready",), connect=("zero",)),
    Case(
        "connect_not_audio",
        "connect",
        "dlq",
        ("media_not_allowed", "media_invalid", "media_no_audio"),
        connect=("png",),
    ),
    Case(
        "connect_key_missing_object",
        "connect",
        "exhausted",
        ("connect_audio_not_ready",),
        connect=(),
        extra={"connectAudioKey": _connect_key("hc-connect-key-missing-object")},
    ),
    # --- connectAudioKey: recordings stay with their contact (issue 16) ---
    _foreign_key("connect_key_traversal", "../../../../etc/passwd"),
    # Another contact's call, the same day and instance: the object exists (the canary's).
    _foreign_key("connect_key_other_contact", _connect_key(_CANARY_ID)),
    _foreign_key(
        "connect_key_traversal_in_prefix",
        _connect_key("hc-connect-key-traversal-in-prefix", f"/../{_CANARY_ID}_20261127T10:05"),
    ),
    _foreign_key(
        "connect_key_other_instance",
        _connect_key("hc-connect-key-other-instance").replace(CONNECT_ALIAS, "other-instance"),
    ),
    _foreign_key(
        "connect_key_other_day",
        _connect_key("hc-connect-key-other-day").replace(hs.day_path(), "2026/11/25"),
    ),
    # A contact whose id merely starts with ours; an instance alias that starts with ours.
    _foreign_key("connect_key_id_lookalike", _connect_key("hc-connect-key-id-lookalike0")),
    _foreign_key(
        "connect_key_prefix_lookalike",
        _connect_key("hc-connect-key-prefix-lookalike").replace(
            CONNECT_ALIAS, CONNECT_ALIAS + "-x"
        ),
    ),
    Case("connect_video_only", "connect", "dlq", ("media_no_audio",), connect=("video_only",)),
    Case(
        "connect_several_newest",
        "connect",
        "done",
        connect=("connect_old", "connect_wav"),
        expected_duration=2.0,
    ),
    # --- rows (SPEC §4) ---
    Case("row_missing", "row", "dlq", ("row_not_found",), row="none"),
    Case("row_no_agent", "row", "dlq", ("invalid_row",), row="no_agent"),
    Case("row_bad_creation_date", "row", "dlq", ("invalid_row",), row="bad_date"),
    Case("row_agent_traversal", "row", "dlq", ("invalid_row",), row="bad_agent"),
]

CANARY = Case("canary_after_hostile", "message", "done", expected_duration=2.0)


def build_media(folder: Path, trap_port: int) -> dict[str, bytes]:
    """Every file the cases refer to, by name."""
    rec = hs.make_recording(folder / "rec.mp4").read_bytes()
    webm = hs.make_webm(folder / "rec.webm").read_bytes()
    url = f"http://127.0.0.1:{trap_port}/segment"
    return {
        "valid_mp4": rec,
        "connect_wav": hs.make_connect_wav(folder / "c.wav").read_bytes(),
        "connect_old": hs.make_connect_wav(
            folder / "old.wav", left=OLD_CONNECT_TONE, right=OLD_CONNECT_TONE
        ).read_bytes(),
        "zero": b"",
        "trunc_mp4": hs.truncate_before_moov(rec),
        "trunc_webm": (hs.FIXTURES / "chrome-vp8-opus-8s.webm").read_bytes()[:1500],
        "trunc_frag": (hs.FIXTURES / "chrome-avc1-opus-8s.mp4").read_bytes()[:20000],
        "png": hs.make_png(folder / "i.png").read_bytes(),
        "audio_only": hs.make_audio_only(folder / "a.m4a").read_bytes(),
        "video_only": hs.make_recording(folder / "v.mp4", 1.0, audio=False).read_bytes(),
        "wav": (hs.FIXTURES / "connect-8k-stereo-5s.wav").read_bytes(),
        "hls_file": hs.hls_playlist("file:///etc/passwd"),
        "hls_http": hs.hls_playlist(url),
        "cc_file": hs.ffconcat_script("file:///etc/passwd"),
        "cc_http": hs.ffconcat_script(url),
        "passwd": Path("/etc/passwd").read_bytes(),
        "hours_mp4": hs.claim_hours_mp4(rec),
        "hours_webm": hs.claim_hours_webm(webm),
    }


def seed(world: hs.World, case: Case, media: dict[str, bytes]) -> None:
    """Row and objects of one case (not the message)."""
    rid = case.recording_id
    if rid is None:
        return
    rows: dict[str, Callable[[], None]] = {
        "ok": lambda: world.put_row(rid),
        "none": lambda: None,
        "no_agent": lambda: world.put_row(rid, agent_id=None),
        "bad_date": lambda: world.put_row(rid, creation="27/11/2026 10h"),
        "bad_agent": lambda: world.put_row(rid, agent_id="../../etc"),
    }
    rows[case.row]()
    if case.recording is not None:
        world.put_recording(rid, media[case.recording])
    stamps = ["20261127T10:05", "20261127T09:59"]  # newest upload gets the older-looking key
    for index, name in enumerate(case.connect):
        if index:
            time.sleep(1.1)  # S3 LastModified has 1 s resolution
        world.put_connect(rid, media[name], stamp=stamps[index % 2])


@dataclass
class CorpusRun:
    """Everything the corpus run left behind, for the per-case checks."""

    world: hs.World
    message_ids: dict[str, str]
    dlq: dict[str, dict[str, Any]]  # by body
    rows: dict[str, dict[str, Any]]
    output_keys: list[str]
    log_path: Path
    events: list[dict[str, Any]]
    metrics: str
    exit_code: int
    trap_connections: int
    scratch_left: list[str]
    outputs_dir: Path
    media_dir: Path  # the valid recordings the hostile ones derive from (REFERENCES)
    healthy_at_end: bool
    canary_done: bool

    def events_for(self, case: Case) -> list[dict[str, Any]]:
        """Log events bound to the case's message or recording."""
        mid = self.message_ids.get(case.name)
        rid = case.recording_id
        return [
            event
            for event in self.events
            if (mid and event.get("message_id") == mid)
            or (rid and event.get("recording_id") == rid)
        ]


def _finished(world: hs.World, expected_dlq: int, done_ids: list[str]) -> bool:
    visible, in_flight = queue_depth(world.aws)
    dlq_visible, dlq_hidden = queue_depth(world.aws, world.aws.dlq_url)
    if visible or in_flight or dlq_visible + dlq_hidden < expected_dlq:
        return False
    rows = world.rows()
    return all(rows.get(rid, {}).get("processingStatus") == "DONE" for rid in done_ids)


@pytest.fixture(scope="session")
def hostile_run(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusRun]:
    """Run the whole corpus through one worker process (see module docstring)."""
    folder = tmp_path_factory.mktemp("hostile-corpus")
    scratch = folder / "scratch"
    scratch.mkdir()
    trap = hs.ListeningTrap()
    world = hs.World(provision_world(moto_server))
    world.set_max_receive_count(MAX_RECEIVE_COUNT)
    media = build_media(folder, trap.port)
    for case in [*CASES, CANARY]:
        seed(world, case, media)
    log_path = folder / "worker.log"
    worker = WorkerProcess(hs.hostile_env(world.aws, scratch), log_path)
    try:
        message_ids = {case.name: world.send(case.body) for case in CASES}
        expected_dlq = sum(case.outcome in ("dlq", "exhausted") for case in CASES)
        done_ids = [c.recording_id for c in CASES if c.outcome == "done" and c.recording_id]
        wait_until(
            lambda: not worker.alive() or _finished(world, expected_dlq, done_ids),
            timeout=150,
            what="every hostile case to reach its end state",
        )
        assert worker.alive(), "the worker died during the corpus:\n" + log_path.read_text()[-3000:]
        message_ids[CANARY.name] = world.send(CANARY.body)
        canary_done = True
        try:
            wait_until(
                lambda: (
                    world.rows().get(CANARY.recording_id or "", {}).get("processingStatus")
                    == "DONE"
                ),
                timeout=60,
                what="the canary job after the hostile ones",
            )
        except AssertionError:
            canary_done = False
        healthy = worker.healthy()
        metrics = worker.metrics()
    finally:
        exit_code = worker.stop()
        trap.close()
    outputs_dir = folder / "outputs"
    outputs_dir.mkdir()
    run = CorpusRun(
        world=world,
        message_ids=message_ids,
        dlq={message["Body"]: message for message in world.drain_dlq()},
        rows=world.rows(),
        output_keys=world.output_keys(),
        log_path=log_path,
        events=json_events(log_path.read_text(errors="replace"), other_lines=True),
        metrics=metrics,
        exit_code=exit_code,
        trap_connections=trap.connections,
        scratch_left=sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*")),
        outputs_dir=outputs_dir,
        media_dir=folder,
        healthy_at_end=healthy,
        canary_done=canary_done,
    )
    yield run


def _named_id(body: str) -> str | None:
    """The recordingID a body names, valid or not, if it is a string."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = data.get("recordingID") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _one_line_clean(text: str, what: str) -> None:
    assert text, f"{what} is empty"
    assert "\n" not in text and len(text) <= 500, f"{what} is not one short line: {text!r}"
    assert hs.leaks(text) == [], f"{what} leaks {hs.leaks(text)}: {text!r}"


def check_case(run: CorpusRun, case: Case) -> None:
    """Assert the end state of one case."""
    rid = case.recording_id
    row = run.rows.get(rid) if rid else None
    events = run.events_for(case)
    for event in events:
        assert hs.leaks(json.dumps(event)) == [], f"log event leaks: {event}"
    outputs = [key for key in run.output_keys if rid and f"/{rid}/" in key]
    if case.outcome in ("dlq", "exhausted"):
        assert case.body in run.dlq, f"{case.name}: not in the DLQ"
        message = run.dlq[case.body]
        attributes = {k: v.get("StringValue", "") for k, v in message.get(
            "MessageAttributes", {}).items()}  # fmt: skip
        assert not outputs, f"{case.name}: output written for a failed job: {outputs}"
        if case.outcome == "dlq":
            assert attributes.get("errorReason") in case.reasons, (case.name, attributes)
            assert attributes.get("errorClass"), attributes
            assert attributes.get("originalMessageId") == run.message_ids[case.name]
            _one_line_clean(attributes.get("errorMessage", ""), "errorMessage")
            if row is not None:
                assert row.get("processingStatus") == "FAILED", (case.name, row)
                _one_line_clean(str(row.get("processingError", "")), "processingError")
                assert not row.get("leaseOwner"), f"{case.name}: lease left on a FAILED row"
        else:
            # Dead-lettered by the worker on the last receive the redrive policy allows.
            assert attributes.get("errorReason") == "retries_exhausted", (case.name, attributes)
            assert attributes.get("errorDetail") in case.reasons, (case.name, attributes)
            assert attributes.get("receiveCount") == str(MAX_RECEIVE_COUNT), attributes
            assert attributes.get("originalMessageId") == run.message_ids[case.name]
            _one_line_clean(attributes.get("errorMessage", ""), "errorMessage")
            retried = [e for e in events if e.get("reason") in case.reasons]
            assert retried, f"{case.name}: no log event saying why it was retried"
            if row is not None:
                assert row.get("processingStatus") == "FAILED", (case.name, row)
                assert row.get("isProcessed") in (False, None)
                _one_line_clean(str(row.get("processingError", "")), "processingError")
                assert not row.get("leaseOwner"), f"{case.name}: lease left on a FAILED row"
        if case.row == "none" and rid:
            assert rid not in run.rows, f"{case.name}: a row was created for a missing recording"
        named = _named_id(case.body)
        if rid is None and named is not None:
            # No row may be created from an invalid message's fields (UpdateItem upserts).
            assert named not in run.rows, f"{case.name}: a row was created for {named!r}"
    else:
        assert row is not None and row.get("processingStatus") == "DONE", (case.name, row)
        assert row.get("isProcessed") is True
        assert not row.get("leaseOwner"), f"{case.name}: lease left on a DONE row"
        assert case.body not in run.dlq
        video_key = str(row["videoKey"])
        assert video_key in run.output_keys
        local = run.world.download_output(video_key, run.outputs_dir / f"{case.name}.bin")
        _check_output(run, case, local)


def _check_output(run: CorpusRun, case: Case, local: Path) -> None:
    """A ``done`` case's output: by content (frames and tones), its header's duration real,
    nothing of a local file or the credentials inside."""
    assert case.recording in REFERENCES and case.connect[-1] == "connect_wav", case
    # Before the call end: the newest Connect recording's tones, not the old one's
    # (connect_several_newest); after it, the recording's own tone.
    problems = hs.small_contact_problems(local, run.media_dir / REFERENCES[case.recording])
    assert problems == [], (case.name, problems)
    probed = hs.probe_file(local)
    assert case.expected_duration is not None
    assert abs(probed.duration - case.expected_duration) < 0.15, (case.name, probed)
    content = local.read_bytes()
    assert b"root:x:0:0" not in content and hs.SECRET_KEY.encode() not in content
