"""``komorebi-worker dev --once``: the whole pipeline on the embedded emulator, as a user runs
it, checked by the content of what it writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.media_tools import band_share, decode_pcm, ffprobe_json, framemd5, rms, window
from worker.devenv import DEMO_CALL_END_SECONDS, SAMPLE_RECORDING, sample_path, use_emulator

SCRIPT = Path(sys.executable).with_name("komorebi-worker")
RATE = 16000


@pytest.fixture(scope="module")
def dev_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    output_dir = tmp_path_factory.mktemp("dev") / "out"
    # dev must not need, nor use, the caller's AWS configuration (here: a profile that does
    # not exist and a service endpoint nobody listens on).
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LOG_FORMAT": "json",
        "AWS_PROFILE": "does-not-exist",
        "AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:9",
    }
    result = subprocess.run(
        [str(SCRIPT), "dev", "--once", "--output-dir", str(output_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return result, output_dir


def test_dev_once_prints_where_the_recording_is(
    dev_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, output_dir = dev_run
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    printed = re.search(r"recording: (\S+)", result.stdout)
    assert printed, result.stdout
    recording = Path(printed.group(1))
    assert recording == (output_dir / "recording.webm").resolve()
    assert recording.stat().st_size > 10_000
    # The row's final attributes are printed; the backend's own attribute is untouched.
    assert "isProcessed = true" in result.stdout
    assert 'processingStatus = "DONE"' in result.stdout
    assert 'title = "Demo contact (komorebi-worker dev)"' in result.stdout


def test_dev_output_is_the_merged_recording(
    dev_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, output_dir = dev_run
    assert result.returncode == 0, result.stderr[-3000:]
    recording = output_dir / "recording.webm"
    info = ffprobe_json(recording)
    streams = info["streams"]
    assert isinstance(streams, list)
    codecs = {s["codec_type"]: s["codec_name"] for s in streams}
    assert codecs == {"video": "vp8", "audio": "opus"}
    fmt = info["format"]
    assert isinstance(fmt, dict)
    assert abs(float(fmt["duration"]) - 8.0) < 0.3
    # Video stream-copied: the decoded frames are the sample's frames.
    assert framemd5(recording) == framemd5(sample_path(SAMPLE_RECORDING))
    # Audio: the 5 s Connect call (440 Hz + 660 Hz) ends at callEnd = 6 s, so it starts at 1 s;
    # after the call end, the recording's own 1000 Hz tone.
    pcm = decode_pcm(recording, rate=RATE)
    # Before the call audio starts (1 s): silence, not the recording's microphone.
    assert rms(window(pcm, RATE, 0.1, 0.8)) < 0.01
    call = window(pcm, RATE, 1.5, DEMO_CALL_END_SECONDS - 0.5)
    assert band_share(call, RATE, 440) + band_share(call, RATE, 660) > 0.6
    assert band_share(call, RATE, 1000) < 0.1
    after = window(pcm, RATE, DEMO_CALL_END_SECONDS + 0.3, 7.7)
    assert band_share(after, RATE, 1000) > 0.6
    assert band_share(after, RATE, 440) + band_share(after, RATE, 660) < 0.1


def test_dev_thumbnail_is_a_png_of_the_video(
    dev_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, output_dir = dev_run
    assert result.returncode == 0, result.stderr[-3000:]
    thumbnail = output_dir / "thumbnail.png"
    assert thumbnail.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    streams = ffprobe_json(thumbnail)["streams"]
    assert isinstance(streams, list)
    assert (streams[0]["codec_name"], streams[0]["width"], streams[0]["height"]) == (
        "png",
        640,
        360,
    )
    assert f"thumbnail: {thumbnail.resolve()}" in result.stdout


def test_use_emulator_leaves_no_way_to_real_aws() -> None:
    env = {
        "AWS_PROFILE": "production",
        "AWS_SESSION_TOKEN": "token",
        "AWS_ENDPOINT_URL_S3": "https://s3.example.com",
        "AWS_ACCESS_KEY_ID": "AKIAREAL",
        "AWS_REGION": "eu-west-1",
        "HOME": "/root",
    }
    use_emulator("http://127.0.0.1:5999", env)
    assert env == {
        "HOME": "/root",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5999",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


BLOCK_MOTO = '''
import sys


class _NoMoto:
    """As in the production image: moto (a development dependency) is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "moto" or name.startswith("moto."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoMoto())
'''


def test_dev_without_the_emulator_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCK_MOTO)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(tmp_path)}
    probe = subprocess.run(
        [sys.executable, "-c", "import moto"], env=env, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "No module named 'moto'" in probe.stderr  # blocked
    result = subprocess.run(
        [str(SCRIPT), "dev", "--once", "--output-dir", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("komorebi-worker: dev needs the development install")
