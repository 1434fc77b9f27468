"""The S3 key layout of a recording (SPEC §5) and the choice of its Connect audio (pure).

Key templates come from :class:`worker.config.KeyTemplates`; :func:`keys_for` fills them for
one recording, :func:`choose_connect_audio` picks the Connect recording among the objects a
prefix search listed (:class:`ObjectSummary`, what :mod:`worker.storage` lists).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from worker.config import KeyTemplates
from worker.errors import ConfigError, ConnectAudioNotReady

_EXTENSION = re.compile(r"^[A-Za-z0-9]{1,10}$")


@dataclass(frozen=True)
class ObjectSummary:
    """One listed object."""

    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class RecordingKeys:
    """Where one recording's objects live (SPEC §5)."""

    connect_audio_prefixes: tuple[str, ...]
    input_key: str
    output_key_template: str
    thumbnail_key: str

    def output_key(self, extension: str) -> str:
        """The output key for a container extension such as ``mp4`` or ``webm``."""
        if not _EXTENSION.match(extension):
            raise ValueError(f"invalid output extension {extension!r}")
        return self.output_key_template.replace("{ext}", extension)


def _fill(template: str, values: Mapping[str, str], name: str) -> str:
    try:
        return template.format_map(values)
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(f"key template {name} {template!r} is invalid: {error}") from None


def keys_for(
    recording_id: str,
    agent_id: str,
    creation_date: datetime,
    templates: KeyTemplates,
    instance_alias: str,
) -> RecordingKeys:
    """The S3 keys of a recording (pure).

    Connect audio prefixes cover the ``creationDate`` day and the next day (UTC): a call that
    crosses midnight is filed under the day it ended.
    """
    day = creation_date.astimezone(UTC) if creation_date.tzinfo else creation_date

    def values(when: datetime) -> dict[str, str]:
        return {
            "yyyy": f"{when.year:04d}",
            "mm": f"{when.month:02d}",
            "dd": f"{when.day:02d}",
            "agent_id": agent_id,
            "recording_id": recording_id,
            "instance": instance_alias,
            # Kept as a placeholder: the extension is known only after probing the video.
            "ext": "{ext}",
        }

    today = values(day)
    prefixes = tuple(
        dict.fromkeys(
            _fill(templates.connect_audio_prefix, values(when), "CONNECT_AUDIO_PREFIX_TEMPLATE")
            for when in (day, day + timedelta(days=1))
        )
    )
    return RecordingKeys(
        connect_audio_prefixes=prefixes,
        input_key=_fill(templates.input_key, today, "INPUT_KEY_TEMPLATE"),
        output_key_template=_fill(templates.output_key, today, "OUTPUT_KEY_TEMPLATE"),
        thumbnail_key=_fill(templates.thumbnail_key, today, "THUMBNAIL_KEY_TEMPLATE"),
    )


def belongs_to(key: str, recording_id: str) -> bool:
    """Whether ``key`` names ``recording_id``'s file (not merely a key under its prefix)."""
    # A prefix search for "abc" also returns "abcd_...wav". Connect names the file
    # "<contactId>_<timestamp>_UTC.wav": the file name must start with the id followed by a
    # character that cannot continue an id. A custom template may instead use the id as a
    # folder: then a folder named exactly like the id counts.
    *folders, name = key.split("/")
    if name.startswith(recording_id):
        following = name[len(recording_id) : len(recording_id) + 1]
        if not (following.isalnum() or following == "-"):
            return True
    return recording_id in folders


def choose_connect_audio(
    candidates: Sequence[ObjectSummary], *, recording_id: str | None = None
) -> ObjectSummary:
    """Pick the Connect recording among prefix-search results (pure).

    ``.wav`` keys are preferred (Connect writes WAV); among them the newest by
    ``last_modified`` wins, ties broken by key order (Connect keys embed the start time).
    With ``recording_id``, keys of other contacts whose id merely starts with it are ignored.
    Raises :class:`ConnectAudioNotReady` when nothing is left.
    """
    pool = [c for c in candidates if c.size > 0]
    if recording_id is not None:
        pool = [c for c in pool if belongs_to(c.key, recording_id)]
    if not pool:
        raise ConnectAudioNotReady("no Connect recording found under the expected prefixes")
    if recording_id is not None:
        # IDs may contain "_", so "abc_def_<time>_UTC.wav" (contact abc_def) loosely matches
        # "abc" too: names exactly in Connect's own form win whenever there are any.
        exact = re.compile(re.escape(recording_id) + r"_\d{8}T\d{2}:?\d{2}_UTC\.wav", re.I)
        pool = [c for c in pool if exact.fullmatch(c.key.rsplit("/", 1)[-1])] or pool
    wavs = [c for c in pool if c.key.lower().endswith(".wav")]
    return max(wavs or pool, key=lambda c: (c.last_modified, c.key))
