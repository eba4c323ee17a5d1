"""The connection scanner: TCP sockets counted per (local port, state, remote IP), read from sock_diag.

Result types (stable names; rules, watch and `sipops conns` consume them):

TcpState        IntEnum of kernel TCP states (ESTABLISHED=1 … CLOSING=11). Request sockets (the
                kernel's NEW_SYN_RECV) are reported as SYN_RECV, as ss does. `TcpState.parse("syn-recv")`.
ConnKey         tuple (local port: int, state: TcpState, remote ip: str). IPv4-mapped IPv6 peers
                (::ffff:a.b.c.d on dual-stack sockets) are given as plain IPv4.
PortStats       per local port: total sockets, per-state counts, distinct remote IPs, new connections.
TcpExtCounters  /proc/net/netstat TcpExt counters since boot (SYN-flood evidence hidden by SYN cookies);
                `later.delta(earlier)` gives the change between two polls.
ConnectionTable one scan:
  counts       dict[ConnKey, int]             sockets per (local port, state, remote ip)
  new          dict[tuple[int, str], int]     per (local port, remote ip): sockets whose cookie was not
                                              in `known` (empty when known is None, i.e. the first poll)
  ports        dict[int, PortStats]           per local port totals (a property: built on first use)
  cookies      collections.abc.Set[int]       idiag_cookie of every socket seen: pass as `known` next poll
  netstat      TcpExtCounters | None
  source       "netlink" | "proc"; fallback is True (and fallback_reason says why) when netlink was refused
  taken_at     time.time() of the scan; elapsed: seconds it took
  helpers      by_ip(port, states) -> dict[str, int]; top(port, n, states) -> list[tuple[str, int]]

Entry points: `scan(ports, states, known=...)` and `close_connections(addresses, ports)`.
Standard library only: this module is shipped to hosts without sipops (see sipops.monitor.remote).
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

from sipops.host.monitor import procnet, sockdiag


class TcpState(IntEnum):
    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11

    @property
    def label(self) -> str:
        """The name `ss` prints (ESTAB, SYN-RECV, TIME-WAIT, …)."""
        return _LABELS.get(self, self.name.replace("_", "-"))

    @classmethod
    def parse(cls, text: str) -> TcpState:
        """A state from its kernel or ss name, any case, '-' or '_': 'established', 'estab', 'syn-recv'."""
        key = text.strip().upper().replace("-", "_")
        key = _ALIASES.get(key, key)
        try:
            return cls[key]
        except KeyError:
            names = ", ".join(s.label.lower() for s in cls)
            raise ValueError(f"unknown TCP state {text!r}; one of: {names}") from None


_LABELS = {TcpState.ESTABLISHED: "ESTAB", TcpState.CLOSE: "UNCONN"}
_ALIASES = {"ESTAB": "ESTABLISHED", "SYN_RECEIVED": "SYN_RECV", "FIN_WAIT_1": "FIN_WAIT1", "FIN_WAIT_2": "FIN_WAIT2"}
CONNECTED_STATES = frozenset(TcpState) - {TcpState.LISTEN, TcpState.CLOSE}  # the default scan: no listeners

ConnKey = tuple[int, TcpState, str]
_STATE_BY_NUMBER = {**{int(s): s for s in TcpState}, 12: TcpState.SYN_RECV}  # 12: NEW_SYN_RECV


@dataclass(frozen=True, slots=True)
class PortStats:
    """Sockets on one local port in the scanned states."""

    port: int
    total: int
    states: dict[TcpState, int]
    remote_ips: int  # distinct remote addresses
    new: int  # connections not seen in the previous poll (0 when no `known` cookies were given)


@dataclass(frozen=True, slots=True)
class TcpExtCounters:
    """TcpExt counters from /proc/net/netstat (since boot, or a difference when made by `delta`)."""

    syncookies_sent: int = 0
    syncookies_recv: int = 0
    syncookies_failed: int = 0
    listen_overflows: int = 0
    listen_drops: int = 0
    req_qfull_do_cookies: int = 0
    req_qfull_drop: int = 0

    def delta(self, earlier: TcpExtCounters) -> TcpExtCounters:
        """What changed since `earlier` (counters only grow; a reset gives the new value)."""
        values = {}
        for name in self.__dataclass_fields__:
            now, then = getattr(self, name), getattr(earlier, name)
            values[name] = now - then if now >= then else now
        return TcpExtCounters(**values)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class ConnectionTable:
    """One scan: see the module docstring."""

    counts: dict[ConnKey, int]
    new: dict[tuple[int, str], int]
    cookies: AbstractSet[int]
    netstat: TcpExtCounters | None
    source: str  # "netlink" or "proc"
    fallback_reason: str | None
    taken_at: float
    elapsed: float
    _ports: dict[int, PortStats] | None = field(default=None, repr=False, compare=False)

    @property
    def ports(self) -> dict[int, PortStats]:
        """Per local port totals; built on first use (a scan without port filter has a port per
        outgoing connection, which the hot path should not pay for)."""
        if self._ports is None:
            object.__setattr__(self, "_ports", _port_stats(self.counts, self.new))
        assert self._ports is not None
        return self._ports

    @property
    def fallback(self) -> bool:
        """True when /proc/net/tcp was read because netlink sock_diag was refused."""
        return self.source != "netlink"

    def by_ip(self, port: int | None = None, states: Iterable[TcpState] | None = None) -> dict[str, int]:
        """Sockets per remote IP, on one port or all, in some states or all scanned."""
        wanted = None if states is None else frozenset(states)
        out: Counter[str] = Counter()
        for (p, state, ip), n in self.counts.items():
            if (port is None or p == port) and (wanted is None or state in wanted):
                out[ip] += n
        return dict(out)

    def top(
        self, port: int | None = None, n: int = 10, states: Iterable[TcpState] | None = None
    ) -> list[tuple[str, int]]:
        """The n remote IPs with most sockets (ties by address, so the order is stable)."""
        ranked = sorted(self.by_ip(port, states).items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked[:n]


def scan(
    ports: Iterable[int] | None = None,
    states: Iterable[TcpState] | None = None,
    *,
    known: AbstractSet[int] | None = None,
    netstat: bool = True,
    cookies: bool = True,
    families: Iterable[int] = (socket.AF_INET, socket.AF_INET6),
    force_proc: bool = False,
) -> ConnectionTable:
    """Count TCP sockets on local `ports` (None: all) in `states` (None: all but LISTEN and CLOSE).

    known: the previous poll's `cookies`; sockets not in it are counted in `new`.
    force_proc: read /proc/net/tcp{,6} as if netlink had been refused (for tests and comparisons).
    """
    started, wall = time.perf_counter(), time.time()
    port_list = sorted(set(ports)) if ports is not None else None
    state_set = frozenset(CONNECTED_STATES if states is None else states)
    mask = sockdiag.states_mask(state_set)
    fams = tuple(families)
    reason: str | None = "forced" if force_proc else None
    counts: dict[ConnKey, int] = {}
    new: dict[tuple[int, str], int] = {}
    seen: AbstractSet[int] = frozenset()
    if port_list == []:  # no port asked for: nothing to read (an empty filter would mean all)
        reason, force_proc = None, True
    elif not force_proc:
        try:
            counts, new, seen = _scan_netlink(fams, mask, port_list, known, cookies)
        except sockdiag.NetlinkRefused as exc:
            reason = str(exc)
    if reason is not None and port_list != []:
        pt = procnet.read_tcp(fams, mask, port_list, known=known, cookies=cookies)
        counts = {(p, TcpState(s), ip): n for (p, s, ip), n in pt.counts.items()}
        new = pt.new
        seen = pt.cookies
    netstat_counters = read_netstat() if netstat else None
    return ConnectionTable(
        counts=counts,
        new=new,
        cookies=seen,
        netstat=netstat_counters,
        source="netlink" if reason is None else "proc",
        fallback_reason=reason,
        taken_at=wall,
        elapsed=time.perf_counter() - started,
    )


def listener_families(ports: Iterable[int] | None) -> tuple[int, ...]:
    """Address families with a TCP listener on `ports` (None: any): the only ones whose SYN_RECV
    sockets can exist. A dual-stack [::] listener is AF_INET6 (its IPv4 peers are v4-mapped).
    The listening table is small: a few hundredths of a millisecond, against a walk of every
    established socket for each family dumped."""
    found: list[int] = []
    port_list = sorted(set(ports)) if ports is not None else None
    try:
        with sockdiag.open_socket() as sk:
            for fam in (socket.AF_INET, socket.AF_INET6):
                tally = sockdiag.Tally()
                sockdiag.count(fam, sockdiag.states_mask([TcpState.LISTEN]), port_list, tally, cookies=False, sock=sk)
                if tally.counts:
                    found.append(fam)
    except OSError:  # refused (the scan falls back to /proc then) or no IPv6: ask for both
        return (socket.AF_INET, socket.AF_INET6)
    return tuple(found)


def _scan_netlink(
    fams: tuple[int, ...], mask: int, ports: list[int] | None, known: AbstractSet[int] | None, cookies: bool
) -> tuple[dict[ConnKey, int], dict[tuple[int, str], int], set[int]]:
    counts: dict[ConnKey, int] = {}
    new: Counter[tuple[int, str]] = Counter()
    seen: set[int] = set()
    ntohs, states = socket.ntohs, _STATE_BY_NUMBER
    with sockdiag.open_socket() as sk:
        for fam in fams:
            tally = sockdiag.Tally(cookies=seen)
            sockdiag.count(fam, mask, ports, tally, known=known, cookies=cookies, sock=sk)
            names = {addr: address_text(fam, addr) for addr in {key[2] for key in tally.counts}}
            part = {(ntohs(p), states[s], names[a]): n for (p, s, a), n in tally.counts.items()}
            if len(part) != len(tally.counts):  # NEW_SYN_RECV and SYN_RECV, or v4 and v4-mapped, met
                part = dict(_merge(((ntohs(p), states[s], names[a]), n) for (p, s, a), n in tally.counts.items()))
            if len(part) > len(counts):
                counts, part = part, counts
            for key, n in part.items():
                counts[key] = counts.get(key, 0) + n
            for (raw_port, _state, addr), n in tally.new.items():
                new[(ntohs(raw_port), names[addr])] += n
    return counts, dict(new), seen


def _merge(pairs: Iterable[tuple[ConnKey, int]]) -> Counter[ConnKey]:
    out: Counter[ConnKey] = Counter()
    for key, n in pairs:
        out[key] += n
    return out


def address_text(family: int, addr: bytes) -> str:
    """Address bytes as text; IPv4-mapped IPv6 as plain IPv4."""
    if family == socket.AF_INET6 and addr[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, addr[12:])
    return socket.inet_ntop(family, addr)


def _port_stats(counts: Mapping[ConnKey, int], new: Mapping[tuple[int, str], int]) -> dict[int, PortStats]:
    states: dict[int, Counter[TcpState]] = {}
    ips: dict[int, set[str]] = {}
    for (port, state, ip), n in counts.items():
        states.setdefault(port, Counter())[state] += n
        ips.setdefault(port, set()).add(ip)
    fresh: Counter[int] = Counter()
    for (port, _ip), n in new.items():
        fresh[port] += n
    return {
        port: PortStats(
            port=port,
            total=sum(per_state.values()),
            states=dict(sorted(per_state.items())),
            remote_ips=len(ips[port]),
            new=fresh[port],
        )
        for port, per_state in sorted(states.items())
    }


def read_netstat(path: str = "/proc/net/netstat") -> TcpExtCounters | None:
    """TcpExt SYN-flood counters, or None when the file cannot be read."""
    values = procnet.read_tcpext(path)
    if values is None:
        return None
    return TcpExtCounters(
        syncookies_sent=values.get("SyncookiesSent", 0),
        syncookies_recv=values.get("SyncookiesRecv", 0),
        syncookies_failed=values.get("SyncookiesFailed", 0),
        listen_overflows=values.get("ListenOverflows", 0),
        listen_drops=values.get("ListenDrops", 0),
        req_qfull_do_cookies=values.get("TCPReqQFullDoCookies", 0),
        req_qfull_drop=values.get("TCPReqQFullDrop", 0),
    )


def close_connections(addresses: Iterable[str], ports: Iterable[int] | None = None) -> int:
    """Close every TCP connection from `addresses` (IPs or CIDRs) on local `ports` (None: any).

    One dump per address family plus batched SOCK_DESTROY requests, as `ss -K` does; listeners and
    TIME_WAIT sockets are left alone. Returns how many sockets the kernel closed.
    Raises sockdiag.DestroyUnsupported (kernel without CONFIG_INET_DIAG_DESTROY), PermissionError
    (no CAP_NET_ADMIN) and sockdiag.NetlinkRefused.
    """
    exact: set[bytes] = set()
    nets = []
    for text in addresses:
        t = text.strip()
        if "/" not in t:  # inet_pton: 0.3 us an address where ip_network takes 25 (a 10k-ban poll closes 10k)
            try:
                exact.add(socket.inet_pton(socket.AF_INET6 if ":" in t else socket.AF_INET, t))
                continue
            except OSError:
                pass  # e.g. a scope id: ip_network decides (and raises ValueError for what is no address)
        net = ip_network(t, strict=False)
        if net.num_addresses == 1:
            exact.add(net.network_address.packed)
        else:
            nets.append(net)
    if not exact and not nets:
        return 0
    port_list = sorted(set(ports)) if ports is not None else None
    mask = sockdiag.states_mask(CONNECTED_STATES - {TcpState.TIME_WAIT})

    def wanted(raw: sockdiag.RawSocket) -> bool:
        addr = raw.remote_address
        if raw.family == socket.AF_INET6 and addr[:12] == b"\0" * 10 + b"\xff\xff":
            addr = addr[12:]
        if addr in exact:
            return True
        if not nets:
            return False
        ip: IPv4Address | IPv6Address = ip_address(addr)
        return any(ip in net for net in nets if net.version == ip.version)

    targets: list[sockdiag.RawSocket] = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        targets.extend(raw for raw in sockdiag.sockets(fam, mask, port_list) if wanted(raw))
    return sockdiag.destroy(targets) if targets else 0


def table_to_dict(table: ConnectionTable, *, with_cookies: bool = False) -> dict[str, Any]:
    """A JSON-able form of a table (states by name)."""
    return {
        "source": table.source,
        "fallback_reason": table.fallback_reason,
        "taken_at": table.taken_at,
        "elapsed": table.elapsed,
        "counts": [[p, s.name, ip, n] for (p, s, ip), n in sorted(table.counts.items())],
        "new": [[p, ip, n] for (p, ip), n in sorted(table.new.items())],
        "netstat": table.netstat.as_dict() if table.netstat else None,
        "cookies": sorted(table.cookies) if with_cookies else None,
    }


def table_from_dict(data: Mapping[str, Any]) -> ConnectionTable:
    """The inverse of table_to_dict."""
    counts: dict[ConnKey, int] = {(int(p), TcpState[s], str(ip)): int(n) for p, s, ip, n in data["counts"]}
    new = {(int(p), str(ip)): int(n) for p, ip, n in data["new"]}
    netstat = TcpExtCounters(**data["netstat"]) if data.get("netstat") else None
    return ConnectionTable(
        counts=counts,
        new=new,
        cookies=frozenset(data.get("cookies") or ()),
        netstat=netstat,
        source=str(data["source"]),
        fallback_reason=data.get("fallback_reason"),
        taken_at=float(data["taken_at"]),
        elapsed=float(data["elapsed"]),
    )
