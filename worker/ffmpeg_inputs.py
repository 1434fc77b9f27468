"""How every untrusted input is named on an ffmpeg/ffprobe command line (pure).

Every input we hand to ffmpeg or ffprobe is untrusted (SPEC §5): each ``-i`` is preceded by
the demuxer and protocol allow-lists (:func:`input_args`), so a playlist or concat script
disguised as ``.mp4`` cannot make ffmpeg open other files or URLs, and names its file with an
explicit ``file:`` prefix (:func:`file_url`), so a path such as ``http:x.mp4`` is never read
as a URL. The pure argument builders use this module; :mod:`worker.ffmpeg` runs the result.
"""

from __future__ import annotations

from pathlib import Path

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"

# Demuxers an input may use: browser recordings (mov/mp4, matroska/webm) and Connect's WAV.
# The names are ffmpeg's demuxer names; HLS, concat, image2, ... are all refused.
FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,wav"
# Local files only; `pipe` is harmless (we never pass a pipe URL) and is what SPEC §5 names.
PROTOCOL_WHITELIST = "file,pipe"


def input_args(path: Path) -> list[str]:
    """The options that must precede every ``-i`` (and every ffprobe input), then the input."""
    return [
        "-format_whitelist",
        FORMAT_WHITELIST,
        "-protocol_whitelist",
        PROTOCOL_WHITELIST,
        "-i",
        file_url(path),
    ]


def file_url(path: Path) -> str:
    """``file:`` + absolute path: never interpreted as another protocol or an option."""
    return "file:" + str(Path(path).absolute())
