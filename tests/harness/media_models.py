"""Probed-file models for the pure media tests: a recording and a Connect audio as the
probe would describe them, without running ffprobe."""

from __future__ import annotations

from pathlib import Path

from worker import media


def stream(index: int, kind: str, codec: str, *, channels: int | None = None) -> media.StreamInfo:
    """One probed stream (video 640x360, audio 48 kHz)."""
    return media.StreamInfo(
        index=index,
        codec_type=kind,
        codec_name=codec,
        start_time=0.0,
        duration=None,
        sample_rate=48000 if kind == "audio" else None,
        channels=channels,
        width=640 if kind == "video" else None,
        height=360 if kind == "video" else None,
    )


def recording(
    codec: str = "vp8", *, audio: bool = True, duration: float = 8.0, audio_channels: int = 2
) -> media.Recording:
    """A recording whose video and audio both run from 0 to ``duration`` (30 fps)."""
    frames = round(duration * 30)
    spans = [media.StreamSpan(0, 0.0, duration, (frames - 1) / 30, frames)]
    if audio:
        spans.append(media.StreamSpan(1, 0.0, duration, duration - 0.02, round(duration * 50)))
    return media.Recording(
        path=Path("/in/rec.webm"),
        video=stream(0, "video", codec),
        audio=stream(1, "audio", "opus", channels=audio_channels) if audio else None,
        timeline=media.Timeline(tuple(spans)),
    )


def connect(duration: float = 5.0, channels: int = 2) -> media.ConnectAudio:
    """A Connect WAV of ``duration`` seconds."""
    return media.ConnectAudio(
        path=Path("/in/connect.wav"),
        audio=stream(0, "audio", "pcm_s16le", channels=channels),
        duration=duration,
    )
