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
from worker.media.timeline import Timeline, TimelineScan

# The packet fields a timeline reads (see TimelineScan.feed_values), kept as numbers.
_TIMES = ("pts_time", "dts_time", "duration_time")
_SAMPLES = ("skip_samples", "discard_padding")


class OneRunReader:
    """Splits a one-run probe's JSON into its packets and the rest (format and streams, the
    text :func:`~worker.media.probing.parse_probe_json` reads, with an empty packet list).

    The packets come before the streams they belong to, so they are kept until the header is
    read: as columns of numbers (about 50 bytes a packet, not the 800 of a dict of strings:
    every packet of a 45-minute Connect WAV is 21,000)."""

    def __init__(self) -> None:
        self._index = array("q")
        self._discarded = array("b")  # flag D: a packet the demuxer discards
        self._times = {key: array("d") for key in _TIMES}  # NaN: absent
        self._samples = {key: array("q") for key in _SAMPLES}
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
                self._keep(_packet_values(json.loads(self._chunk.rstrip(","))))
            self._chunk = ""

    @property
    def packets(self) -> int:
        """How many packets were read."""
        return len(self._index)

    def _keep(self, values: dict[str, str]) -> None:
        self._index.append(_int(values.get("stream_index"), -1))
        self._discarded.append("D" in values.get("flags", ""))
        for key, column in self._times.items():
            when = parse_float(values.get(key))
            column.append(math.nan if when is None else when)
        for key, samples in self._samples.items():
            samples.append(_int(values.get(key), 0))

    def header_text(self) -> str:
        """The JSON of format and streams."""
        return "\n".join(self._header)

    def timeline(self, rates: dict[int, int | None], *, complete: bool) -> Timeline | None:
        """The packets' timeline, for the streams (and their sample rates) in ``rates``."""
        scanner = TimelineScan(rates)
        for row in range(self.packets):
            values = {"stream_index": str(self._index[row])}
            if self._discarded[row]:
                values["flags"] = "D"
            for key, column in self._times.items():
                if not math.isnan(column[row]):
                    values[key] = repr(column[row])  # exact: repr round-trips a float
            values.update((key, str(samples[row])) for key, samples in self._samples.items())
            scanner.feed_values(values)
        return scanner.timeline(complete=complete)


def _int(text: str | None, default: int) -> int:
    value = parse_int(text)
    return default if value is None else value


def _packet_values(packet: dict[str, Any]) -> dict[str, str]:
    values = {k: str(v) for k, v in packet.items() if not isinstance(v, list | dict)}
    for side in packet.get("side_data_list") or []:
        values.update((k, str(v)) for k, v in side.items() if k != "side_data_type")
    return values
