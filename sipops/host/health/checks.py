"""The checks that read the host itself: process, sockets, SIP OPTIONS, TCP, fds, log, disk, watcher.

Each check is `(config, sources, state) -> CheckResult`; `state` is the check's own dict, kept
between runs by the runner (restarts and the log cursor need it).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sipops.host.health import procfs
from sipops.host.health.config import HealthConfig, Socket
from sipops.host.health.logscan import scan
from sipops.host.health.model import CheckResult, Metric, Status, level, worst
from sipops.host.health.sources import Sources
from sipops.host.sip import OptionsResult

TCP_BASED = ("tcp", "tls", "ws", "wss")


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2) if whole > 0 else 0.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def check_process(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """OpenSIPS running, its uptime, and whether it restarted since the last run."""
    procs = src.processes()
    main = procfs.main_process(procs, src.pid_from_file())
    if main is None:
        state["running"] = False
        return CheckResult("process", Status.CRITICAL, f"{cfg.process_name} is not running")
    procs = procfs.family(procs, main)
    uptime = max(0.0, src.now() - main.started)
    seen_before = "started" in state
    restarted = seen_before and (
        not state.get("running", True) or state.get("pid") != main.pid or abs(state["started"] - main.started) > 1
    )
    state.update(running=True, pid=main.pid, started=main.started)
    state["restarts_total"] = int(state.get("restarts_total", 0)) + int(restarted)
    metrics = [
        Metric("uptime", round(uptime, 1), "s", minimum=0, help="seconds since the OpenSIPS main process started"),
        Metric("restarts", int(restarted), "", minimum=0, help="OpenSIPS (re)starts seen since the previous run"),
        Metric("processes", len(procs), "", minimum=0, help="OpenSIPS processes"),
    ]
    text = f"{cfg.process_name} pid {main.pid} up {_duration(uptime)}, {len(procs)} processes"
    if restarted:
        return CheckResult("process", Status.WARNING, f"restarted since the last run: {text}", metrics)
    return CheckResult("process", Status.OK, text, metrics)


def _no_sockets(name: str) -> CheckResult:
    return CheckResult(name, Status.UNKNOWN, "no SIP sockets configured (is /etc/sipops/health.json there?)")


def check_sockets(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """Every configured socket is bound (UDP) or listening (TCP-based)."""
    if not cfg.sockets:
        return _no_sockets("sockets")
    found = src.listening()
    missing: list[str] = []
    metrics: list[Metric] = []
    for s in cfg.sockets:
        kind = "udp" if s.proto == "udp" else "tcp"
        up = procfs.is_listening(found, kind, s.address, s.port)
        metrics.append(
            Metric("socket_listening", int(up), minimum=0, maximum=1, labels={"socket": str(s)}, help="1 when bound")
        )
        if not up:
            missing.append(str(s))
    if missing:
        return CheckResult("sockets", Status.CRITICAL, f"not listening: {', '.join(missing)}", metrics)
    return CheckResult("sockets", Status.OK, f"{len(cfg.sockets)} sockets listening", metrics)


def _probe_address(s: Socket) -> str:
    """A wildcard socket is probed on loopback of its family."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(s.address, s.address)


def check_sip_options(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """SIP OPTIONS answered on every UDP and TCP socket; any final response is alive."""
    probed = [s for s in cfg.sockets if s.proto in ("udp", "tcp")]
    if not probed:
        return (
            _no_sockets("sip_options")
            if not cfg.sockets
            else CheckResult("sip_options", Status.UNKNOWN, "no UDP or TCP socket to probe")
        )
    t = cfg.thresholds
    timeout = t.options_timeout_ms / 1000
    with ThreadPoolExecutor(max_workers=min(8, len(probed))) as pool:
        results: list[OptionsResult] = list(
            pool.map(lambda s: src.options(s.proto, _probe_address(s), s.port, timeout), probed)
        )
    statuses: list[Status] = []
    metrics: list[Metric] = []
    parts: list[str] = []
    warn_s = t.options_rtt_warning_ms / 1000 if t.options_rtt_warning_ms is not None else None
    for s, r in [(probed[i], results[i]) for i in range(len(probed))]:  # zip(strict=) needs 3.10
        labels = {"socket": str(s)}
        metrics.append(
            Metric(
                "sip_options_up", int(r.alive), minimum=0, maximum=1, labels=labels, help="1 when OPTIONS is answered"
            )
        )
        if not r.alive:
            statuses.append(Status.CRITICAL)
            parts.append(f"{s}: {r.error}")
            continue
        assert r.rtt is not None
        statuses.append(level(r.rtt, warn_s, None))
        parts.append(f"{s}: {r.code} in {r.rtt * 1000:.1f} ms")
        metrics.append(
            Metric("sip_options_rtt", round(r.rtt, 6), "s", warn_s, timeout, 0, None, labels, "OPTIONS round trip")
        )
    status = worst(statuses)
    bad = [parts[i] for i, st in enumerate(statuses) if st != Status.OK]
    shown = bad if bad else parts
    return CheckResult("sip_options", status, "; ".join(shown), metrics)


def check_tcp_conns(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """TCP connections on the SIP ports against tcp_max_connections."""
    ports = {s.port for s in cfg.sockets if s.proto in TCP_BASED}
    if not ports:
        return CheckResult("tcp_conns", Status.OK, "no TCP-based SIP socket")
    count = src.tcp_connections(ports)
    limit = cfg.tcp_max_connections
    t = cfg.thresholds
    pct = _pct(count, limit)
    status = level(pct, t.tcp_conns_warning, t.tcp_conns_critical)
    warn = limit * t.tcp_conns_warning / 100 if t.tcp_conns_warning is not None else None
    crit = limit * t.tcp_conns_critical / 100 if t.tcp_conns_critical is not None else None
    metrics = [Metric("tcp_connections", count, "", warn, crit, 0, limit, help="TCP connections on the SIP ports")]
    return CheckResult("tcp_conns", status, f"{count} of tcp_max_connections {limit} ({pct:g}%)", metrics)


def check_fds(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """Open file descriptors of the fullest OpenSIPS process against its limit."""
    procs = src.processes()
    if not procs:
        return CheckResult("fds", Status.UNKNOWN, f"{cfg.process_name} is not running")
    main = procfs.main_process(procs, src.pid_from_file())
    procs = procfs.family(procs, main) if main is not None else procs
    known = [p for p in procs if p.fds is not None and p.fd_limit]
    if not known:
        return CheckResult("fds", Status.UNKNOWN, "cannot read /proc/PID/fd of opensips (run as root)")
    fullest = max(known, key=lambda p: (p.fds or 0) / (p.fd_limit or 1))
    assert fullest.fds is not None and fullest.fd_limit is not None
    t = cfg.thresholds
    pct = _pct(fullest.fds, fullest.fd_limit)
    status = level(pct, t.fds_warning, t.fds_critical)
    text = f"pid {fullest.pid}: {fullest.fds} of {fullest.fd_limit} open files ({pct:g}%)"
    if cfg.open_files_limit and fullest.fd_limit < cfg.open_files_limit:
        status = worst([status, Status.WARNING])
        text += f"; limit is below open_files_limit {cfg.open_files_limit}"
    warn = fullest.fd_limit * t.fds_warning / 100 if t.fds_warning is not None else None
    crit = fullest.fd_limit * t.fds_critical / 100 if t.fds_critical is not None else None
    metrics = [
        Metric("open_fds", fullest.fds, "", warn, crit, 0, fullest.fd_limit, help="open fds of the fullest process")
    ]
    return CheckResult("fds", status, text, metrics)


def check_log_errors(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """New ERROR/CRITICAL lines in the OpenSIPS log since the last run."""
    result = scan(cfg.log_file, state.get("cursor"))
    state["cursor"] = result.state
    notes = "; ".join(result.notes)
    if result.started:
        text = f"reading {cfg.log_file} from now on" if result.state.get("current") else f"{cfg.log_file} not there yet"
        return CheckResult("log_errors", Status.OK, text, [Metric("log_error_lines", 0, "", minimum=0)])
    count = result.errors + result.crits
    t = cfg.thresholds
    status = level(count, t.log_errors_warning, t.log_errors_critical)
    metrics = [
        Metric("log_error_lines", count, "", t.log_errors_warning, t.log_errors_critical, 0,
               help="new ERROR/CRITICAL lines in the OpenSIPS log since the previous run"),
        Metric("log_lines", result.lines, "", minimum=0, help="new lines in the OpenSIPS log since the previous run"),
    ]  # fmt: skip
    if count:
        text = f"{count} new error lines ({result.crits} critical) in {cfg.log_file}, first: {result.sample}"
    elif "current" not in result.state:
        return CheckResult("log_errors", Status.UNKNOWN, notes or f"{cfg.log_file} does not exist", metrics)
    else:
        text = f"no new error lines in {cfg.log_file} ({result.lines} new lines)"
    return CheckResult("log_errors", status, f"{text}; {notes}" if notes else text, metrics)


def check_disk(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """Free space of the partition that holds the OpenSIPS log."""
    directory = os.path.dirname(cfg.log_file) or "/"
    try:
        total, avail = src.disk(directory)
    except OSError as exc:
        return CheckResult("disk", Status.UNKNOWN, f"{directory}: {exc.strerror or exc}")
    t = cfg.thresholds
    pct = _pct(avail, total)
    status = level(pct, t.disk_free_warning, t.disk_free_critical, below=True)
    metrics = [
        Metric("log_disk_free", pct, "%", t.disk_free_warning, t.disk_free_critical, 0, 100,
               help="free space of the log partition, percent"),
        Metric("log_disk_free_bytes", avail, "B", minimum=0, maximum=total, help="free bytes of the log partition"),
    ]  # fmt: skip
    return CheckResult("disk", status, f"{directory}: {avail / 2**30:.1f} GiB free ({pct:g}%)", metrics)


def check_watcher(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """The ban watcher service is active."""
    unit = cfg.watcher_unit
    active = src.service_state(unit)
    metric = [Metric("watcher_active", int(active == "active"), minimum=0, maximum=1, help="1 when the watcher runs")]
    if active == "active":
        return CheckResult("watcher", Status.OK, f"{unit} is active", metric)
    if active == "not-found":
        return CheckResult("watcher", Status.WARNING, f"{unit} is not installed", metric)
    if active == "failed":
        return CheckResult("watcher", Status.CRITICAL, f"{unit} has failed", metric)
    if active in ("inactive", "deactivating", "activating", "reloading"):
        return CheckResult("watcher", Status.WARNING, f"{unit} is {active}", metric)
    return CheckResult("watcher", Status.UNKNOWN, f"{unit}: {active}", metric)


def check_bans(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """The number of live bans: every element of the kernel sets, and journaled bans the kernel lacks."""
    count, why = src.bans()
    if count is None:
        return CheckResult("bans", Status.UNKNOWN, why)
    t = cfg.thresholds
    status = level(count, t.bans_warning, t.bans_critical)
    metric = Metric("bans", count, "", t.bans_warning, t.bans_critical, 0, help="live bans (kernel sets and journal)")
    # why, on success: what the count holds besides journaled bans (kernel meter bans, gaps)
    return CheckResult("bans", status, f"{count} live bans" + (f" ({why})" if why else ""), [metric])
