"""worker.config: settings from the environment, validated at start-up (SPEC §3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker import config
from worker.config import AudioSettings, KeyTemplates, Settings, SettingsError
from worker.errors import ConfigError

REQUIRED = {
    "AC_AUDIO_BUCKET_NAME": "connect-audio",
    "INPUT_BUCKET_NAME": "input",
    "OUTPUT_BUCKET_NAME": "output",
    "CONNECT_INSTANCE_ALIAS": "komorebi",
}


def settings(**extra: str) -> Settings:
    return Settings.from_env({**REQUIRED, **extra})


def problems(**extra: str) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        settings(**extra)
    assert isinstance(caught.value, ConfigError)
    return caught.value.problems


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_stderr_is_tty", lambda: False)
    s = settings()
    assert (s.ac_audio_bucket, s.input_bucket, s.output_bucket) == (
        "connect-audio",
        "input",
        "output",
    )
    assert s.connect_instance_alias == "komorebi"
    assert s.table_name == "Recording"
    assert s.visibility_timeout == 300
    assert s.heartbeat_interval == pytest.approx(100.0)
    assert s.shutdown_grace_seconds == 100.0
    assert s.worker_concurrency == config.available_cpus() >= 1
    assert s.metrics_port == config.DEFAULT_METRICS_PORT
    assert s.metrics_port not in (80, 443, 8080, 9090)  # not a well-known port
    assert s.scratch_dir.is_dir()
    assert (s.log_level, s.log_format) == ("INFO", "json")
    assert s.align == "auto"  # issue 13: the call end measured from the audio
    assert s.loudness_target is None  # levels untouched unless asked
    assert s.audio == AudioSettings(channels=1, sample_rate=16000, bitrate="48k")
    assert s.keys == KeyTemplates()
    assert s.queue_url is None and s.dlq_url is None


def test_console_logs_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_stderr_is_tty", lambda: True)
    assert settings().log_format == "console"
    assert settings(LOG_FORMAT="json").log_format == "json"


def test_everything_overridable(tmp_path: Path) -> None:
    s = settings(
        QUEUE_URL="http://q",
        DLQ_URL="http://dlq",
        RECORDING_TABLE_NAME="Rec2",
        WORKER_CONCURRENCY="3",
        VISIBILITY_TIMEOUT="90",
        SHUTDOWN_GRACE_SECONDS="30.5",
        METRICS_PORT="19657",
        SCRATCH_DIR=str(tmp_path),
        LOG_LEVEL="debug",
        LOG_FORMAT="Console",
        ALIGN_MODE="START",
        AUDIO_CHANNELS="2",
        AUDIO_SAMPLE_RATE="48000",
        AUDIO_BITRATE="64K",
        OUTPUT_KEY_TEMPLATE="out/{recording_id}.{ext}",
        FFMPEG_TIMEOUT_BASE_SECONDS="10",
        FFMPEG_TIMEOUT_PER_MEDIA_SECOND="0.5",
    )
    assert (s.queue_url, s.dlq_url, s.table_name) == ("http://q", "http://dlq", "Rec2")
    assert (s.worker_concurrency, s.visibility_timeout, s.heartbeat_interval) == (3, 90, 30)
    assert (s.shutdown_grace_seconds, s.metrics_port, s.scratch_dir) == (30.5, 19657, tmp_path)
    assert (s.log_level, s.log_format, s.align) == ("DEBUG", "console", "start")
    assert s.audio == AudioSettings(channels=2, sample_rate=48000, bitrate="64k")
    assert s.keys.output_key == "out/{recording_id}.{ext}"
    assert s.keys.input_key == config.DEFAULT_INPUT_KEY
    assert (s.ffmpeg_timeout_base_seconds, s.ffmpeg_timeout_per_media_second) == (10.0, 0.5)


def test_blank_values_mean_default() -> None:
    assert settings(WORKER_CONCURRENCY="  ", AUDIO_CHANNELS="").audio.channels == 1


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"WORKER_CONCURRENCY": "0", "METRICS_PORT": "70000"})
    text = caught.value.problems
    for variable in REQUIRED:
        assert f"{variable} is required but not set" in text
    assert any(p.startswith("WORKER_CONCURRENCY='0'") for p in text)
    assert any(p.startswith("METRICS_PORT='70000'") for p in text)
    assert all("\n" not in p for p in text)


def test_queue_required_for_run() -> None:
    with pytest.raises(SettingsError, match="QUEUE_URL is required"):
        Settings.from_env(REQUIRED, require_queue=True)
    assert Settings.from_env({**REQUIRED, "QUEUE_URL": "http://q"}, require_queue=True)


@pytest.mark.parametrize(
    ("value", "target"), [("-18", -18.0), ("-16 LUFS", -16.0), ("off", None), ("-23.5", -23.5)]
)
def test_loudness_target(value: str, target: float | None) -> None:
    assert Settings.from_env({**REQUIRED, "LOUDNESS_TARGET": value}).loudness_target == target


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("WORKER_CONCURRENCY", "-1", "positive integer"),
        ("WORKER_CONCURRENCY", "two", "wrong type"),
        ("VISIBILITY_TIMEOUT", "50000", "at most 43200"),
        ("SHUTDOWN_GRACE_SECONDS", "nan", "number >= 0"),
        ("SHUTDOWN_GRACE_SECONDS", "inf", "number >= 0"),
        ("SHUTDOWN_GRACE_SECONDS", "-1", "number >= 0"),
        ("METRICS_PORT", "0", "TCP port"),
        ("LOG_LEVEL", "loud", "DEBUG, INFO"),
        ("LOG_FORMAT", "xml", "json, console"),
        ("ALIGN_MODE", "middle", "auto, end, start"),
        ("LOUDNESS_TARGET", "loud", "off or a loudness in LUFS"),
        ("LOUDNESS_TARGET", "-3", "from -40 to -5"),
        ("LOUDNESS_TARGET", "-60", "from -40 to -5"),
        ("AUDIO_CHANNELS", "6", "1 (mono) or 2"),
        ("AUDIO_SAMPLE_RATE", "44100", "8000, 12000, 16000, 24000 or 48000"),
        ("AUDIO_BITRATE", "fast", "48k"),
        ("AUDIO_BITRATE", "0k", "48k"),
        ("SCRATCH_DIR", "/definitely/not/here", "not an existing directory"),
        ("OUTPUT_KEY_TEMPLATE", "out/{recording_id}.mp4", "{ext}"),
        ("INPUT_KEY_TEMPLATE", "in/x.mp4", "{recording_id}"),
        ("INPUT_KEY_TEMPLATE", "in/{agent}/{recording_id}.mp4", "not {agent}"),
        ("THUMBNAIL_KEY_TEMPLATE", "t/{recording_id}/{", "valid template"),
        ("RETRY_BACKOFF_BASE_SECONDS", "1000", "must not exceed"),
    ],
)
def test_invalid_values(variable: str, value: str, needle: str) -> None:
    found = problems(**{variable: value})
    assert len(found) == 1, found
    assert found[0].startswith(variable) or needle in found[0]
    assert needle in found[0]


def test_a_zero_shutdown_grace_is_accepted() -> None:
    # "Give everything back at once" on SIGTERM: a natural setting, not a mistake.
    assert settings(SHUTDOWN_GRACE_SECONDS="0").shutdown_grace_seconds == 0.0


def test_every_known_placeholder_is_accepted() -> None:
    template = "/".join("{" + name + "}" for name in config.TEMPLATE_PLACEHOLDERS)
    assert settings(OUTPUT_KEY_TEMPLATE=template).keys.output_key == template
