"""Settings: every knob the worker reads, defined once, validated at start-up (SPEC §3).

AWS endpoint, region and credentials come from the SDK's standard variables
(``AWS_REGION``, ``AWS_ENDPOINT_URL``, the credentials chain); nothing here duplicates them.
"""

from __future__ import annotations

import os
import string
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from worker.errors import SettingsError
from worker.limits import (
    FFMPEG_TIMEOUT_BASE_SECONDS,
    FFMPEG_TIMEOUT_PER_MEDIA_SECOND,
    SHUTDOWN,
)
from worker.limits import SQS_MAX_VISIBILITY_SECONDS as SQS_MAX_VISIBILITY_SECONDS

AlignMode = Literal["auto", "end", "start"]
LogFormat = Literal["json", "console"]

DEFAULT_METRICS_PORT = 9657
DEFAULT_TABLE_NAME = "Recording"
# VISIBILITY_TIMEOUT's default; provisioning creates the queue with the same.
DEFAULT_VISIBILITY_TIMEOUT = 300

DEFAULT_CONNECT_AUDIO_PREFIX = "connect/{instance}/CallRecordings/{yyyy}/{mm}/{dd}/{recording_id}"
DEFAULT_INPUT_KEY = "{yyyy}/{mm}/{dd}/{agent_id}/{recording_id}.mp4"
DEFAULT_OUTPUT_KEY = "{yyyy}/{mm}/{dd}/{agent_id}/{recording_id}/recording.{ext}"
DEFAULT_THUMBNAIL_KEY = "{yyyy}/{mm}/{dd}/{agent_id}/{recording_id}/thumbnail.png"


@dataclass(frozen=True)
class AudioSettings:
    """Output audio format (SPEC §5: speech-appropriate by default)."""

    channels: int = 1
    sample_rate: int = 16000
    bitrate: str = "48k"


@dataclass(frozen=True)
class KeyTemplates:
    """S3 key layout (SPEC §5). Placeholders: yyyy mm dd agent_id recording_id instance ext."""

    connect_audio_prefix: str = DEFAULT_CONNECT_AUDIO_PREFIX
    input_key: str = DEFAULT_INPUT_KEY
    output_key: str = DEFAULT_OUTPUT_KEY
    thumbnail_key: str = DEFAULT_THUMBNAIL_KEY


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one worker process."""

    ac_audio_bucket: str
    input_bucket: str
    output_bucket: str
    connect_instance_alias: str
    queue_url: str | None = None
    dlq_url: str | None = None
    table_name: str = DEFAULT_TABLE_NAME
    worker_concurrency: int = field(default_factory=lambda: available_cpus())
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    shutdown_grace_seconds: float = 100.0
    metrics_port: int = DEFAULT_METRICS_PORT
    # All interfaces by default: Prometheus (or the ADOT sidecar) scrapes from outside.
    metrics_host: str = "0.0.0.0"  # noqa: S104
    scratch_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    align: AlignMode = "auto"
    # EBU R128 target (LUFS) both segments are brought to; None: levels left as they are.
    loudness_target: float | None = None
    audio: AudioSettings = field(default_factory=AudioSettings)
    keys: KeyTemplates = field(default_factory=KeyTemplates)
    retry_backoff_base_seconds: float = 15.0
    retry_backoff_max_seconds: float = 900.0
    protection_minutes: int = 60
    # How often a task on ECS checks that it still belongs to the service's current
    # deployment (worker.deployment); a superseded task drains and exits.
    deployment_check_seconds: float = 60.0
    ffmpeg_timeout_base_seconds: float = FFMPEG_TIMEOUT_BASE_SECONDS
    ffmpeg_timeout_per_media_second: float = FFMPEG_TIMEOUT_PER_MEDIA_SECOND
    scratch_max_bytes: int | None = None
    s3_part_size_bytes: int = 16 * 1024 * 1024
    s3_max_concurrency: int = 8
    aws_max_attempts: int = 5

    @property
    def heartbeat_interval(self) -> float:
        """How often a running job's message visibility is extended (SPEC §6)."""
        return self.visibility_timeout / 3

    @property
    def lease_seconds(self) -> int:
        """How long a lease lives without renewal: two missed heartbeats and it lapses."""
        return self.visibility_timeout

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, require_queue: bool = False
    ) -> Settings:
        """Read and validate settings from environment variables.

        Raises :class:`SettingsError` listing every problem, not just the first.
        """
        return _parse(os.environ if environ is None else environ, require_queue=require_queue)


def available_cpus() -> int:
    """CPUs this process may use (respects affinity / container limits where visible)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


# --- parsing ---------------------------------------------------------------------------------

_REQUIRED = {
    "AC_AUDIO_BUCKET_NAME": "ac_audio_bucket",
    "INPUT_BUCKET_NAME": "input_bucket",
    "OUTPUT_BUCKET_NAME": "output_bucket",
    "CONNECT_INSTANCE_ALIAS": "connect_instance_alias",
}


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number >= 0")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port (1-65535)")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def parse_bitrate(raw: str) -> str:
    """``AUDIO_BITRATE`` / ``--audio-bitrate``: ``48k`` or ``48000``."""
    value = raw.strip().lower()
    number = value[:-1] if value.endswith("k") else value
    if not number.isdigit() or int(number) <= 0:
        raise ValueError("must look like 48k or 48000")
    return value


def parse_channels(raw: str) -> int:
    """``AUDIO_CHANNELS`` / ``--audio-channels``: 1 or 2."""
    value = int(raw)
    if value not in (1, 2):
        raise ValueError("must be 1 (mono) or 2 (stereo: customer left, agent right)")
    return value


def parse_sample_rate(raw: str) -> int:
    """``AUDIO_SAMPLE_RATE`` / ``--audio-sample-rate``: a rate both AAC and Opus accept."""
    value = int(raw)
    # Rates both AAC and Opus accept; Opus only takes these.
    if value not in (8000, 12000, 16000, 24000, 48000):
        raise ValueError("must be 8000, 12000, 16000, 24000 or 48000")
    return value


# Integrated loudness targets that make sense for speech (EBU R128 is -23, podcasts -16).
LOUDNESS_TARGET_RANGE = (-40.0, -5.0)


def parse_loudness_target(raw: str) -> float | None:
    """``LOUDNESS_TARGET``: off (None) or a target in LUFS within LOUDNESS_TARGET_RANGE."""
    value = raw.strip().lower().removesuffix("lufs").strip()
    if value in ("off", "none", "false"):
        return None
    low, high = LOUDNESS_TARGET_RANGE
    problem = f"must be off or a loudness in LUFS from {low:g} to {high:g} (e.g. -18)"
    try:
        number = float(value)
    except ValueError:
        raise ValueError(problem) from None
    if not low <= number <= high:
        raise ValueError(problem)
    return number


TEMPLATE_PLACEHOLDERS = ("yyyy", "mm", "dd", "agent_id", "recording_id", "instance", "ext")


def _template(*required: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        missing = [name for name in required if "{" + name + "}" not in raw]
        if missing:
            raise ValueError(f"must contain {', '.join('{' + m + '}' for m in missing)}")
        # An unknown or malformed placeholder would only fail at job time (KeyError in
        # str.format): refuse it at start-up instead.
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(raw) if name is not None}
        except ValueError:
            raise ValueError("must be a valid template (unbalanced { or })") from None
        unknown = sorted(names - set(TEMPLATE_PLACEHOLDERS))
        if unknown:
            allowed = ", ".join("{" + n + "}" for n in TEMPLATE_PLACEHOLDERS)
            raise ValueError(f"must only use the placeholders {allowed}, not {{{unknown[0]}}}")
        return raw

    return parse


_OPTIONAL: dict[str, tuple[str, Callable[[str], Any]]] = {
    "QUEUE_URL": ("queue_url", str),
    "DLQ_URL": ("dlq_url", str),
    "RECORDING_TABLE_NAME": ("table_name", str),
    "WORKER_CONCURRENCY": ("worker_concurrency", _positive_int),
    "VISIBILITY_TIMEOUT": ("visibility_timeout", _positive_int),
    # 0 is valid: give every in-flight message back at once on SIGTERM.
    "SHUTDOWN_GRACE_SECONDS": ("shutdown_grace_seconds", _non_negative_float),
    "METRICS_PORT": ("metrics_port", _port),
    "METRICS_HOST": ("metrics_host", str),
    "SCRATCH_DIR": ("scratch_dir", Path),
    "LOG_LEVEL": ("log_level", _log_level),
    "LOG_FORMAT": ("log_format", _choice("json", "console")),
    "ALIGN_MODE": ("align", _choice("auto", "end", "start")),
    "LOUDNESS_TARGET": ("loudness_target", parse_loudness_target),
    "RETRY_BACKOFF_BASE_SECONDS": ("retry_backoff_base_seconds", _positive_float),
    "RETRY_BACKOFF_MAX_SECONDS": ("retry_backoff_max_seconds", _positive_float),
    "TASK_PROTECTION_MINUTES": ("protection_minutes", _positive_int),
    "DEPLOYMENT_CHECK_SECONDS": ("deployment_check_seconds", _positive_float),
    "FFMPEG_TIMEOUT_BASE_SECONDS": ("ffmpeg_timeout_base_seconds", _positive_float),
    "FFMPEG_TIMEOUT_PER_MEDIA_SECOND": ("ffmpeg_timeout_per_media_second", _positive_float),
    "SCRATCH_MAX_BYTES": ("scratch_max_bytes", _positive_int),
    "S3_PART_SIZE_BYTES": ("s3_part_size_bytes", _positive_int),
    "S3_MAX_CONCURRENCY": ("s3_max_concurrency", _positive_int),
    "AWS_MAX_ATTEMPTS": ("aws_max_attempts", _positive_int),
}

_AUDIO: dict[str, tuple[str, Callable[[str], Any]]] = {
    "AUDIO_CHANNELS": ("channels", parse_channels),
    "AUDIO_SAMPLE_RATE": ("sample_rate", parse_sample_rate),
    "AUDIO_BITRATE": ("bitrate", parse_bitrate),
}

_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "CONNECT_AUDIO_PREFIX_TEMPLATE": ("connect_audio_prefix", _template("recording_id")),
    "INPUT_KEY_TEMPLATE": ("input_key", _template("recording_id")),
    "OUTPUT_KEY_TEMPLATE": ("output_key", _template("recording_id", "ext")),
    "THUMBNAIL_KEY_TEMPLATE": ("thumbnail_key", _template("recording_id")),
}


def _collect(
    environ: Mapping[str, str],
    spec: dict[str, tuple[str, Callable[[str], Any]]],
    problems: list[str],
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for variable, (attribute, parse) in spec.items():
        raw = environ.get(variable)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[attribute] = parse(raw.strip())
        except ValueError as error:
            detail = str(error) if "must" in str(error) else "has the wrong type"
            problems.append(f"{variable}={raw!r}: {detail}")
    return values


def _parse(environ: Mapping[str, str], *, require_queue: bool) -> Settings:
    problems: list[str] = []
    values: dict[str, Any] = {}
    for variable, attribute in _REQUIRED.items():
        raw = (environ.get(variable) or "").strip()
        if raw:
            values[attribute] = raw
        else:
            problems.append(f"{variable} is required but not set")
    values.update(_collect(environ, _OPTIONAL, problems))
    audio = _collect(environ, _AUDIO, problems)
    keys = _collect(environ, _KEYS, problems)
    if require_queue and not values.get("queue_url"):
        problems.append("QUEUE_URL is required but not set")
    if environ.get("LOG_FORMAT") is None and not _stderr_is_tty():
        values.setdefault("log_format", "json")
    elif environ.get("LOG_FORMAT") is None:
        values.setdefault("log_format", "console")

    # Cross-field rules see the value in force: the variable's, else the Settings default.
    def in_force(attribute: str) -> Any:
        return values.get(attribute, _DEFAULTS[attribute])

    visibility = in_force("visibility_timeout")
    if visibility > SQS_MAX_VISIBILITY_SECONDS:
        problems.append(
            f"VISIBILITY_TIMEOUT={visibility}: must be at most {SQS_MAX_VISIBILITY_SECONDS} "
            "(SQS limit)"
        )
    grace = in_force("shutdown_grace_seconds")
    if grace > SHUTDOWN.max_grace():
        problems.append(
            f"SHUTDOWN_GRACE_SECONDS={grace:g}: must be at most {SHUTDOWN.max_grace():g} "
            f"(the grace plus the shutdown's clean-ups must fit Fargate's "
            f"{SHUTDOWN.stop_timeout:g} s stop timeout)"
        )
    if in_force("retry_backoff_base_seconds") > in_force("retry_backoff_max_seconds"):
        problems.append("RETRY_BACKOFF_BASE_SECONDS must not exceed RETRY_BACKOFF_MAX_SECONDS")
    scratch = values.get("scratch_dir")
    if scratch is not None and not Path(scratch).is_dir():
        problems.append(f"SCRATCH_DIR={str(scratch)!r}: not an existing directory")
    if problems:
        raise SettingsError(problems)
    known = {f.name for f in fields(Settings)}
    return Settings(
        **{k: v for k, v in values.items() if k in known},
        audio=AudioSettings(**audio),
        keys=KeyTemplates(**keys),
    )


# Each plain field's default, read from Settings itself (the one place it is written).
_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(Settings) if f.default is not MISSING
}


def _stderr_is_tty() -> bool:
    try:
        return os.isatty(2)
    except OSError:
        return False
