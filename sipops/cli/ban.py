"""`sipops watch`, `sipops ban`, `sipops unban`, `sipops bans`: thin commands over the watcher, journal and backend.

They act on this machine (the watcher service runs them on each host). register(app) adds them to the CLI.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from sipops.cli.options import JsonOpt, bad_input
from sipops.errors import ExitCode, InputError

JournalOpt = Annotated[
    Path | None, typer.Option("--journal", help="Ban journal [default: /var/lib/sipops/bans.sqlite]")
]
BackendOpt = Annotated[str, typer.Option("--backend", help="auto | nftables | ipset")]
MAX_PORT_ROWS = 12
AllowOpt = Annotated[list[str] | None, typer.Option("--allow", help="Never ban this IP/CIDR/name (repeat)")]


_fail = bad_input  # the one error line (sipops.cli.options), exit 2


MAX_BAN_SECONDS = 365 * 86400  # a year: longer is a firewall rule, not a ban


def _duration(text: str, field: str) -> int:
    import re

    from sipops.host.monitor.ban import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InputError(str(exc), field=field) from None
    if all(float(n) == 0 for n in re.findall(r"[0-9.]+", text)):
        raise InputError(f"{text!r} is no time at all: give at least 1s", field=field)
    if seconds > MAX_BAN_SECONDS:
        raise InputError(f"{text!r} is longer than a year (365d)", field=field)
    return seconds


def _addresses(values: list[str]) -> list[str]:
    from sipops.host.monitor.ban import normalize

    out = []
    for v in values:
        try:
            out.append(normalize(v))
        except ValueError:
            raise InputError(f"not an IP address or CIDR: {v!r}", field="ADDR") from None
    return out


def _backend(kind: str) -> Any:
    from sipops.host.monitor.ban import default_backend

    if kind not in ("auto", "nftables", "ipset"):
        raise InputError(f"unknown backend {kind!r}: auto, nftables or ipset", field="--backend")
    return default_backend(kind)


def _journal(path: Path | None) -> Any:
    """The ban journal; a file that is not one (a directory, a FIFO, other bytes) is one line, exit 2."""
    import sqlite3
    import stat

    from sipops.host.monitor.journal import Journal, default_path

    where = path or default_path()
    try:
        st = where.stat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InputError(f"{where}: {exc.strerror}", field="--journal") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise InputError(f"{where} is not a regular file (a ban journal is an SQLite file)", field="--journal")
    if st is not None and st.st_size:
        try:
            with open(where, "rb") as f:
                head = f.read(16)
        except OSError as exc:
            raise InputError(f"{where}: {exc.strerror}", field="--journal") from None
        if head != b"SQLite format 3\x00":
            raise InputError(f"{where} is not an SQLite database (not a ban journal)", field="--journal")
    try:
        return Journal(where)
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{where}: {exc}", field="--journal") from None


def _allowlist(allow: list[str] | None, configured: Sequence[str] = ()) -> Any:
    """--allow entries (checked: one line naming --allow) on top of the settings' watch_allow."""
    import re
    from ipaddress import ip_network

    from sipops.host.monitor import allow as allowmod

    for a in allow or []:
        try:
            ip_network(a.strip(), strict=False)
        except ValueError:
            if not re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62}\.?)*[A-Za-z0-9]?", a.strip()):
                raise InputError(f"not an IP, CIDR or host name: {a!r}", field="--allow") from None
    return allowmod.build([(a, "watch.json") for a in configured] + [(a, "--allow") for a in allow or []])


def _watch_settings(config: Path | None, flags: dict[str, tuple[str, Any]]) -> Any:
    """watch.json (or the common role's defaults) with the flags given on top; one line on anything wrong."""
    from sipops.host.monitor import watchconf
    from sipops.monitor.watchdefaults import role_defaults

    try:
        base = watchconf.read(config) if config is not None else role_defaults()
        where = {"*": str(config) if config is not None else "the common role's defaults"}
        where.update({k: flag for k, (flag, _) in flags.items()})
        return watchconf.settings({**base, **{k: v for k, (_, v) in flags.items()}}, where)
    except watchconf.WatchConfigError as exc:
        raise InputError(str(exc)) from None


def ban_command(
    addresses: Annotated[list[str], typer.Argument(metavar="ADDR...", help="IP addresses or CIDRs")],
    duration: Annotated[str, typer.Option("--for", help="Ban duration: 90s, 10m, 1h, 2d")] = "1h",
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the journal and the log)")] = "manual",
    force: Annotated[bool, typer.Option("--force", help="Ban even an allowlisted address")] = False,
    allow: AllowOpt = None,
    journal: JournalOpt = None,
    backend: BackendOpt = "auto",
    fleet: Annotated[
        bool, typer.Option("--fleet", help="Also ban on every host through the fleet's CrowdSec LAPI")
    ] = False,
) -> None:
    """Ban addresses now (kernel set + journal); their connections are closed."""
    from sipops.host.monitor.ban import Ban, BanBackendError
    from sipops.host.monitor.journal import NewBan
    from sipops.host.monitor.scan import close_connections
    from sipops.host.monitor.watch import format_event, syslog_sink

    try:
        addrs = _addresses(addresses)
        seconds = _duration(duration, "--for")
        allowlist = _allowlist(allow)
        if not force:
            for a in addrs:
                why = allowlist.why(a)
                if why:
                    raise InputError(f"{a} is allowlisted ({why}); --force to ban it anyway", field="ADDR")
        be = _backend(backend)
        jr = _journal(journal)
    except InputError as exc:
        _fail(exc)
    records = jr.record([NewBan(a, "manual", reason, seconds) for a in addrs])
    now = time.time()
    try:
        be.start()
        be.refresh([Ban(r.address, seconds, "manual", remaining=round(r.until - now)) for r in records])
    except BanBackendError as exc:
        jr.unban(addrs)
        typer.echo(f"sipops: {exc}", err=True)
        raise typer.Exit(ExitCode.FAILURE) from None
    closed = 0
    try:
        closed = close_connections(addrs)
    except OSError as exc:
        typer.echo(f"sipops: connections not closed: {exc}", err=True)
    for r in records:
        syslog_sink(format_event("ban", r.address, "manual", r.until, reason, seconds=seconds, count=r.count))
        typer.echo(f"banned {r.address} for {duration} (ban #{r.count})")
    if closed:
        typer.echo(f"closed {closed} connections")
    if fleet:  # the other hosts: through the LAPI (sipops.host.monitor.fleetops)
        from sipops.host.monitor.fleetops import push_manual

        line = push_manual([r.address for r in records], seconds, reason)
        typer.echo(line, err=line.startswith("sipops: error"))
        if line.startswith("sipops: error"):
            raise typer.Exit(ExitCode.FAILURE)


def _kernel(be: Any) -> tuple[list[Any] | None, str]:
    """The ban sets' elements (kernelbans.read), or None and why they could not be read."""
    from sipops.host.monitor import kernelbans
    from sipops.host.monitor.ban import BanBackendError

    try:
        return kernelbans.read(be), ""
    except BanBackendError as exc:
        return None, str(exc).splitlines()[0]


def unban_command(
    addresses: Annotated[list[str], typer.Argument(metavar="ADDR...", help="IP addresses or CIDRs")],
    journal: JournalOpt = None,
    backend: BackendOpt = "auto",
) -> None:
    """Lift bans in the kernel and the journal (they stay lifted across restarts); says what was removed where."""
    from sipops.host.monitor.ban import BanBackendError, format_duration
    from sipops.host.monitor.watch import format_event, syslog_sink

    try:
        addrs = _addresses(addresses)
        be = _backend(backend)
        jr = _journal(journal)
    except InputError as exc:
        _fail(exc)
    kernel, why = _kernel(be)  # read first: the answer says what was there, whoever put it there
    before = {k.address: k for k in kernel or []}
    was_live = set(jr.unban(addrs))
    try:
        be.unban(addrs)
    except BanBackendError as exc:
        typer.echo(f"sipops: {exc}", err=True)
        raise typer.Exit(ExitCode.FAILURE) from None
    for a in addrs:
        k = before.get(a)
        places = []
        if k is not None:
            left = f", {format_duration(k.expires)} left" if k.expires is not None else ""
            places.append(f"the kernel ({be.name} set {k.set_name}, rule {k.rule}{left})")
        if a in was_live:
            places.append("the journal")
        if kernel is None:
            places.append(f"the kernel if it was there (its sets could not be read: {why})")
        if not places:
            typer.echo(f"{a} was not banned (neither in the kernel nor in the journal): nothing removed")
            continue
        rule = k.rule if k is not None else "manual"
        syslog_sink(format_event("unban", a, rule, None, "operator"))
        typer.echo(f"unbanned {a}: removed from " + " and ".join(places))


def bans_command(
    as_json: JsonOpt = False,
    show_all: Annotated[bool, typer.Option("--all", help="Expired and lifted bans too")] = False,
    journal: JournalOpt = None,
    backend: BackendOpt = "auto",
) -> None:
    """List live bans: the kernel sets (the truth of what is dropped) merged with the journal (rule, evidence)."""
    from sipops.host.monitor import kernelbans
    from sipops.host.monitor.ban import format_duration
    from sipops.host.monitor.fleetops import fleet_rows

    try:
        be = _backend(backend)
        jr = _journal(journal)
    except InputError as exc:
        _fail(exc)
    now = time.time()
    kernel, why = _kernel(be)
    if kernel is None:
        typer.echo(f"sipops: the kernel's ban sets could not be read ({why}): the journal alone is shown", err=True)
    records = jr.all() if show_all else jr.live()
    fleet = fleet_rows(now)  # decisions applied from the CrowdSec LAPI, with their origin
    rows = kernelbans.merge(kernel or [], records, now, (f["address"] for f in fleet))
    if kernel is None:
        for row in rows:
            row["in_kernel"] = None  # unknown
    if as_json:
        typer.echo(json.dumps(rows + fleet, indent=2))
        return
    if not rows and not fleet:
        typer.echo("no bans")
        return
    typer.echo(f"{'ADDRESS':<40} {'RULE':<12} {'LEFT':>9} {'#':>3}  {'ORIGIN':<13} {'WHERE':<15} EVIDENCE")
    for r in rows:
        live = r["live"]
        left = "lifted" if r["unbanned"] else format_duration(r["remaining"]) if live else "expired"
        where = _where(r)
        line = f"{r['address']:<40} {r['rule']:<12} {left:>9} {r['count']:>3}  {r['origin']:<13} {where:<15} "
        typer.echo(line + r["evidence"])
    for f in fleet:
        left = format_duration(f["left"])
        line = f"{f['address']:<40} {'crowdsec':<12} {left:>9} {'-':>3}  {f['origin']:<13} {'kernel':<15} "
        typer.echo(line + str(f["scenario"]))


def _where(row: dict[str, Any]) -> str:
    """kernel+journal, kernel (not journaled: a meter's, not yet seen by the watcher), journal (NOT dropped)."""
    journaled = row["origin"] == "local"
    if row["in_kernel"] is None:
        return "journal"
    if row["in_kernel"]:
        return "kernel+journal" if journaled else "kernel"
    return "journal only" if row["live"] else "journal"


def watch_command(
    ban: Annotated[
        bool, typer.Option("--ban", help="Ban in the kernel (default: report what would be banned)")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Settings: watch.json (the service: /etc/sipops/watch.json) [default: the common role's defaults]",
        ),
    ] = None,
    check_config: Annotated[
        bool, typer.Option("--check-config", help="Check the settings (--config and flags), say what they are, exit")
    ] = False,
    port: Annotated[
        list[int] | None, typer.Option("--port", "-p", min=1, max=65535, help="Local port to watch (repeat)")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Two polls one interval apart, then exit (for cron)")] = False,
    interval: Annotated[float | None, typer.Option("--interval", help="Seconds between polls")] = None,
    max_conns: Annotated[
        int | None,
        typer.Option("--max-conns", min=1, help="Connections per IP (flood_max_conns_per_ip; also the burst)"),
    ] = None,
    new_per_sec: Annotated[
        float | None, typer.Option("--new-per-sec", help="New connections per IP per second after the burst")
    ] = None,
    flood_per_sec: Annotated[
        float | None, typer.Option("--flood-per-sec", help="The flood line: new connections per IP per second")
    ] = None,
    syn_recv: Annotated[int | None, typer.Option("--syn-recv", min=1, help="SYN_RECV sockets per IP")] = None,
    ban_for: Annotated[str | None, typer.Option("--ban-for", help="First ban duration")] = None,
    syn_ban_for: Annotated[str | None, typer.Option("--syn-ban-for", help="Ban duration on SYN evidence")] = None,
    ban_factor: Annotated[
        float | None, typer.Option("--ban-factor", help="Each repeat ban lasts this many times longer")
    ] = None,
    ban_max: Annotated[str | None, typer.Option("--ban-max", help="Longest ban")] = None,
    tcp_max_connections: Annotated[
        int | None, typer.Option("--tcp-max-connections", min=1, help="OpenSIPS limit")
    ] = None,
    close_wait: Annotated[
        int | None, typer.Option("--close-wait", min=1, help="CLOSE_WAIT sockets per port to alert")
    ] = None,
    sip_log: Annotated[str | None, typer.Option("--sip-log", help="OpenSIPS log to follow")] = None,
    scanner_ban_for: Annotated[str | None, typer.Option("--scanner-ban-for", help="Ban of SIP scanners")] = None,
    allow: AllowOpt = None,
    journal: JournalOpt = None,
    backend: BackendOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per poll")] = False,
    max_polls: Annotated[int, typer.Option("--max-polls", hidden=True)] = 0,
) -> None:
    """Monitor connections; with --ban block abusive IPs in the kernel within a poll.

    Thresholds: watch.json (--config), else the common role's defaults; a flag overrides one of them."""
    from sipops.host.monitor.siplog import SipLogRules
    from sipops.host.monitor.watch import WatchConfig, Watcher

    flags = {  # role variable (watch.json key) -> (flag, value given)
        "watch_ports": ("--port", sorted(set(port)) if port else None),
        "watch_interval": ("--interval", interval),
        "flood_max_conns_per_ip": ("--max-conns", max_conns),
        "flood_syn_per_sec": ("--new-per-sec", new_per_sec),
        "flood_line_syn_per_sec": ("--flood-per-sec", flood_per_sec),
        "watch_syn_recv_per_ip": ("--syn-recv", syn_recv),
        "ban_timeout": ("--ban-for", ban_for),
        "watch_syn_ban_timeout": ("--syn-ban-for", syn_ban_for),
        "watch_ban_factor": ("--ban-factor", ban_factor),
        "watch_ban_max": ("--ban-max", ban_max),
        "tcp_max_connections": ("--tcp-max-connections", tcp_max_connections),
        "watch_close_wait_alert": ("--close-wait", close_wait),
        "log_file": ("--sip-log", sip_log),
        "watch_scanner_ban_timeout": ("--scanner-ban-for", scanner_ban_for),
    }
    try:
        for key, (flag, value) in flags.items():
            if isinstance(value, str) and key.endswith(("timeout", "_max")):
                _duration(value, flag)  # a flag's own checks: zero, longer than a year
        settings = _watch_settings(config, {k: fv for k, fv in flags.items() if fv[1] is not None})
        if check_config:
            t = settings.thresholds
            typer.echo(f"{config or 'defaults'}: OK: {t.max_conns_per_ip} connections per source (burst), "
                       f"{t.new_per_sec:g}/s after it, flood line {t.flood_per_sec:g}/s (burst {t.flood_burst}), "
                       f"ports {settings.ports or 'all'}")  # fmt: skip
            return
        config_obj = WatchConfig(
            ports=settings.ports,
            thresholds=settings.thresholds,
            ban=ban,
            ban_factor=settings.ban_factor,
            ban_max=settings.ban_max,
            sip_log=settings.sip_log,
            # A person watching the live table, or --once for cron, gets every state afresh each poll;
            # the service skips full scans while the counters prove no rule can fire (watch.py).
            full_scan_every=0.0 if once or (not as_json and sys.stdout.isatty()) else 10.0,
            sip_rules=SipLogRules(
                scanner_ban_seconds=settings.scanner_ban_seconds, pike_ban_seconds=settings.pike_ban_seconds
            ),
        )
        every: float = settings.interval
        allowlist = _allowlist(allow, settings.allow)
        be = _backend(backend) if ban else None
        jr = _journal(journal) if ban else None
    except InputError as exc:
        _fail(exc)
    watcher = Watcher(config_obj, jr, be, allowlist)
    if ban:  # fleet-wide bans through CrowdSec, when install/push registered this host's credentials
        watcher.fleet = _fleet_link(allowlist)
    restored = watcher.start()
    live = not once and not as_json and sys.stdout.isatty()
    if not as_json:
        mode = f"banning via {be.name}" if be else "report only (no --ban)"
        typer.echo(f"sipops watch: {mode}; {restored} live bans restored; {len(allowlist.entries())} allowlist entries")
    polls, failures = 0, 0
    try:
        while True:
            started = time.monotonic()
            result = watcher.poll()
            polls += 1
            failures += bool(result.errors)
            if not once or polls == 2:
                _print_poll(result, watcher, sys.stdout, live=live or once, as_json=as_json, clear=live)
            if (once and polls >= 2) or (max_polls and polls >= max_polls):
                break
            time.sleep(max(0.0, every - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass
    raise typer.Exit(ExitCode.FAILURE if failures else ExitCode.OK)


def _fleet_link(allowlist: Any) -> Any:
    from sipops.host.monitor.fleetlink import CREDENTIALS, from_credentials

    try:
        link = from_credentials(allowlist)
    except (OSError, ValueError, KeyError) as exc:  # local bans go on without the fleet
        typer.echo(f"sipops watch: CrowdSec link off: {CREDENTIALS}: {exc}".splitlines()[0], err=True)
        return None
    if link is not None:
        typer.echo(f"sipops watch: CrowdSec LAPI {link.client.url} as {link.host} (push bans, apply decisions)")
    return link


def _print_poll(result: Any, watcher: Any, out: TextIO, *, live: bool, as_json: bool, clear: bool = False) -> None:
    from sipops.host.monitor.scan import table_to_dict

    verb = "banned" if watcher.backend is not None else "would ban"
    if as_json:
        data = {
            "table": table_to_dict(result.table) if result.table else None,
            verb.replace(" ", "_"): [
                {
                    "address": r.address,
                    "rule": r.rule,
                    "seconds": round(r.until - r.since),
                    "evidence": r.evidence,
                    "count": r.count,
                }
                for r in result.banned
            ],
            "alerts": [v.describe() for v in result.alerts],
            "errors": result.errors,
            "closed": result.closed,
            "full_scan": result.full_scan,
        }
        out.write(json.dumps(data) + "\n")
        out.flush()
        return
    lines = []
    table = result.table
    stamp = time.strftime("%H:%M:%S")
    if table is not None:
        head = f"{stamp} {table.source} scan {table.elapsed * 1000:.1f} ms, {sum(table.counts.values())} sockets"
        lines.append(head + (f" (fallback: {table.fallback_reason})" if table.fallback else ""))
        busiest = sorted(table.ports.items(), key=lambda kv: (-kv[1].total, kv[0]))
        for p, stats in sorted(busiest[:MAX_PORT_ROWS]):
            states = " ".join(f"{s.label}={n}" for s, n in stats.states.items())
            top = ", ".join(f"{ip}={n}" for ip, n in table.top(p, 3))
            lines.append(
                f"  port {p:<5} total={stats.total} new={stats.new} ips={stats.remote_ips}  {states}  top: {top}"
            )
        if len(busiest) > MAX_PORT_ROWS:
            lines.append(f"  … {len(busiest) - MAX_PORT_ROWS} more local ports (--port to choose)")
    for r in result.banned:
        lines.append(f"  {verb} {r.address} rule={r.rule} for {round(r.until - r.since)}s  {r.evidence}")
    for v in result.alerts:
        lines.append(f"  ALERT {v.describe()}")
    for e in result.errors:
        lines.append(f"  ERROR {e}")
    if clear:
        out.write("\x1b[H\x1b[2J")
    elif not live and not (result.banned or result.alerts or result.errors):
        return  # a service log: quiet polls leave no line
    out.write("\n".join(lines) + "\n")
    out.flush()


def register(app: typer.Typer) -> None:
    """Add watch, ban, unban and bans to the sipops CLI."""
    app.command("watch")(watch_command)
    app.command("ban")(ban_command)
    app.command("unban")(unban_command)
    app.command("bans")(bans_command)
