"""Reading a one-run probe's output: format, streams and packets from one ffprobe run (pure).

See :func:`worker.media.probing.build_one_run_args`: ``-of json=c=1`` prints each packet on
a line of its own (its side data, if any, may continue on the next ones), the packets before
the streams and the format.
"""

from __future__ import annotations

import json
import math
from array import array
from typing import Any

from worker.media._parse import parse_float, parse_int
from worker.media.packets import Packet, json_packet
from worker.media.timeline import Timeline, TimelineScan


class OneRunReader:
    """Splits a one-run probe's JSON into its packets and the rest (format and streams, the
    text :func:`~worker.media.probing.parse_probe_json` reads, with an empty packet list).

    The packets come before the streams they belong to, so they are kept until the header is
    read: as columns of numbers (about 50 bytes a packet, not the 800 of a dict of strings:
    every packet of a 45-minute Connect WAV is 21,000). With ``streaming`` (a live WebM, read
    whole: 280,000 packets an hour), none are kept: each goes to a :class:`TimelineScan` of
    every stream as it is read, which keeps only the few whose start or end needs the
    stream's sample rate (skipped or discarded samples) until the header gives it."""

    def __init__(self, *, streaming: bool = False) -> None:
        self._scan = TimelineScan(None) if streaming else None
        self._count = 0
        self._index = array("q")
        self._discarded = array("b")  # flag D: a packet the demuxer discards
        self._times = (array("d"), array("d"), array("d"))  # pts, dts, duration; NaN: absent
        self._skip = array("q")  # skip_samples (side data)
        self._padding = array("q")  # discard_padding (side data)
        self._header: list[str] = []
        self._in_packets = False
        self._chunk = ""

    def feed(self, line: str) -> None:
        """Take one output line."""
        text = line.strip()
        if self._in_packets and not self._chunk and text.startswith("]"):
            self._in_packets = False  # the end of the packet list
        if not self._in_packets:
            self._in_packets = text == '"packets": ['
            self._header.append(line)
            return
        self._chunk += text
        if self._chunk.count("{") == self._chunk.count("}"):  # a packet's object is complete
            if self._chunk:
                packet = json_packet(self._chunk)  # the fast read: a packet without side data
                if packet is not None:
                    self._keep(packet)
                else:
                    self._keep(*self._read_json(self._chunk))
            self._chunk = ""

    @property
    def packets(self) -> int:
        """How many packets were read."""
        return self._count

    @staticmethod
    def _read_json(text: str) -> tuple[Packet, int, int]:
        """A packet (and its skipped and discarded samples) read with ``json``."""
        values = _packet_values(json.loads(text.rstrip(",")))
        return (
            Packet(
                _int(values.get("stream_index"), -1),
                "D" in values.get("flags", ""),
                parse_float(values.get("pts_time")),
                parse_float(values.get("dts_time")),
                parse_float(values.get("duration_time")),
            ),
            _int(values.get("skip_samples"), 0),
            _int(values.get("discard_padding"), 0),
        )

    def _keep(self, packet: Packet, skip_samples: int = 0, discard_padding: int = 0) -> None:
        self._count += 1
        if self._scan is not None:
            self._scan.feed_packet(*packet, skip_samples, discard_padding)
            return
        self._index.append(packet.stream)
        self._discarded.append(packet.discarded)
        for column, when in zip(self._times, packet[2:], strict=True):
            column.append(math.nan if when is None else when)
        self._skip.append(skip_samples)
        self._padding.append(discard_padding)

    def header_text(self) -> str:
        """The JSON of format and streams."""
        return "\n".join(self._header)

    def timeline(self, rates: dict[int, int | None], *, complete: bool) -> Timeline | None:
        """The packets' timeline, for the streams (and their sample rates) in ``rates``."""
        if self._scan is not None:
            return self._scan.timeline(complete=complete, rates=rates)
        scanner = TimelineScan(rates)
        columns = zip(
            self._index, self._discarded, *self._times, self._skip, self._padding, strict=True
        )
        for index, discarded, pts, dts, duration, skip, padding in columns:
            scanner.feed_packet(
                index,
                bool(discarded),
                None if pts != pts else pts,  # NaN (absent) is the only float unequal to itself
                None if dts != dts else dts,
                None if duration != duration else duration,
                skip,
                padding,
            )
        return scanner.timeline(complete=complete)


def _int(text: str | None, default: int) -> int:
    value = parse_int(text)
    return default if value is None else value


def _packet_values(packet: dict[str, Any]) -> dict[str, str]:
    values = {k: str(v) for k, v in packet.items() if not isinstance(v, list | dict)}
    for side in packet.get("side_data_list") or []:
        values.update((k, str(v)) for k, v in side.items() if k != "side_data_type")
    return values
