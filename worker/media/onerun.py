"""Reading a one-run probe's output: format, streams and packets from one ffprobe run (pure).

See :func:`worker.media.probing.build_one_run_args`: ``-of json=c=1`` prints each packet on
a line of its own (its side data, if any, may continue on the next ones), the packets before
the streams and the format.
"""

from __future__ import annotations

import json
from typing import Any

from worker.media.timeline import Timeline, TimelineScan


class OneRunReader:
    """Splits a one-run probe's JSON into its packets, kept as
    :meth:`TimelineScan.feed_values` takes them, and the rest (format and streams, the text
    :func:`~worker.media.probing.parse_probe_json` reads, with an empty packet list)."""

    def __init__(self) -> None:
        self.packets: list[dict[str, str]] = []
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
                self.packets.append(_packet_values(json.loads(self._chunk.rstrip(","))))
            self._chunk = ""

    def header_text(self) -> str:
        """The JSON of format and streams."""
        return "\n".join(self._header)

    def timeline(self, rates: dict[int, int | None], *, complete: bool) -> Timeline | None:
        """The packets' timeline, for the streams (and their sample rates) in ``rates``."""
        scanner = TimelineScan(rates)
        for values in self.packets:
            scanner.feed_values(values)
        return scanner.timeline(complete=complete)


def _packet_values(packet: dict[str, Any]) -> dict[str, str]:
    values = {k: str(v) for k, v in packet.items() if not isinstance(v, list | dict)}
    for side in packet.get("side_data_list") or []:
        values.update((k, str(v)) for k, v in side.items() if k != "side_data_type")
    return values
