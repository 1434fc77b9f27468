"""Makes the real browser recordings of ``tests/data`` (``python -m tests.recorder``).

``recorder.html`` records a canvas (the agent's shared screen) and a WebAudio 1000 Hz tone
(the microphone) with ``MediaRecorder`` in headless Chromium or Firefox ESR, in the ways
agents' screens really behave (see :data:`RECORDINGS`), and POSTs the blob to a local server.
The tests use the committed files; this only regenerates them (browsers needed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "chromium"
FIREFOX = "firefox"

VP8 = "video/webm;codecs=vp8,opus"
VP9 = "video/webm;codecs=vp9,opus"
H264_WEBM = "video/webm;codecs=h264,opus"
AVC1_MP4 = "video/mp4;codecs=avc1,opus"
AVC3_MP4 = "video/mp4;codecs=avc3,opus"
VP9_MP4 = "video/mp4;codecs=vp9,opus"
AV1 = "video/webm;codecs=av1,opus"

# Headless Chromium, quiet and self-contained (plus --headless on the command line, and a new
# --user-data-dir per run); the playback test launches it with the same flags.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

# Headless Firefox ESR, quiet and self-contained (a new profile per run); the playback test
# opens its page with the same preferences. Playwright cannot drive Debian's firefox-esr.
FIREFOX_PREFS = {
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.autoplay.block-webaudio": False,
    "media.navigator.permission.disabled": True,
    "media.navigator.streams.fake": True,  # fake microphone: a 1 kHz tone (no audio device)
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "app.update.enabled": False,
    "network.captive-portal-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "extensions.update.enabled": False,
}

RESIZE = {"size": "640x360", "resize": "4:1280x720,8:854x480"}


def browser_command(browser: str, page: str, profile: Path) -> list[str]:
    """The command that opens ``page`` in headless ``browser`` with a new ``profile`` folder
    (Firefox: its preferences are written there)."""
    if browser == CHROMIUM:
        return ["chromium", "--headless", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", page]
    prefs = "".join(
        f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in FIREFOX_PREFS.items()
    )
    (profile / "user.js").write_text(prefs)
    return ["firefox-esr", "--headless", "--profile", str(profile), "--no-remote", page]


@contextlib.contextmanager
def browser_process(command: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run a browser in its own process group; on exit stop that group (TERM, then KILL)."""
    browser = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped as a whole below
    )
    try:
        yield browser
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGTERM)
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()
        time.sleep(0.5)  # let a stopped Firefox release its profile before it is removed


@dataclass(frozen=True)
class Recording:
    """One recording: file name, browser, MIME type, page parameters, and what it shows."""

    name: str
    browser: str
    mime: str
    quirk: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """How long the page records."""
        return float(self.params.get("secs", "10"))

    def query(self) -> dict[str, str]:
        """The page's query parameters (Firefox: its fake microphone, see recorder.html)."""
        fake = {"mic": "fake"} if self.browser == FIREFOX else {}
        return {"mime": self.mime, "name": self.name, **fake, **self.params}


RECORDINGS: tuple[Recording, ...] = (
    Recording(
        "chrome-vp8-resize-12s.webm",
        CHROMIUM,
        VP8,
        "frame size 640x360 -> 1280x720 (4 s) -> 854x480 (8 s)",
        {"secs": "12", **RESIZE},
    ),
    Recording(
        "chrome-vp8-odd-1277x713-10s.webm", CHROMIUM, VP8, "odd frame size", {"size": "1277x713"}
    ),
    Recording(
        "chrome-vp9-resize-12s.webm", CHROMIUM, VP9, "VP9, resized twice", {"secs": "12", **RESIZE}
    ),
    Recording(
        "chrome-h264-resize-12s.webm",
        CHROMIUM,
        H264_WEBM,
        "H.264 in WebM, resized twice",
        {"secs": "12", **RESIZE},
    ),
    Recording(
        "chrome-avc1-resize-12s.mp4",
        CHROMIUM,
        AVC1_MP4,
        "MP4 (avc1), resized twice: Chromium writes no new SPS/PPS after a resize, so"
        " decoders show later frames at the first size (errors, the same in the output)",
        {"secs": "12", **RESIZE},
    ),
    Recording(
        "chrome-avc3-resize-12s.mp4",
        CHROMIUM,
        AVC3_MP4,
        "MP4 (avc3: parameter sets in the stream), resized twice",
        {"secs": "12", **RESIZE},
    ),
    Recording(
        "chrome-vp8-static-end-12s.webm",
        CHROMIUM,
        VP8,
        "screen static from 7 s: no video frame after 7 s, microphone to 12 s",
        {"secs": "12", "static": "7"},
    ),
    Recording(
        "chrome-vp9-static-end-12s.webm",
        CHROMIUM,
        VP9,
        "VP9, screen static from 8 s, microphone to 12 s",
        {"secs": "12", "static": "8"},
    ),
    Recording(
        "chrome-avc1-static-end-12s.mp4",
        CHROMIUM,
        AVC1_MP4,
        "MP4, screen static from 7 s, microphone to 12 s",
        {"secs": "12", "static": "7"},
    ),
    Recording(
        "chrome-h264-static-end-12s.webm",
        CHROMIUM,
        H264_WEBM,
        "H.264 WebM, odd size 1277x713, screen static from 7.5 s, microphone to 12 s",
        {"secs": "12", "static": "7.5", "size": "1277x713"},
    ),
    Recording(
        "chrome-vp8-1fps-11s.webm",
        CHROMIUM,
        VP8,
        "1 frame per second (a clock); ffprobe guesses 1 s per frame, so the timeline ends"
        " 0.3 s after the microphone",
        {"secs": "10.7", "fps": "1"},
    ),
    Recording(
        "chrome-h264-1fps-resize-12s.webm",
        CHROMIUM,
        H264_WEBM,
        "H.264 WebM at 1 fps, 800x600 -> 1024x768 -> 500x300: ffmpeg reads its first frames"
        " without decode times (fewer than 7 in its analysis window), so the video has no"
        " start time and the container's is the audio's",
        {"secs": "12", "fps": "1", "size": "800x600", "resize": "4:1024x768,8:500x300"},
    ),
    Recording(
        "chrome-vp8-late-video-10s.webm",
        CHROMIUM,
        VP8,
        "nothing drawn for 1 s: the first video frame after the first audio",
        {"videoDelay": "1"},
    ),
    Recording(
        "chrome-avc1-late-video-10s.mp4",
        CHROMIUM,
        AVC1_MP4,
        "MP4, nothing drawn for 1 s: Chromium's MP4 muxer still starts the video track at 0"
        " (its first frame 1 s ahead of its sound), so the video ends 1 s before the audio",
        {"videoDelay": "1"},
    ),
    Recording(
        "chrome-vp9-mp4-static-end-10s.mp4",
        CHROMIUM,
        VP9_MP4,
        "VP9 in MP4 (time base 1/30000, merged into WebM's 1/1000), odd size 963x541, static"
        " from 5 s, microphone to 10 s",
        {"size": "963x541", "static": "5"},
    ),
    Recording(
        "chrome-h264-late-video-static-12s.webm",
        CHROMIUM,
        H264_WEBM,
        "H.264 WebM, nothing drawn for 1.5 s, static from 8 s: merged into an MP4 whose video"
        " track starts with an empty edit",
        {"secs": "12", "size": "800x600", "videoDelay": "1.5", "static": "8"},
    ),
    Recording(
        "chrome-vp8-stereo-muted-10s.webm",
        CHROMIUM,
        VP8,
        "stereo 48 kHz microphone, muted from 5 s to 6.5 s",
        {"stereo": "1", "mute": "5:6.5"},
    ),
    Recording(
        "chrome-vp9-silent-lead-10s.webm",
        CHROMIUM,
        VP9,
        "microphone silent for the first 3 s",
        {"silentUntil": "3"},
    ),
    Recording(
        "chrome-av1-resize-12s.webm",
        CHROMIUM,
        AV1,
        "AV1 in WebM, resized twice",
        {"secs": "12", **RESIZE},
    ),
    Recording(
        "firefox-vp8-opus-10s.webm",
        FIREFOX,
        VP8,
        "Firefox ESR WebM (VP8 + Opus), its fake microphone (a 1 kHz tone); audio from -1 ms",
        {},
    ),
    Recording(
        "firefox-vp8-resize-static-12s.webm",
        FIREFOX,
        VP8,
        "Firefox ESR, resized 640x360 -> 1280x720 -> 854x480, static from 10 s (Firefox"
        " keeps sending frames of a static canvas); its audio starts 1 ms before the video",
        {"secs": "12", "static": "10", **RESIZE},
    ),
)
