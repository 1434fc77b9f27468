"""Output containers: which container and audio codec a recording's video goes into (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.errors import UnsupportedMedia
from worker.media.model import Recording

# The Matroska/WebM muxer's time base (1/1000 s), whatever the input's.
WEBM_TICKS_PER_SECOND = 1000
# What the Opus encoder is given, whatever the output rate (see commands.audio_rate_args), and
# its priming at that rate: libopus' lookahead for the "audio" application (6.5 ms), the
# pre-skip in its header and the WebM track's CodecDelay (see commands.encoder_timing_steps).
OPUS_SAMPLE_RATE = 48000
OPUS_PRE_SKIP = 312
OPUS_BANDS = (4000, 6000, 8000, 12000, 20000)  # libopus' -cutoff values (Hz)


@dataclass(frozen=True)
class Container:
    """An output container and the audio codec that goes in it."""

    extension: str
    content_type: str
    audio_codec: str
    muxer: str = ""
    audio_frame_samples: int = 1024  # AAC; Opus frames are 20 ms (see audio_frame_seconds)

    def audio_frame_seconds(self, sample_rate: int) -> float:
        """Duration of one encoded audio frame at ``sample_rate``."""
        if self.audio_codec == "libopus":
            return 0.020
        return self.audio_frame_samples / sample_rate


MP4 = Container("mp4", "video/mp4", "aac", muxer="mp4")
WEBM = Container("webm", "video/webm", "libopus", muxer="webm")
_CONTAINERS = {"h264": MP4, "hevc": MP4, "vp8": WEBM, "vp9": WEBM, "av1": WEBM}
CODECS = frozenset(_CONTAINERS)  # video codecs the merge accepts


def container_for(video_codec: str) -> Container:
    """The output container for a video codec; :class:`UnsupportedMedia` for any other."""
    try:
        return _CONTAINERS[video_codec]
    except KeyError:
        raise UnsupportedMedia(
            f"video codec {video_codec!r} is not supported (h264, hevc, vp8, vp9, av1)"
        ) from None


def check_output_path(recording: Recording, output: Path) -> Container:
    """The container for the recording; :class:`UnsupportedMedia` if ``output`` cannot hold it."""
    codec = recording.video.codec_name
    container = container_for(codec)
    suffix = output.suffix.lower().lstrip(".")
    if suffix != container.extension:
        raise UnsupportedMedia(
            f"output .{suffix or '(none)'} cannot hold {codec} video; use .{container.extension}"
        )
    return container
