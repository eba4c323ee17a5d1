"""The never-ban/allow lists of a host (allowlist, ssh_allow, watch_allow): no accidental /0.

An entry wider than /8 (IPv4) or /16 (IPv6) turns bans off and opens the MI port to a large part of
the Internet, which is almost always a typo (0.0.0.0/0, 10.0.0.0/1). Such an entry is refused unless it
is also listed in `allowlist_wide_ok` (common role), the one place that says "yes, this wide". Entries
of one list that overlap (one inside the other, or the same network twice) are reported as warnings:
harmless, but usually a sign that one of them is not what was meant.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

from sipops.errors import InputError

ALLOW_VARS = ("allowlist", "ssh_allow", "watch_allow")
WIDE_OK_VAR = "allowlist_wide_ok"
MIN_PREFIX = {4: 8, 6: 16}  # narrower than this prefix length is "wide"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(values: list[Any]) -> Iterator[tuple[int, Network]]:
    for i, entry in enumerate(values):
        try:
            yield i, ipaddress.ip_network(str(entry), strict=False)
        except ValueError:
            continue  # a DNS name (watch_allow): one address, never wide


def check_wide(hvars: dict[str, Any], where: Any) -> None:
    """Raise InputError for a wide entry not in allowlist_wide_ok; `where(var, index)` -> (file, line, field)."""
    ok = {ipaddress.ip_network(str(n), strict=False) for n in hvars.get(WIDE_OK_VAR) or []}
    for var in ALLOW_VARS:
        for i, net in _networks(hvars.get(var) or []):
            if net.prefixlen < MIN_PREFIX[net.version] and net not in ok:
                file, line, fld = where(var, i)
                raise InputError(
                    f"{net} is wider than /{MIN_PREFIX[net.version]}: it would allow "
                    f"{'everyone' if net.prefixlen == 0 else f'{net.num_addresses:.3g} addresses'}; "
                    f"if you mean it, list it in {WIDE_OK_VAR} as well",
                    file=file,
                    line=line,
                    field=fld,
                )


def overlap_warnings(host: str, hvars: dict[str, Any]) -> list[str]:
    """One line per pair of overlapping entries within one list."""
    out: list[str] = []
    for var in ALLOW_VARS:
        nets = list(_networks(hvars.get(var) or []))
        for a in range(len(nets)):
            for b in range(a + 1, len(nets)):
                (i, n1), (j, n2) = nets[a], nets[b]
                if n1.version == n2.version and n1.overlaps(n2):
                    what = "repeats" if n1 == n2 else ("is inside" if n2.subnet_of(n1) else "contains")  # type: ignore[arg-type]
                    out.append(f"host {host}: {var}[{j}] {n2} {what} {var}[{i}] {n1}")
    return out
