"""`sipops conns`: TCP connections per port × state, top remote IPs, owning processes; local or over SSH."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from sipops.errors import ExitCode, InputError
from sipops.host.monitor.scan import TcpState
from sipops.remote.executor import FORKS, HostRun, printer, reach, run_hosts, summarize

MAX_TOP = 1000


def parse_ports(values: list[str] | None) -> list[int] | None:
    """--port values (repeatable, or comma-separated) as ports; InputError on anything else."""
    if not values:
        return None
    ports: set[int] = set()
    for value in values:
        for item in value.split(","):
            text = item.strip()
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise InputError(f"not a TCP port (1-65535): {item!r}", field="--port")
            ports.add(int(text))
    return sorted(ports)


def parse_states(values: list[str] | None) -> list[str] | None:
    """--state values (repeatable, or comma-separated) as kernel state names."""
    if not values:
        return None
    states: list[str] = []
    for value in values:
        for item in value.split(","):
            try:
                name = TcpState.parse(item).name
            except ValueError as exc:
                raise InputError(str(exc), field="--state") from None
            if name not in states:
                states.append(name)
    return states


def parse_top(value: str) -> int:
    if not value.strip().isdigit() or not 0 < int(value) <= MAX_TOP:
        raise InputError(f"expected a count from 1 to {MAX_TOP}, got {value!r}", field="--top")
    return int(value)


def conns(
    targets: list[str] | None,
    *,
    inventory: str | None,
    ports: list[str] | None,
    states: list[str] | None,
    top: str,
    as_json: bool,
    show_limits: bool,
    out: TextIO,
    forks: int = FORKS,
    accept_new: bool = False,
    local_report: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    remote_report: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None,
) -> int:
    """Run the command; raises InputError for bad arguments or inventory, returns the exit code."""
    params: dict[str, Any] = {
        "ports": parse_ports(ports),
        "states": parse_states(states),
        "top": parse_top(top),
        "limits": show_limits,
    }
    if not targets:
        from sipops.host.monitor.report import build_report

        report = (local_report or build_report)(params)
        _write(out, [report], as_json)
        return ExitCode.OK
    runs = _remote(targets, inventory, params, remote_report, forks=forks, accept_new=accept_new)
    _write(out, [r.result for r in runs if r.result is not None], as_json)
    # the summary table: after the text, on stderr with --json (stdout stays one JSON document)
    return summarize(runs, printer(sys.stderr if as_json else out))


def _write(out: TextIO, reports: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        out.write(json.dumps(reports, indent=2) + "\n")
    else:
        out.write("\n".join(render(r) for r in reports))


def _remote(
    targets: list[str],
    inventory: str | None,
    params: dict[str, Any],
    remote_report: Callable[[Any, dict[str, Any]], dict[str, Any]] | None,
    *,
    forks: int,
    accept_new: bool,
) -> list[HostRun[dict[str, Any]]]:
    from sipops.inventory import load_inventory, resolve_inventory_path
    from sipops.monitor.remote import run_report
    from sipops.remote.runner import SSHRunner

    inv = load_inventory(resolve_inventory_path(inventory))
    hosts = {h.name: h for h in inv.select(targets)}
    runner = remote_report or run_report

    def one(name: str) -> dict[str, Any]:
        host = hosts[name]
        host_params = dict(params, host=host.name)
        if params["limits"] and host.vars.get("tcp_max_connections") is not None:
            host_params["tcp_max_connections"] = int(host.vars["tcp_max_connections"])
        ssh = reach(lambda: SSHRunner(host, accept_new_host_key=accept_new))()
        try:
            report = runner(ssh, host_params)
        finally:
            ssh.close()
        report["host"] = host.name
        report["near_limit"] = near_limit(report, host.vars)
        return report

    def verdict(report: dict[str, Any]) -> tuple[str, str]:
        return ("failed", str(report["error"])) if "error" in report else ("ok", "")

    runs = run_hosts(list(hosts), one, forks=forks, verdict=verdict)
    for run in runs:  # a host's failure is in its report too (--json readers see it there)
        if run.result is None:
            run.result = {"host": run.host, "error": run.reason, "status": run.status}
    return runs


NEAR_RATIO = 0.8  # sipops.host.monitor.rules.Thresholds.source_alert_ratio: the watcher alerts at the same level


def near_limit(report: dict[str, Any], hvars: dict[str, Any]) -> list[dict[str, Any]]:
    """Top remote IPs at NEAR_RATIO or more of the host's flood_max_conns_per_ip (ESTABLISHED, as the watcher
    counts them) and not on its never-banned lists: a trunk or a NAT to allowlist before it is banned."""
    from ipaddress import ip_address, ip_network

    limit = int(hvars.get("flood_max_conns_per_ip") or 0)
    if limit <= 0:
        return []
    never = [*hvars.get("allowlist", []), *hvars.get("ssh_allow", []), *hvars.get("watch_allow", [])]
    never += [g.get("address") for g in hvars.get("gateways") or [] if isinstance(g, dict)]
    nets = []
    for item in never:
        try:
            nets.append(ip_network(str(item), strict=False))
        except ValueError:
            continue  # a host name in watch_allow: the watcher resolves it, this report cannot
    out = []
    for row in report.get("ports", []):
        for t in row.get("top", []):
            n = int(t["states"].get(TcpState.ESTABLISHED.label, 0))
            if n < limit * NEAR_RATIO:
                continue
            addr = ip_address(t["ip"])
            if any(addr in net for net in nets if net.version == addr.version):
                continue
            out.append({"port": row["port"], "ip": t["ip"], "conns": n, "limit": limit})
    return out


def render(report: dict[str, Any]) -> str:
    """A report as text: a port × state table, top remote IPs, SYN-flood counters, limits."""
    if "error" in report:
        return f"{report['host']}: error: {report['error']}\n"
    head = f"{report['host']}: {report['source']} in {report['elapsed'] * 1000:.1f} ms"
    if report.get("fallback_reason"):
        head += f" (fallback to /proc/net/tcp: {report['fallback_reason']})"
    lines = [head]
    rows = report["ports"]
    if not rows:
        lines.append("  no listening TCP port (give --port)")
    order = [s.label for s in TcpState]
    seen = {label for row in rows for label in row["states"]}
    columns = [label for label in order if label in seen]
    header = ["PORT", "PROCESS", "TOTAL", *columns, "IPS", "ACCEPTQ"]
    table = [header]
    for row in rows:
        names = sorted({f"{p['name']}({len(p['pids'])})" for lsn in row["listeners"] for p in lsn["processes"]})
        queue = ",".join(f"{lsn['queued']}/{lsn['backlog']}" for lsn in row["listeners"]) or "-"
        cells = [str(row["port"]), ",".join(names) or "-", str(row["total"])]
        cells += [str(row["states"].get(c, 0)) for c in columns]
        cells += [str(row["remote_ips"]), queue]
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        lines.append(
            "  "
            + "  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    tops = [(row["port"], t) for row in rows for t in row["top"]]
    if tops:
        lines.append("  top remote IPs:")
        ip_width = max(len(t["ip"]) for _, t in tops)
        for port, t in tops:
            states = ", ".join(f"{k} {v}" for k, v in t["states"].items())
            lines.append(f"    {port:>5}  {t['ip']:<{ip_width}}  {t['count']:>6}  ({states})")
    for near in report.get("near_limit") or []:
        pct = round(100 * near["conns"] / near["limit"])
        lines.append(
            f"  NEAR BAN LIMIT {near['ip']} on {near['port']}: {near['conns']} connections of flood_max_conns_per_ip "
            f"{near['limit']} ({pct}%): allowlist it (watch_allow) if it is a trunk or a NAT"
        )
    netstat = report.get("netstat")
    if netstat:
        lines.append("  TcpExt since boot: " + "  ".join(f"{k} {v}" for k, v in netstat.items()))
    lim = report.get("limits")
    if lim:
        lines.extend(_render_limits(lim))
    return "\n".join(lines) + "\n"


def _render_limits(lim: dict[str, Any]) -> list[str]:
    lines = ["  limits:"]
    if lim.get("note"):
        lines.append(f"    {lim['note']}")
    for proc in lim["opensips"]:
        if proc["main"] or proc is max(lim["opensips"], key=lambda p: p["fds"] or 0):
            limit = proc["fd_limit"] if proc["fd_limit"] is not None else "unlimited"
            lines.append(f"    opensips pid {proc['pid']}: {proc['fds']} open fds of {limit}")
    tcp_max = lim["tcp_max_connections"]
    origin = f" (from {lim['tcp_max_connections_from']})" if lim.get("tcp_max_connections_from") else ""
    if tcp_max:
        pct = 100 * lim["tcp_connections"] / tcp_max
        lines.append(
            f"    TCP connections {lim['tcp_connections']} of tcp_max_connections {tcp_max}{origin}: {pct:.0f}%"
        )
    else:
        lines.append(f"    TCP connections {lim['tcp_connections']}; tcp_max_connections unknown{origin}")
    for port, n in lim["per_port"].items():
        lines.append(f"      port {port}: {n}")
    return lines
