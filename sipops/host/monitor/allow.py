"""The allowlist: addresses the watcher never bans, whatever the evidence.

Loopback, the host's own addresses, the operator's SSH source (SSH_CLIENT of the session, or given),
every gateway/trunk/dispatcher destination and fleet member of the inventory, and configured CIDRs
(the `allowlist` var). Names (a trunk given as sip.trunk.example.com) are resolved once, at build time.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any

Network = IPv4Network | IPv6Network
LOOPBACK = ("127.0.0.0/8", "::1/128")
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


@dataclass
class Allowlist:
    """Exact addresses in a set (fast path), networks checked one by one; `why` says where each came from."""

    exact: dict[str, str] = field(default_factory=dict)  # address -> reason
    networks: list[tuple[Network, str]] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)

    def add(self, entry: str, reason: str) -> None:
        """An IP, CIDR or host name (resolved now; a name that does not resolve is noted, not fatal)."""
        text = entry.strip()
        if not text:
            return
        try:
            net = ip_network(text, strict=False)
        except ValueError:
            addrs = _resolve(text)
            if not addrs:
                self.unresolved.append(f"{text} ({reason})")
            for a in addrs:
                self.exact.setdefault(a, f"{reason} ({text})")
            return
        mapped = getattr(net.network_address, "ipv4_mapped", None)
        if net.prefixlen == net.max_prefixlen:
            self.exact.setdefault(str(mapped or net.network_address), reason)
        else:
            self.networks.append((net, reason))

    def why(self, address: str) -> str | None:
        """The reason `address` (an IP, or a CIDR: allowlisted when it overlaps) is allowlisted, or None."""
        reason = self.exact.get(address)
        if reason is not None:
            return reason
        if "/" not in address:
            # A poll that bans 10k addresses asks 10k times: inet_pton and integer masks take 1 us where
            # ip_address and `in` take 12; anything inet_pton refuses (scope ids, garbage) takes the long way.
            family, version = (socket.AF_INET6, 6) if ":" in address else (socket.AF_INET, 4)
            try:
                packed = socket.inet_pton(family, address)
            except OSError:
                pass
            else:
                if version == 6 and packed[:12] == _V4_MAPPED:
                    return self.why(socket.inet_ntop(socket.AF_INET, packed[12:]))
                n = int.from_bytes(packed, "big")
                for net, why in self.networks:
                    if net.version == version and n & int(net.netmask) == int(net.network_address):
                        return why
                return None
        try:
            if "/" in address:
                target = ip_network(address, strict=False)
                for a in self.exact:
                    ip = ip_address(a)
                    if ip.version == target.version and ip in target:
                        return self.exact[a]
                for net, why in self.networks:
                    if net.version == target.version and net.overlaps(target):
                        return why
                return None
            ip = ip_address(address)
        except ValueError:
            return None
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None:
            return self.why(str(mapped))
        for net, why in self.networks:
            if ip.version == net.version and ip in net:
                return why
        return None

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self.why(address) is not None

    def entries(self) -> list[tuple[str, str]]:
        """(address or CIDR, reason), for `sipops watch` to show."""
        return [*self.exact.items(), *((str(n), r) for n, r in self.networks)]


def _resolve(name: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def ssh_source(env: Mapping[str, str] | None = None) -> str | None:
    """The operator's address from SSH_CLIENT / SSH_CONNECTION of this session, if any."""
    env = os.environ if env is None else env
    for key in ("SSH_CLIENT", "SSH_CONNECTION"):
        value = env.get(key, "").split()
        if value:
            return value[0]
    return None


def own_addresses() -> list[str]:
    """Every address on the host's interfaces (psutil.net_if_addrs)."""
    try:
        import psutil
    except ImportError:
        return []
    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.append(str(a.address).split("%", 1)[0])
    return out


def inventory_entries(host_vars: Mapping[str, Any], fleet: Iterable[Mapping[str, Any]] = ()) -> list[tuple[str, str]]:
    """(entry, reason) from one host's merged vars and the fleet: allowlist CIDRs, gateways, fleet members."""
    out: list[tuple[str, str]] = [(str(c), "allowlist") for c in host_vars.get("allowlist") or []]
    for gw in host_vars.get("gateways") or []:
        if isinstance(gw, Mapping) and gw.get("address"):
            out.append((str(gw["address"]), f"gateway {gw.get('name', '')}".strip()))
    for member in fleet:
        if member.get("address"):
            out.append((str(member["address"]), f"fleet {member.get('name', '')}".strip()))
    return out


def build(
    configured: Iterable[tuple[str, str]] = (),
    *,
    ssh: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    host_addresses: Iterable[str] | None = None,
) -> Allowlist:
    """The allowlist of this host: loopback, own addresses, SSH sources, then `configured` (entry, reason)."""
    allow = Allowlist()
    for net in LOOPBACK:
        allow.add(net, "loopback")
    for a in own_addresses() if host_addresses is None else host_addresses:
        allow.add(a, "own address")
    source = ssh_source(env)
    if source:
        allow.add(source, "SSH session")
    for s in ssh:
        allow.add(s, "SSH operator")
    for entry, reason in configured:
        allow.add(entry, reason)
    return allow
