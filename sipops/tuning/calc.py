"""The tune-tcp calculator: one target (concurrent inbound TCP/TLS connections) and a host's facts in,
every TCP and file-descriptor setting out, each with a one-line reason. Pure: no I/O.

A value already better than the computed one is kept unless `allow_lower`; a key this host cannot
set (a container: fs.* and the init-netns-only net.core keys) is marked "host" (set it on the
container host) instead of being written where it would fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_CONNECTIONS = 4_000_000  # beyond this, one host is the wrong answer (and fs.nr_open tops out at 2^30)
SHM_BASE_MB = 64
SHM_KB_PER_CONN = 16  # struct tcp_connection + its read buffer state in shared memory, rounded up
NR_OPEN_DEFAULT = 1_048_576

# Setting kinds: where a value ends up.
SYSCTL, LIMITS, SYSTEMD, OPENSIPS = "sysctl", "limits", "systemd", "opensips"
# Actions: set (change it), ok (already the target), keep (already better: kept), lower (--allow-lower),
# host (this host cannot set it: the container host must).
SET, OK, KEEP, LOWER, HOST = "set", "ok", "keep", "lower", "host"

# Per-netns keys a container (own network namespace) can set; everything else under net.core is global.
NETNS_CORE = ("net.core.somaxconn",)


@dataclass(frozen=True)
class TuneFacts:
    """What the host has now (None: unknown or absent)."""

    mem_mb: int
    cpus: int
    container: str | None = None  # "systemd-nspawn", "docker", ... ; None: not in a container
    sysctl: dict[str, str | None] = field(default_factory=dict)  # live values, whitespace-normalised
    writable: dict[str, bool] = field(default_factory=dict)  # /proc/sys/<key> is writable here
    limit_nofile: int | None = None  # LimitNOFILE of the OpenSIPS unit (systemctl show)
    user_nofile: int | None = None  # hard nofile of the OpenSIPS user in limits.conf/limits.d
    process_nofile: int | None = None  # soft "Max open files" of the running OpenSIPS
    opensips: dict[str, int] = field(default_factory=dict)  # live cfg params and shm_mb (-m)


@dataclass(frozen=True)
class TuneRequest:
    max_connections: int
    allow_lower: bool = False
    outbound_tcp: bool = False  # the host also opens TCP/TLS to gateways


@dataclass(frozen=True)
class Target:
    key: str  # sysctl name, or nofile / LimitNOFILE / an OpenSIPS parameter
    kind: str  # sysctl | limits | systemd | opensips
    current: str | None
    target: str
    action: str  # set | ok | keep | lower | host
    reason: str
    var: str  # the inventory/template variable that carries it ("sysctl" for the map)
    settable: bool = True  # False: only the container host can set it (never written here)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "current": self.current,
            "target": self.target,
            "action": self.action,
            "reason": self.reason,
        }


class TuneInputError(ValueError):
    """max_connections out of range (the CLI turns it into one line, exit 2)."""


def check_max_connections(n: int) -> None:
    if n <= 0:
        raise TuneInputError(f"must be a positive number of connections, got {n}")
    if n > MAX_CONNECTIONS:
        raise TuneInputError(
            f"{n} is more than one host can hold (at most {MAX_CONNECTIONS}); spread the connections over hosts"
        )


def round_up(value: int, step: int) -> int:
    return int(math.ceil(value / step) * step)


def nofile_for(n: int) -> int:
    """Descriptors OpenSIPS needs: one per connection plus listeners, IPC, logs and DB, and 10% slack."""
    return round_up(n + max(1024, n // 10), 1024)


# ---- comparison: which of two values is "more" of what the key is for --------------------------


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).split()[0]) if value is not None else None
    except ValueError:
        return None


def _width(value: str | None) -> int | None:
    parts = str(value).split() if value is not None else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[1]) - int(parts[0])


def _better(better: str, a: str, b: str) -> bool:
    """True when value `a` is strictly better than `b` for this kind of key."""
    if better == "higher":
        ia, ib = _int(a), _int(b)
        return ia is not None and ib is not None and ia > ib
    if better == "lower":  # timeouts: shorter is stricter
        ia, ib = _int(a), _int(b)
        return ia is not None and ib is not None and ia < ib
    if better == "wider":
        wa, wb = _width(a), _width(b)
        return wa is not None and wb is not None and wa > wb
    return False  # exact: only the target itself is right


def _same(a: str | None, b: str) -> bool:
    return a is not None and " ".join(a.split()) == " ".join(b.split())


def decide(current: str | None, target: str, better: str, allow_lower: bool) -> tuple[str, str]:
    """(action, final target) for one key."""
    if _same(current, target):
        return OK, target
    if current is not None and _better(better, current, target):
        return (LOWER, target) if allow_lower else (KEEP, current)
    return SET, target


# ---- the calculation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    key: str
    kind: str
    var: str
    better: str
    value: Callable[[int, TuneFacts, TuneRequest], str]
    reason: str


def _somaxconn(n: int, _f: TuneFacts, _r: TuneRequest) -> str:
    return str(min(65535, max(4096, n)))


def _syn_backlog(n: int, _f: TuneFacts, _r: TuneRequest) -> str:
    return str(min(262144, max(8192, 2 * n)))


def _netdev(n: int, _f: TuneFacts, _r: TuneRequest) -> str:
    return "16384" if n > 10000 else "4096"


def _file_max(n: int, _f: TuneFacts, _r: TuneRequest) -> str:
    return str(2 * nofile_for(n) + 65536)


def _nr_open(n: int, _f: TuneFacts, _r: TuneRequest) -> str:
    return str(max(NR_OPEN_DEFAULT, nofile_for(n)))


def _workers(n: int, f: TuneFacts, _r: TuneRequest) -> str:
    return str(min(64, max(2, f.cpus, math.ceil(n / 10000))))


def _shm(n: int, f: TuneFacts, _r: TuneRequest) -> str:
    want = round_up(SHM_BASE_MB + math.ceil(n * SHM_KB_PER_CONN / 1024), 32)
    return str(min(want, max(SHM_BASE_MB, f.mem_mb // 2)))


def _const(value: str) -> Callable[[int, TuneFacts, TuneRequest], str]:
    return lambda _n, _f, _r: value


SPECS: tuple[_Spec, ...] = (
    _Spec("fs.file-max", SYSCTL, "sysctl", "higher", _file_max,
          "system-wide open files: OpenSIPS's {nofile} plus room for the rest of the host"),
    _Spec("fs.nr_open", SYSCTL, "sysctl", "higher", _nr_open,
          "ceiling of any process's nofile: must be at least {nofile}"),
    _Spec("nofile", LIMITS, "open_files_limit", "higher", lambda n, f, r: str(nofile_for(n)),
          "soft/hard nofile of the opensips user: {n} connections + {reserve} for listeners, IPC, logs, DB"),
    _Spec("LimitNOFILE", SYSTEMD, "open_files_limit", "higher", lambda n, f, r: str(nofile_for(n)),
          "systemd ignores limits.d: the service's own limit, one descriptor per connection + {reserve}"),
    _Spec("open_files_limit", OPENSIPS, "open_files_limit", "higher", lambda n, f, r: str(nofile_for(n)),
          "OpenSIPS raises its own limit to this at start-up"),
    _Spec("tcp_max_connections", OPENSIPS, "tcp_max_connections", "higher", lambda n, f, r: str(n),
          "inbound TCP/TLS connections OpenSIPS accepts; connection {n1} is refused"),
    _Spec("tcp_workers", OPENSIPS, "tcp_workers", "higher", _workers,
          "TCP main holds the connections, workers parse their traffic: one per core ({cpus}), +1 per 10k"),
    _Spec("shm_mb", OPENSIPS, "shm_mb", "higher", _shm,
          "shared memory (-m): {shm_base} MB base + ~{shm_kb} KB per connection{shm_cap}"),
    _Spec("net.core.somaxconn", SYSCTL, "somaxconn", "higher", _somaxconn,
          "accept queue: every client reconnecting at once after a restart (capped at 65535)"),
    _Spec("net.ipv4.tcp_max_syn_backlog", SYSCTL, "tcp_max_syn_backlog", "higher", _syn_backlog,
          "half-open connections during a reconnect storm: twice the connections"),
    _Spec("net.ipv4.tcp_syncookies", SYSCTL, "syncookies", "exact", _const("1"),
          "a SYN flood cannot fill the half-open queue"),
    _Spec("net.core.netdev_max_backlog", SYSCTL, "sysctl", "higher", _netdev,
          "packets queued per CPU before the stack takes them: bursts of TLS handshakes"),
    _Spec("net.ipv4.ip_local_port_range", SYSCTL, "sysctl", "wider", _const("10240 65535"),
          "outbound TCP to gateways: 55k source ports per destination instead of 28k"),
    _Spec("net.ipv4.tcp_fin_timeout", SYSCTL, "sysctl", "lower", _const("30"),
          "closed connections release their state in 30 s, not 60"),
    _Spec("net.ipv4.tcp_tw_reuse", SYSCTL, "sysctl", "exact", _const("1"),
          "outbound connections may reuse TIME_WAIT ports (inbound are unaffected)"),
    _Spec("net.ipv4.tcp_keepalive_time", SYSCTL, "sysctl", "lower", _const("600"),
          "clients behind NAT vanish silently: probe idle sockets after 10 min, not 2 h"),
    _Spec("net.ipv4.tcp_keepalive_intvl", SYSCTL, "sysctl", "lower", _const("30"),
          "dead peers found in minutes (OpenSIPS sets tcp_keepidle per socket; this covers the rest)"),
    _Spec("net.ipv4.tcp_keepalive_probes", SYSCTL, "sysctl", "lower", _const("5"),
          "five unanswered probes and the connection is gone"),
)  # fmt: skip


def host_only(key: str, facts: TuneFacts) -> bool:
    """A sysctl this host cannot set: in a container, global keys and keys it has no write access to."""
    if facts.container is None:
        return False
    if key.startswith(("fs.", "kernel.", "vm.")):
        return True
    if key.startswith("net.core.") and key not in NETNS_CORE:
        return True
    return facts.sysctl.get(key, "") is None or not facts.writable.get(key, True)


def _current(spec: _Spec, facts: TuneFacts) -> str | None:
    if spec.kind == SYSCTL:
        return facts.sysctl.get(spec.key)
    value = {
        "nofile": facts.user_nofile,
        "LimitNOFILE": facts.limit_nofile,
    }.get(spec.key, facts.opensips.get(spec.key))
    return None if value is None else str(value)


def calculate(req: TuneRequest, facts: TuneFacts) -> list[Target]:
    """Every target for `req.max_connections` connections on a host with `facts`."""
    check_max_connections(req.max_connections)
    n = req.max_connections
    nofile = nofile_for(n)
    shm_want = round_up(SHM_BASE_MB + math.ceil(n * SHM_KB_PER_CONN / 1024), 32)
    shm_cap = (
        f"; capped at half the RAM ({facts.mem_mb // 2} MB), {shm_want} wanted" if shm_want > facts.mem_mb // 2 else ""
    )
    words = {
        "n": n, "n1": n + 1, "nofile": nofile, "reserve": nofile - n, "cpus": facts.cpus,
        "shm_base": SHM_BASE_MB, "shm_kb": SHM_KB_PER_CONN, "shm_cap": shm_cap,
    }  # fmt: skip
    out: list[Target] = []
    for spec in SPECS:
        if spec.key == "net.ipv4.ip_local_port_range" and not req.outbound_tcp:
            continue
        want = spec.value(n, facts, req)
        current = _current(spec, facts)
        reason = spec.reason.format(**words)
        if spec.kind == SYSCTL and host_only(spec.key, facts):
            if current is not None and (_same(current, want) or _better(spec.better, current, want)):
                note = "" if _same(current, want) else f"enough (needs {want}), set by the container host: "
                out.append(Target(spec.key, spec.kind, current, current, OK, note + reason, spec.var, False))
            else:
                reason = f"must be set on the container host ({facts.container}): {reason}"
                out.append(Target(spec.key, spec.kind, current, want, HOST, reason, spec.var, False))
            continue
        action, final = decide(current, want, spec.better, req.allow_lower)
        if action == KEEP:
            reason = f"already {current}, kept (--allow-lower lowers it): {reason}"
        out.append(Target(spec.key, spec.kind, current, final, action, reason, spec.var))
    return _one_nofile(out, facts, req)


def _one_nofile(targets: list[Target], facts: TuneFacts, req: TuneRequest) -> list[Target]:
    """nofile, LimitNOFILE and open_files_limit are one variable: the highest wins, capped by fs.nr_open."""
    fd_keys = ("nofile", "LimitNOFILE", "open_files_limit")
    wanted = nofile_for(req.max_connections)
    currents = [c for t in targets if t.key in fd_keys and (c := _int(t.current)) is not None]
    value = wanted if req.allow_lower else max([wanted, *currents])
    kept = value > wanted
    note = ""
    nr_open = next((t for t in targets if t.key == "fs.nr_open"), None)
    ceiling = _int(nr_open.current) if nr_open is not None and nr_open.action == HOST else None
    if ceiling is not None and value > ceiling:
        value, kept, note = ceiling, False, f"; capped at fs.nr_open {ceiling} until the container host raises it"
    out = []
    for t in targets:
        if t.key not in fd_keys:
            out.append(t)
            continue
        cur = _int(t.current)
        action = OK if cur == value else SET if cur is None or cur < value else LOWER
        reason = f"already {value} here, kept (--allow-lower lowers it): {t.reason}" if kept else t.reason + note
        out.append(Target(t.key, t.kind, t.current, str(value), action, reason, t.var))
    return out


def template_vars(targets: list[Target], inventory_sysctl: dict[str, Any]) -> dict[str, Any]:
    """Inventory variables that carry the targets into the templates (sysctl map, somaxconn, …)."""
    out: dict[str, Any] = {}
    sysctl = dict(inventory_sysctl)
    for t in targets:
        if not t.settable:
            sysctl.pop(t.key, None)
            continue
        if t.var == "sysctl":
            sysctl[t.key] = t.target
        elif t.var == "syncookies":
            continue  # the template always sets it to 1
        else:  # somaxconn, tcp_max_syn_backlog, open_files_limit, tcp_max_connections, tcp_workers, shm_mb
            out[t.var] = int(t.target)
    out["sysctl"] = sysctl
    return out


@dataclass(frozen=True)
class RelaySizing:
    """A media relay (rtpengine) sized for N concurrent calls: its RTP port range and open files."""

    calls: int
    ports_needed: int  # 4 per call: RTP + RTCP on each of the two legs
    ports_in_range: int
    open_files: int  # rtpengine's LimitNOFILE (two streams per call, its own descriptors, at least 65536)

    @property
    def fits(self) -> bool:
        return self.ports_in_range >= self.ports_needed

    def line(self, port_min: int, port_max: int) -> str:
        verdict = "fits" if self.fits else "TOO SMALL"
        return (
            f"media relay: {self.calls} calls need {self.ports_needed} RTP ports; range {port_min}-{port_max} has "
            f"{self.ports_in_range} ({verdict}); rtpengine LimitNOFILE {self.open_files}"
        )


def relay_sizing(calls: int, port_min: int, port_max: int) -> RelaySizing:
    from sipops.mediarelay import fds_for_calls, ports_for_calls

    return RelaySizing(calls, ports_for_calls(calls), port_max - port_min + 1, max(fds_for_calls(calls), 65536))
