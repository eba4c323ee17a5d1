"""Rules: one scan of the connection table in, verdicts out, each carrying its rule and the numbers.

The numbers are the common role's variables, declared there once (roles/common.yaml, rendered to
watch.json: watchconf.py); the firewall's kernel meters use the same ones and the same bursts (bursts()).
Ban rules (per remote IP, per local port):
  conn_flood   concurrent ESTABLISHED connections over max_conns_per_ip (CLOSE_WAIT is the proxy's doing)
  conn_rate    new connections (sockets whose cookie the last poll had not seen) over a token bucket of
               burst max_conns_per_ip refilled at new_per_sec, as the kernel's SYN meter counts them. Spared
               (graceable) during a restart grace: the reconnect wave after a restart of OpenSIPS
  flood_line   the same over the flood line: burst RECONNECT_SYNS x max_conns_per_ip, refilled at
               flood_per_sec. Bans during a restart grace too
  syn_flood    SYN_RECV sockets over syn_recv_per_ip (piling up: a flood line too). Source addresses of SYNs
               can be spoofed: a shorter ban, and against an allowlisted address (gateways are) only an alert
Alerts (never bans):
  source_near_limit  an address at source_alert_ratio of max_conns_per_ip or of conn_rate's bucket: a trunk, a PBX or
                   an office behind one NAT address is seen before it is banned, with the numbers, so an
                   operator can allowlist it in time (an allowlisted address is never banned: no alert)
  port_near_limit  a port's connections near tcp_max_connections (the proxy will refuse new ones)
  close_wait       CLOSE_WAIT piling up on a port: the proxy is not closing sockets (its own problem)
  syn_cookies      the kernel sent SYN cookies since the last poll (a SYN flood hides behind them)
Allowlisted addresses are never banned: their ban verdicts become alerts that say why.
The clock is injected: rates use the time between polls, alerts repeat at most every `alert_every` s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from sipops.host.monitor.allow import Allowlist
from sipops.host.monitor.scan import ConnectionTable, TcpState

Clock = Callable[[], float]
BAN, ALERT = "ban", "alert"


# An address at this share of a limit gets source_near_limit (`sipops conns` shows NEAR BAN LIMIT at it too).
SOURCE_ALERT_RATIO = 0.8
# SYNs one connection may cost in a restart's reconnect wave: the connect and two retries while OpenSIPS
# starts (refused, or its SYN dropped while the listener is not up yet).
RECONNECT_SYNS = 3


def bursts(max_conns_per_ip: int) -> tuple[int, int]:
    """(burst of the per-source rate, burst of the flood line): one source may open every connection it may
    hold at once (an office behind one NAT reconnecting), and in a restart's wave each of them with retries.
    The firewall template's meters (through the render context) and the watcher's rules use these."""
    return max_conns_per_ip, RECONNECT_SYNS * max_conns_per_ip


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Per-port limits, from the common role's variables (watchconf.py maps them; no second set of defaults
    here): flood_max_conns_per_ip, flood_syn_per_sec, flood_line_syn_per_sec, watch_syn_recv_per_ip,
    ban_timeout, watch_syn_ban_timeout, tcp_max_connections, watch_close_wait_alert."""

    max_conns_per_ip: int
    new_per_sec: float
    flood_per_sec: float
    syn_recv_per_ip: int
    ban_seconds: int
    syn_ban_seconds: int
    tcp_max_connections: int
    close_wait_alert: int
    port_alert_ratio: float = 0.9  # of tcp_max_connections: port_near_limit
    source_alert_ratio: float = SOURCE_ALERT_RATIO  # of max_conns_per_ip and conn_rate's bucket

    @property
    def burst(self) -> int:
        return bursts(self.max_conns_per_ip)[0]

    @property
    def flood_burst(self) -> int:
        return bursts(self.max_conns_per_ip)[1]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a rule concluded. address None: about the whole port (or host, when port is None too)."""

    rule: str
    action: str  # "ban" or "alert"
    address: str | None
    port: int | None
    value: float
    threshold: float
    seconds: int = 0  # ban duration before escalation
    evidence: str = ""
    allowlisted: str | None = None  # why the address was not banned
    graceable: bool = False  # a ban a restart grace spares (below the flood line)

    def describe(self) -> str:
        where = f" port={self.port}" if self.port is not None else ""
        who = f" addr={self.address}" if self.address else ""
        extra = f" (allowlisted: {self.allowlisted})" if self.allowlisted else ""
        return f"{self.action} rule={self.rule}{who}{where} {self.evidence}{extra}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


@dataclass
class RuleEngine:
    """Evaluates scans against per-port thresholds; keeps the time of the last poll and of each alert."""

    default: Thresholds
    per_port: Mapping[int, Thresholds] = field(default_factory=dict)
    allow: Allowlist = field(default_factory=Allowlist)
    clock: Clock = time.monotonic
    alert_every: float = 60.0
    _last_poll: float | None = None
    _alerted: dict[tuple[str, int | None, str | None], float] = field(default_factory=dict)

    def limits(self, port: int) -> Thresholds:
        return self.per_port.get(port, self.default)

    def evaluate(self, table: ConnectionTable, *, window: float | None = None, carried: int = 0) -> list[Verdict]:
        """Verdicts for one scan: at most one ban per address (the longest; its evidence lists every rule).

        window, carried: when the scan before this one was a partial one (sipops.host.monitor.watch), `new`
        counts the connections of the last `window` seconds, of which at most `carried` opened before
        the previous poll. The rate is then the larger of two lower bounds of the busiest poll's rate:
        the window's average, and (new - carried) over the time since the previous poll.
        """
        now = self.clock()
        elapsed = None if self._last_poll is None else max(now - self._last_poll, 0.2)
        self._last_poll = now
        raw: list[Verdict] = []
        conns: dict[tuple[int, str], int] = {}
        syn: dict[tuple[int, str], int] = {}
        for (port, state, ip), n in table.counts.items():
            if state == TcpState.SYN_RECV:
                syn[(port, ip)] = syn.get((port, ip), 0) + n
            elif state == TcpState.ESTABLISHED:
                conns[(port, ip)] = conns.get((port, ip), 0) + n
        for (port, ip), n in conns.items():
            lim = self.limits(port)
            if n > lim.max_conns_per_ip:
                raw.append(self._ban("conn_flood", ip, port, n, lim.max_conns_per_ip, lim.ban_seconds, "conns"))
            elif n >= lim.max_conns_per_ip * lim.source_alert_ratio:
                raw += self._near(ip, port, n, lim.max_conns_per_ip, f"conns={n}", "max_conns_per_ip")
        if elapsed is not None:
            span = elapsed if window is None else max(window, elapsed)
            for (port, ip), n in table.new.items():
                raw += self._rate(ip, port, n, span, None if window is None else (n - carried, elapsed))
        for (port, ip), n in syn.items():
            lim = self.limits(port)
            if n > lim.syn_recv_per_ip:
                v = self._ban("syn_flood", ip, port, n, lim.syn_recv_per_ip, lim.syn_ban_seconds, "syn_recv")
                raw.append(replace(v, evidence=v.evidence + " (spoofable)"))
        for port, stats in table.ports.items():
            lim = self.limits(port)
            established = stats.total - stats.states.get(TcpState.TIME_WAIT, 0)
            near = lim.tcp_max_connections * lim.port_alert_ratio
            if established >= near:
                ev = f"conns={established} of tcp_max_connections={lim.tcp_max_connections}"
                raw.append(Verdict("port_near_limit", ALERT, None, port, established, near, evidence=ev))
            cw = stats.states.get(TcpState.CLOSE_WAIT, 0)
            if cw >= lim.close_wait_alert:
                ev = f"close_wait={cw}>={lim.close_wait_alert}: the proxy is not closing its sockets"
                raw.append(Verdict("close_wait", ALERT, None, port, cw, lim.close_wait_alert, evidence=ev))
        return self._merge(raw, now)

    def _rate(self, ip: str, port: int, n: int, span: float, recent: tuple[int, float] | None) -> list[Verdict]:
        """conn_rate and flood_line: `n` new connections in `span` s against each line's token bucket (what the
        kernel's meters allow: burst + rate x span). recent: (new, seconds) of the last poll alone, for a
        partial-scan window (the busiest poll decides)."""
        lim = self.limits(port)
        spans = [(n, span)] if recent is None else [(n, span), recent]
        line = max((k - lim.flood_burst) / t for k, t in spans)  # rate over the flood line's burst
        if line > lim.flood_per_sec:
            ev = f"new={n} in {span:.1f}s>{lim.flood_burst}+{_num(lim.flood_per_sec)}/s (flood line)"
            return [self._ban("flood_line", ip, port, n, lim.flood_per_sec, lim.ban_seconds, ev)]
        over = max((k - lim.burst) / t for k, t in spans)
        if over > lim.new_per_sec:
            ev = f"new={n} in {span:.1f}s>{lim.burst}+{_num(lim.new_per_sec)}/s"
            return [replace(self._ban("conn_rate", ip, port, n, lim.new_per_sec, lim.ban_seconds, ev), graceable=True)]
        allowed = lim.burst + lim.new_per_sec * span
        if n >= allowed * lim.source_alert_ratio:
            ev = f"new={n} in {span:.1f}s (burst {lim.burst} + {_num(lim.new_per_sec)}/s)"
            return self._near(ip, port, n, round(allowed), ev, "conn_rate")
        return []

    def syn_cookies(self, sent: int) -> list[Verdict]:
        """An alert when the kernel sent SYN cookies since the last poll (TcpExt SyncookiesSent delta)."""
        if sent <= 0:
            return []
        v = Verdict("syn_cookies", ALERT, None, None, sent, 0, evidence=f"syncookies_sent={sent} since last poll")
        return self._merge([v], self.clock())

    def _near(self, ip: str, port: int, value: float, limit: float, what: str, name: str) -> list[Verdict]:
        if ip in self.allow:
            return []
        ev = f"{what} of {name}={_num(limit)} ({round(100 * value / limit)}%): allowlist it if it is a trunk or a NAT"
        return [Verdict("source_near_limit", ALERT, ip, port, value, limit, evidence=ev)]

    def _ban(self, rule: str, ip: str, port: int, value: float, limit: float, seconds: int, what: str) -> Verdict:
        evidence = f"{what}={_num(value)}>{_num(limit)}" if what.isidentifier() else what
        why = self.allow.why(ip)
        if why is not None:
            return Verdict(rule, ALERT, ip, port, value, limit, 0, evidence, allowlisted=why)
        return Verdict(rule, BAN, ip, port, value, limit, seconds, evidence)

    def _merge(self, raw: Iterable[Verdict], now: float) -> list[Verdict]:
        bans: dict[str, Verdict] = {}
        out: list[Verdict] = []
        for v in raw:
            if v.action == BAN and v.address is not None:
                old = bans.get(v.address)
                if old is None:
                    bans[v.address] = v
                else:
                    first, second = (v, old) if v.seconds > old.seconds else (old, v)
                    evidence = f"{first.evidence} port={first.port}; {second.rule} {second.evidence}"
                    # spared in a restart grace only if every rule that fired is graceable
                    bans[v.address] = replace(first, evidence=evidence, graceable=v.graceable and old.graceable)
                continue
            key = (v.rule, v.port, v.address)
            last = self._alerted.get(key)
            if last is None or now - last >= self.alert_every:
                self._alerted[key] = now
                out.append(v)
        return sorted(bans.values(), key=lambda v: (v.rule, v.address or "")) + out


def spare_in_grace(verdicts: Iterable[Verdict], left: float) -> list[Verdict]:
    """During a restart grace (`left` s of it), the graceable bans (below the flood line) become alerts that
    say why: the reconnect wave after a restart of OpenSIPS never bans; flood_line and syn_flood still do."""
    if left <= 0:
        return list(verdicts)
    why = f" (restart grace, {round(left)}s left: only the flood line bans)"
    return [replace(v, action=ALERT, evidence=v.evidence + why) if v.graceable and v.action == BAN else v
            for v in verdicts]  # fmt: skip


def escalate(seconds: int, count: int, factor: float = 4.0, maximum: int = 86400) -> int:
    """The escalation ladder: the n-th ban in a row lasts seconds × factor^(n-1), at most `maximum`."""
    if count <= 1 or factor <= 1:
        return min(seconds, maximum) if count > 1 else seconds
    return int(min(seconds * factor ** (count - 1), max(maximum, seconds)))
