"""SIP-level evidence from the OpenSIPS log: scanner user agents and pike blocks, with fixed tags.

The proxy role's opensips.cfg logs (templates/opensips/roles/proxy.j2):
    SIPOPS-SCANNER src=203.0.113.7 ua="friendly-scanner"
    SIPOPS-PIKE src=203.0.113.8
and OpenSIPS's pike module logs on its own `PIKE - BLOCKing ip 203.0.113.8, node=...`.
The tag must come right after the syslog header's `opensips[pid]:` (and an optional level such as
`NOTICE:` or `NOTICE:pike:pike_check_req:`): text an attacker gets logged later in a line (a User-Agent,
a Request-URI) can never pose as a tag. tests/data/monitor/opensips.log holds a sample of every pattern,
each line with the verdict it must give.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from ipaddress import ip_address

from sipops.host.monitor.rules import BAN, Verdict

# Up to 4 header fields (date, time, host) that are not themselves the program, then the program.
_PROGRAM = r"(?:\S*/)?opensips(?:\[\d+\])?:"
_HEADER = rf"^(?:(?!{_PROGRAM} )\S+ +){{1,4}}{_PROGRAM} (?:[A-Z]+:(?:[a-z_0-9]+:){{0,2}} ?)?"
_IP = r"(?P<src>[0-9A-Fa-f:.]{2,45})"
PATTERNS: dict[str, re.Pattern[str]] = {
    "sip_scanner": re.compile(_HEADER + rf'SIPOPS-SCANNER src={_IP}(?: ua="(?P<ua>(?:[^"\\]|\\.)*)")?(?:\s|$)'),
    "sip_pike": re.compile(
        _HEADER + rf"(?:SIPOPS-PIKE src={_IP}(?:\s|$)|PIKE - BLOCKing ip {_IP.replace('src', 'src2')},)"
    ),
}


@dataclass(frozen=True, slots=True)
class SipLogRules:
    scanner_ban_seconds: int = 3600
    pike_ban_seconds: int = 600


def match_line(line: str, rules: SipLogRules = SipLogRules()) -> Verdict | None:
    """The ban verdict a log line gives, or None."""
    if "SIPOPS-" not in line and "PIKE - BLOCK" not in line:
        return None  # the fast path: nearly every line
    for rule, pattern in PATTERNS.items():
        m = pattern.search(line)
        if m is None:
            continue
        src = m.group("src") if m.groupdict().get("src") else m.groupdict().get("src2")
        try:
            ip = ip_address(src or "")
        except ValueError:
            return None
        addr = str(getattr(ip, "ipv4_mapped", None) or ip)
        if rule == "sip_scanner":
            ua = (m.group("ua") or "")[:80]
            return Verdict(rule, BAN, addr, None, 1, 1, rules.scanner_ban_seconds, f'ua="{ua}"')
        return Verdict(rule, BAN, addr, None, 1, 1, rules.pike_ban_seconds, "pike blocked")
    return None


class LogFollower:
    """Follows a log file from its end, across rotation (new inode or truncation); bounded read per poll."""

    def __init__(self, path: str, *, from_start: bool = False, max_bytes: int = 4 << 20) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._inode: int | None = None
        self._pos = 0
        self._partial = b""
        self._from_start = from_start

    def read_lines(self) -> list[str]:
        """Complete lines written since the last call."""
        try:
            st = os.stat(self.path)
        except OSError:
            self._from_start = True  # a log that appears later is read from its first line
            return []
        if self._inode != st.st_ino or st.st_size < self._pos:
            first = self._inode is None
            self._inode, self._partial = st.st_ino, b""
            self._pos = st.st_size if first and not self._from_start else 0
        if st.st_size == self._pos:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                data = f.read(self.max_bytes)
        except OSError:
            return []
        self._pos += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [ln.decode("utf-8", "replace") for ln in lines]

    def verdicts(self, rules: SipLogRules = SipLogRules()) -> list[Verdict]:
        """Ban verdicts from the new lines, one per address (the first)."""
        out: dict[str, Verdict] = {}
        for line in self.read_lines():
            v = match_line(line, rules)
            if v is not None and v.address is not None and v.address not in out:
                out[v.address] = v
        return list(out.values())
