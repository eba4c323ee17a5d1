"""What `sipops conns` shows, as a JSON-able dict: built on the host itself, locally or shipped over SSH.

Standard library only (see sipops.monitor.remote). Report shape (keys are stable, for scripts):

{"host", "source": "netlink"|"proc", "fallback_reason", "elapsed",
 "ports": [{"port", "total", "states": {label: n}, "remote_ips", "new",
            "top": [{"ip", "count", "states": {label: n}}],
            "listeners": [{"address", "queued", "backlog", "processes": [{"name", "pids"}] | null}]}],
 "netstat": {counter: n} | null,
 "limits": null | {"opensips": [{"pid", "fds", "fd_limit"}], "tcp_max_connections", "tcp_max_connections_from",
                   "tcp_connections", "per_port": {port: n}, "note"}}
"""

from __future__ import annotations

import os
import re
import socket
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sipops.host.monitor import procnet, sockdiag
from sipops.host.monitor.scan import ConnectionTable, TcpState, address_text, scan

CFG_CANDIDATES = ("/etc/opensips/opensips.cfg", "/usr/local/etc/opensips/opensips.cfg")
_TCP_MAX = re.compile(r"^\s*tcp_max_connections\s*=\s*(\d+)", re.MULTILINE)


def listeners() -> list[dict[str, Any]]:
    """Listening TCP sockets: port, address, accept queue (queued/backlog), inode."""
    found: list[dict[str, Any]] = []
    try:
        with sockdiag.open_socket() as sk:
            for fam in (socket.AF_INET, socket.AF_INET6):
                for raw in sockdiag.sockets(fam, 1 << sockdiag.LISTEN, None, sock=sk):
                    found.append(
                        {
                            "port": raw.local_port,
                            "address": address_text(fam, raw.local_address),
                            "queued": raw.rqueue,
                            "backlog": raw.wqueue,
                            "inode": raw.inode,
                        }
                    )
    except sockdiag.NetlinkRefused:
        found = procnet.read_listeners()
    return found


def _processes(inodes: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Socket inode -> [{"name", "pids"}], one entry per process name."""
    owners = procnet.socket_owners(frozenset(i for i in inodes if i))
    out: dict[int, list[dict[str, Any]]] = {}
    for inode, pids in owners.items():
        by_name: dict[str, list[int]] = defaultdict(list)
        for pid in pids:
            by_name[procnet.process_name(pid) or "?"].append(pid)
        out[inode] = [{"name": name, "pids": sorted(p)} for name, p in sorted(by_name.items())]
    return out


def _labels(states: dict[TcpState, int]) -> dict[str, int]:
    return {s.label: n for s, n in sorted(states.items())}


def port_rows(
    table: ConnectionTable,
    ports: list[int],
    top: int,
    lsn: list[dict[str, Any]],
    procs: dict[int, list[dict[str, Any]]] | None,
) -> list[dict[str, Any]]:
    """One row per port: totals, states, top remote IPs with their states, listeners (processes: None,
    not looked up)."""
    per_ip: dict[tuple[int, str], dict[TcpState, int]] = defaultdict(dict)
    for (port, state, ip), n in table.counts.items():
        per_ip[(port, ip)][state] = per_ip[(port, ip)].get(state, 0) + n
    rows = []
    for port in ports:
        stats = table.ports.get(port)
        ranked = table.top(port, top)
        rows.append(
            {
                "port": port,
                "total": stats.total if stats else 0,
                "states": _labels(stats.states) if stats else {},
                "remote_ips": stats.remote_ips if stats else 0,
                "new": stats.new if stats else 0,
                "top": [{"ip": ip, "count": n, "states": _labels(per_ip[(port, ip)])} for ip, n in ranked],
                "listeners": [
                    {
                        "address": entry["address"],
                        "queued": entry["queued"],
                        "backlog": entry["backlog"],
                        "processes": None if procs is None else procs.get(entry["inode"], []),
                    }
                    for entry in lsn
                    if entry["port"] == port
                ],
            }
        )
    return rows


def opensips_pids() -> list[int]:
    """Running opensips processes (by /proc/PID/comm)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    if fh.read().strip() == "opensips":
                        pids.append(int(entry))
            except OSError:
                continue
    return sorted(pids)


def cfg_tcp_max_connections(pids: list[int]) -> tuple[int | None, str | None]:
    """tcp_max_connections from the running opensips's cfg (its -f, else the usual paths)."""
    paths = []
    for pid in pids:
        argv = procnet.cmdline(pid)
        for i, arg in enumerate(argv[:-1]):
            if arg == "-f":
                paths.append(argv[i + 1])
        if paths:
            break
    paths += [p for p in CFG_CANDIDATES if p not in paths]
    for path in paths:
        try:
            with open(path) as fh:
                text = fh.read(4_000_000)
        except OSError:
            continue
        match = _TCP_MAX.search(text)
        if match:
            return int(match.group(1)), path
        return None, path  # opensips's default applies; say which file was read
    return None, None


def limits(
    table: ConnectionTable, lsn: list[dict[str, Any]], procs: dict[int, list[dict[str, Any]]], tcp_max: int | None
) -> dict[str, Any]:
    """OpenSIPS's open fds against its limit; its TCP connections against tcp_max_connections."""
    pids = opensips_pids()
    parents = set(pids)
    fds = [
        {
            "pid": pid,
            "fds": procnet.open_fds(pid),
            "fd_limit": procnet.fd_limit(pid),
            "main": procnet.parent_pid(pid) not in parents,
        }
        for pid in pids
    ]
    source: str | None = "inventory" if tcp_max is not None else None
    if tcp_max is None:
        tcp_max, source = cfg_tcp_max_connections(pids)
    owned = {e["port"] for e in lsn if any(p["name"] == "opensips" for p in procs.get(e["inode"], []))}
    per_port: dict[int, int] = defaultdict(int)
    for (port, state, _ip), n in table.counts.items():
        if state != TcpState.LISTEN and (port in owned or not owned):
            per_port[port] += n
    note = None if pids else "no opensips process running"
    return {
        "opensips": fds,
        "tcp_max_connections": tcp_max,
        "tcp_max_connections_from": source,
        "tcp_connections": sum(per_port.values()),
        "per_port": {str(p): n for p, n in sorted(per_port.items())},
        "note": note,
    }


def build_report(params: dict[str, Any]) -> dict[str, Any]:
    """The report for this host. params: ports, states (names), top, limits, tcp_max_connections, host,
    owners (default True: name the listeners' processes)."""
    lsn = listeners()
    wanted = params.get("ports") or sorted({e["port"] for e in lsn})
    states = [TcpState.parse(s) for s in params["states"]] if params.get("states") else None
    table = scan(wanted, states)
    top = int(params.get("top") or 5)
    # Owners only of the listeners the report shows (all of them for limits, which finds OpenSIPS's ports):
    # finding them walks every process's fd links (~5 us each in the kernel), at 100k sockets 0.5-0.9 s,
    # the report's largest cost. owners=False skips the walk: listeners' "processes" are then null.
    shown = set(wanted)
    owners = params.get("owners", True) or params.get("limits")
    procs = _processes(e["inode"] for e in lsn if params.get("limits") or e["port"] in shown) if owners else None
    return {
        "host": params.get("host") or socket.gethostname(),
        "source": table.source,
        "fallback_reason": table.fallback_reason,
        "elapsed": round(table.elapsed, 6),
        "ports": port_rows(table, list(wanted), top, lsn, procs),
        "netstat": table.netstat.as_dict() if table.netstat else None,
        "limits": limits(table, lsn, procs or {}, params.get("tcp_max_connections")) if params.get("limits") else None,
    }


def main(params: dict[str, Any], stream: Any = None, size: int = 0) -> dict[str, Any]:
    """Entry point of `sipops conns HOST` (sipops.monitor.remote, through sipops.remote.runner.call)."""
    return build_report(params)
