"""Recordings stay with their contact: the rule a message's ``connectAudioKey`` must meet.

The Connect bucket holds every customer's calls. A ``connectAudioKey`` used as given would
let one message merge another contact's call into this recording, so the key must be one the
prefix search (SPEC §5) could itself have found for this recording: under the configured
Connect prefix rendered for the row's ``creationDate`` day or the next day, with a file name
that starts with the recording id (:func:`worker.keys.belongs_to`), and without path
tricks (``.``/``..``/empty segments, control characters, backslashes) that some S3 client or
a later copy to a file system could resolve differently. "Control characters" means every
Unicode control, format, surrogate, private-use, unassigned or line/paragraph separator
character (categories ``C*``, ``Zl``, ``Zp``), not only ASCII's: a bidi override (U+202E) or
a zero-width space makes a key read as another in a log, ``dlq list`` or the console, and
NEL (U+0085) or U+2028 breaks a line wherever a key is printed. Connect writes ASCII keys.

The check needs the row (its ``creationDate`` gives the day), so it cannot run in
:mod:`worker.messages`; the job calls :func:`check_connect_audio_key` right after reading the
row. Pure: unit-tested in ``tests/unit/test_custody.py``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from worker.errors import InvalidMessage
from worker.keys import belongs_to

# How much of a refused key a reason quotes: enough to recognise it, never a whole hostile
# kilobyte in a DLQ attribute, a row or a log line.
QUOTED_KEY_CHARS = 80
_UNSAFE_CHARACTER = re.compile(r"[\x00-\x1f\x7f\\]")
# Unicode categories refused anywhere in a key (module docstring).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_UNSAFE_SEGMENTS = frozenset({"", ".", ".."})


def connect_key_problem(key: str, recording_id: str, prefixes: Sequence[str]) -> str | None:
    """Why ``key`` cannot be ``recording_id``'s Connect recording, or None when it can.

    ``prefixes`` are the recording's Connect prefixes (``RecordingKeys.connect_audio_prefixes``:
    the creationDate day and the next one).
    """
    if _UNSAFE_CHARACTER.search(key) or _has_unsafe_unicode(key):
        return "it has a control character or a backslash"
    if _UNSAFE_SEGMENTS.intersection(key.split("/")):
        return "it has an empty, '.' or '..' path segment"
    if not any(key.startswith(prefix) for prefix in prefixes):
        return "it is not under the Connect prefix of the recording's day or the next"
    if not belongs_to(key, recording_id):
        return "its file name does not start with the recording id"
    return None


def _has_unsafe_unicode(key: str) -> bool:
    """Whether ``key`` has a character of :data:`_UNSAFE_CATEGORIES` (ASCII keys: never)."""
    return not key.isascii() and any(unicodedata.category(c) in _UNSAFE_CATEGORIES for c in key)


def check_connect_audio_key(key: str, recording_id: str, prefixes: Sequence[str]) -> None:
    """Raise :class:`InvalidMessage` (permanent: dead-lettered, row FAILED) with a one-line
    reason quoting at most :data:`QUOTED_KEY_CHARS` of the key when ``key`` fails the rule."""
    problem = connect_key_problem(key, recording_id, prefixes)
    if problem is not None:
        raise InvalidMessage(
            f"connectAudioKey {quote_key(key)} is not this recording's Connect audio: {problem}"
        )


def quote_key(key: str) -> str:
    """``key`` quoted for a reason: cut to :data:`QUOTED_KEY_CHARS`, escapes for anything
    unprintable (repr), so neither its length nor its bytes reach the outside."""
    shown = key if len(key) <= QUOTED_KEY_CHARS else key[: QUOTED_KEY_CHARS - 1] + "…"
    return repr(shown)
