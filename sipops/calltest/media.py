"""RTP counted per direction by the kernel: nftables counters in the namespace where test phones run.

sipp plays G.711 and RFC 2833 packets but keeps no count of what it receives, so every media port of a
test phone gets counters in a table of our own (created for the run, deleted after it): audio (payload
type 8) and DTMF events (payload type 96, as sipp's play_dtmf sends and our SDP offers) arriving at the
port, and audio leaving from it. Counting at the kernel sees exactly what crossed the wire, both ways.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from dataclasses import dataclass

from sipops.calltest.sipp import Place

AUDIO_PT = 8  # PCMA, the payload of sip-tester's g711a.pcap
DTMF_PT = 96  # telephone-event as sipp's play_dtmf writes it
DTMF_EVENTS = "0123456789*#"  # RFC 4733 event codes 0-11
_TABLES = itertools.count(1)  # checks of several hosts count in one namespace at once: a table each


def event_code(digit: str) -> int:
    return DTMF_EVENTS.index(digit)


@dataclass
class PortCount:
    """Packets one test phone's media port saw during a check."""

    audio_in: int = 0
    audio_out: int = 0
    dtmf_in: dict[str, int] | None = None  # digit -> packets received


def ruleset(table: str, ports: list[int], digits: str) -> str:
    """`nft -f` text: counters and rules for each media port (RTP's payload type is 7 bits at bit 73
    of the UDP payload's second byte; an RFC 2833 event code is the first payload byte after the
    12-byte RTP header)."""
    lines = [f"table inet {table} {{"]
    for p in ports:
        lines += [f"  counter rx_{p} {{}}", f"  counter tx_{p} {{}}"]
        lines += [f"  counter dtmf_{p}_{event_code(d)} {{}}" for d in sorted(set(digits))]
    lines.append("  chain input { type filter hook input priority -150; policy accept;")
    for p in ports:
        lines.append(f"    udp dport {p} @th,73,7 {AUDIO_PT} counter name rx_{p}")
        for d in sorted(set(digits)):
            code = event_code(d)
            lines.append(f"    udp dport {p} @th,73,7 {DTMF_PT} @th,160,8 {code} counter name dtmf_{p}_{code}")
    lines.append("  }")
    lines.append("  chain output { type filter hook output priority -150; policy accept;")
    lines += [f"    udp sport {p} @th,73,7 {AUDIO_PT} counter name tx_{p}" for p in ports]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def parse_counters(text: str) -> dict[str, int]:
    """`nft -j list counters table ...` -> counter name: packets."""
    out: dict[str, int] = {}
    for item in json.loads(text).get("nftables", []):
        counter = item.get("counter") if isinstance(item, dict) else None
        if isinstance(counter, dict):
            out[str(counter.get("name"))] = int(counter.get("packets", 0))
    return out


class MediaCounters:
    """The counters of one place (network namespace); use as a context manager so the table goes."""

    def __init__(self, place: Place, ports: list[int], digits: str) -> None:
        self.place = place
        self.ports = ports
        self.digits = digits
        self.table = f"sipops_calltest_{os.getpid()}_{next(_TABLES)}"

    def _nft(self, args: list[str], stdin: str | None = None) -> str:
        proc = subprocess.run(
            self.place.argv(["nft", *args]), input=stdin, capture_output=True, text=True, timeout=20, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)} in {self.place.name}: {proc.stderr.strip()[:200]}")
        return proc.stdout

    def __enter__(self) -> MediaCounters:
        self._nft(["-f", "-"], ruleset(self.table, self.ports, self.digits))
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(
            self.place.argv(["nft", "delete", "table", "inet", self.table]),
            capture_output=True,
            timeout=20,
            check=False,
        )

    def read(self) -> dict[int, PortCount]:
        raw = parse_counters(self._nft(["-j", "list", "counters", "table", "inet", self.table]))
        return {
            p: PortCount(
                audio_in=raw.get(f"rx_{p}", 0),
                audio_out=raw.get(f"tx_{p}", 0),
                dtmf_in={d: raw.get(f"dtmf_{p}_{event_code(d)}", 0) for d in sorted(set(self.digits))},
            )
            for p in self.ports
        }
