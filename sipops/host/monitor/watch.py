"""The watcher: scan, rules, SIP log, then bans in one kernel batch per poll, journaled and logged.

poll(): scan (cookies of the last poll -> new connections) -> verdicts (rules + OpenSIPS log) -> the
allowlist turns bans of its addresses into alerts -> escalation from the journal's count -> ONE backend
batch (ban for new elements, refresh for live ones), then the addresses' connections closed
(SOCK_DESTROY), in a thread beside the journal's transaction -> one syslog line per ban (a refused
batch is taken back out of the journal). Without `ban` it only reports what it would ban.

Full scans only when a rule could fire: dumping every socket each second is most of the watcher's
CPU on a proxy holding 10k connections (the kernel walks and serialises each one). Between full
scans a poll reads the netns's Tcp PassiveOpens counter (/proc/net/snmp) and dumps SYN_RECV sockets
alone (the kernel skips the others after one state test). A new connection is the only way a
per-address count or a port's total can grow, so while the opens since the last full scan stay
below the smallest headroom (threshold minus the busiest address, or minus the port's total), and
the opens of each poll below the smallest new-connections rate, no ban rule can fire and the full
scan is skipped; the first poll where that no longer holds, and every `full_scan_every` seconds
anyway (CLOSE_WAIT build-up, the live table), scans everything. The rate rule stays exact: see
RuleEngine.evaluate(window=, carried=).
Every `canary_every` s it checks the kernel's canary element (cheap); when it is gone, or every
`reassert_every` s anyway, all live journal bans are re-asserted in one batch (no set listing).
Bans the firewall's SYN meter adds from the packet path are found by listing ban4/ban6 at start and
every `meter_scan_every` s (longer when a listing is slow: nft fetches the whole table for it), and
journaled with rule syn_meter and the time they have left, so a reboot restores them (kernelbans.py).
"""

from __future__ import annotations

import functools
import syslog
import threading
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sipops.host.monitor import kernelbans, procnet
from sipops.host.monitor import scan as scanner
from sipops.host.monitor.allow import Allowlist
from sipops.host.monitor.ban import MAX_TIMEOUT, Ban, BanBackend, BanBackendError, NftBackend
from sipops.host.monitor.crowdsec import LocalBan
from sipops.host.monitor.journal import BanRecord, Journal, NewBan
from sipops.host.monitor.rules import ALERT, BAN, RuleEngine, Thresholds, Verdict, escalate, spare_in_grace
from sipops.host.monitor.siplog import LogFollower, SipLogRules

if TYPE_CHECKING:
    from sipops.host.monitor.fleetlink import FleetLink

Clock = Callable[[], float]
EventSink = Callable[[str], None]


def format_event(action: str, address: str, rule: str, until: float | None, evidence: str, **extra: object) -> str:
    """The one syslog format of bans and unbans: `action=ban addr=… rule=… until=…Z … evidence="…"`."""
    when = _utc_second(int(until)) if until else "-"
    more = "".join([f" {k}={v}" for k, v in extra.items()])
    if "\\" in evidence or '"' in evidence or "\n" in evidence:
        evidence = evidence.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'action={action} addr={address} rule={rule} until={when}{more} evidence="{evidence}"'


@functools.lru_cache(maxsize=1024)
def _utc_second(epoch: int) -> str:
    """A poll's bans share a few end times: formatting each once keeps a 10k-ban poll's log lines at 1.5 us each."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def syslog_sink(message: str) -> None:
    """Log with ident sipops-ban (lines read `sipops-ban: action=ban addr=…`)."""
    syslog.openlog("sipops-ban", 0, syslog.LOG_AUTH)
    syslog.syslog(syslog.LOG_NOTICE, message)


@dataclass
class WatchConfig:
    thresholds: Thresholds  # the common role's variables (watchconf.py): no second set of defaults here
    ports: list[int] | None = None  # None: every port
    per_port: dict[int, Thresholds] = field(default_factory=dict)
    ban: bool = False
    ban_factor: float = 4.0
    ban_max: int = 86400
    forgive_after: int = 86400
    sip_log: str | None = None
    sip_rules: SipLogRules = field(default_factory=SipLogRules)
    close_connections: bool = True
    canary_every: float = 5.0
    reassert_every: float = 300.0
    full_scan_every: float = 10.0  # at most this long between full scans; 0: every poll is one
    meter_scan_every: float = 30.0  # list the meter's sets at most this often (0: never)


@dataclass
class PollResult:
    table: scanner.ConnectionTable | None
    verdicts: list[Verdict]
    banned: list[BanRecord]  # bans applied this poll (or that would be, without --ban)
    alerts: list[Verdict]
    closed: int = 0
    apply_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    reasserted: int = 0
    full_scan: bool = True  # False: SYN_RECV was read afresh, the other states are the last full scan's


class Watcher:
    """One host's watcher; everything outside (scanner, closer, clocks, syslog) is injected."""

    def __init__(
        self,
        config: WatchConfig,
        journal: Journal | None,
        backend: BanBackend | None,
        allow: Allowlist,
        *,
        scan: Callable[..., scanner.ConnectionTable] | None = None,
        scan_syn: Callable[..., scanner.ConnectionTable] | None = None,
        opens: Callable[[], int | None] | None = None,
        closer: Callable[[Sequence[str]], int] | None = None,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        events: EventSink = syslog_sink,
        fleet: FleetLink | None = None,
        grace: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.backend = backend if config.ban else None
        self.allow = allow
        self.scan = scan or (lambda ports, known=None: scanner.scan(ports, known=known))
        self.scan_syn = scan_syn or (
            lambda ports: scanner.scan(
                ports, states=[scanner.TcpState.SYN_RECV], cookies=False, families=scanner.listener_families(ports)
            )
        )
        # Partial polls need the opens counter; a test that injects its own scan gets full scans
        # unless it injects the counter too.
        if opens is None and scan is None:
            opens = procnet.read_passive_opens
        self.opens = opens
        self.closer = closer if closer is not None else (lambda addrs: scanner.close_connections(addrs, None))
        self.clock = clock
        self.monotonic = monotonic
        self.events = events
        # Seconds left of the restart grace (the kernel's grace set: kernelbans.grace_left)
        self.grace = grace if grace is not None else (lambda: kernelbans.grace_left(self.backend))
        self.fleet = fleet if config.ban else None  # CrowdSec LAPI link (sipops.host.monitor.fleetlink)
        self.engine = RuleEngine(config.thresholds, config.per_port, allow, monotonic)
        self.follower = LogFollower(config.sip_log) if config.sip_log else None
        self.live: dict[str, float] = {}  # address -> until (epoch), mirrors the journal
        self._known: AbstractSet[int] | None = None
        self._netstat: scanner.TcpExtCounters | None = None
        self._journal_version = -1
        self._next_canary = 0.0
        self._next_reassert = 0.0
        self._next_meter_scan = 0.0
        self._meter_found: list[BanRecord] = []  # meter bans journaled by this poll's upkeep
        self._full: scanner.ConnectionTable | None = None  # the last full scan
        self._full_at = 0.0  # monotonic time of it
        self._opens_full = 0  # PassiveOpens at the last full scan
        self._opens_prev: int | None = None  # and at the previous poll
        self._prev_at = 0.0
        self._headroom = 0.0  # new connections the last full scan leaves before a count rule can fire
        # the lowest rate at which a rule fires: source_near_limit's share of new_per_sec
        limits = [config.thresholds, *config.per_port.values()]
        self._min_rate = min(t.new_per_sec * t.source_alert_ratio for t in limits)

    def start(self) -> int:
        """Declare the sets and restore live bans in ONE batch; drop kernel-meter bans of allowlisted hosts."""
        if self.backend is None:
            self._reload_live()
            return 0
        restored = self.reassert()
        # The SYN meter in the firewall bans from the packet path; an allowlisted host it caught is let go
        # (unless an operator banned it on purpose: it is then in the journal).
        exact = [a for a in self.allow.exact if a not in self.live and not a.lower().startswith("fe80")]
        if exact:
            self.backend.unban(exact)
        self._next_meter_scan = 0.0  # the first poll journals what the meter banned while no watcher ran
        return restored

    def journal_meter_bans(self, errors: list[str]) -> list[BanRecord]:
        """Journal the bans the firewall's meters added since the last look, with their remaining time
        (an allowlisted address the meter caught is let go instead)."""
        if self.backend is None or self.journal is None or self.config.meter_scan_every <= 0:
            return []
        started = time.perf_counter()
        records: list[BanRecord] = []
        try:
            records = kernelbans.journal_meter_bans(
                self.backend, self.journal, self.allow, self.live, self.clock(), self.config.forgive_after
            )
        except BanBackendError as exc:
            errors.append(f"reading the meter's bans: {exc}")
        # A listing costs ~1 s per 100k elements (nft 1.0.6): never more than ~2% of the watcher's time.
        took = time.perf_counter() - started
        self._next_meter_scan = self.monotonic() + max(self.config.meter_scan_every, 50 * took)
        for r in records:
            self.live[r.address] = r.until
            seconds = round(r.until - r.since)
            self.events(format_event("ban", r.address, r.rule, r.until, r.evidence, seconds=seconds, count=r.count,
                                     found="kernel"))  # fmt: skip
        if records:
            self._journal_version = self.journal.version()
        return records

    def reassert(self) -> int:
        """Re-add every live journal ban with its remaining time (idempotent for elements still there)."""
        if self.backend is None:
            self._reload_live()
            return 0
        backend = self.backend
        backend.start()  # a wiped table is declared again
        extra = self.fleet.live_bans() if self.fleet is not None else []  # the LAPI's decisions applied here
        if self.journal is not None and isinstance(backend, NftBackend):
            # 100k elements rendered by SQLite in one query; the kernel takes them in a thread while the
            # watcher's map of live bans loads: the restore costs about what `nft -f` of them does.
            groups = self.journal.live_elements(NftBackend.ELEMENT_SQL, MAX_TIMEOUT)
            rules = self.journal.live_rules()
            kernel = _Background(lambda: backend.restore_rendered(groups, rules, extra))
            try:
                self._reload_live()
            finally:
                failed = kernel.wait()
            if failed is not None:
                raise failed
        else:
            self._reload_live()
            now = self.clock()
            rows = self.journal.live_rows() if self.journal is not None else []
            bans = [Ban(a, max(1, round(u - s)), rule, max(1, round(u - now))) for a, rule, s, u in rows]
            backend.restore(bans + extra)
        if self.journal is not None:
            self.journal.prune(older_than=30 * 86400)  # history kept for the escalation count, not forever
        self._next_reassert = self.monotonic() + self.config.reassert_every
        return len(self.live)

    def _reload_live(self) -> None:
        if self.journal is None:
            return
        self.live = self.journal.live_until()
        self._journal_version = self.journal.version()

    def poll(self) -> PollResult:
        """One round: see the module docstring."""
        errors: list[str] = []
        reasserted = self._maintain(errors)
        mono = self.monotonic()
        opens = self.opens() if self.opens is not None else None
        full = self._full_scan_needed(mono, opens)
        if full:
            table = self.scan(self.config.ports, known=self._known)
            window, carried = None, 0
            if self._full is not None and self._opens_prev is not None and opens is not None:
                window = mono - self._full_at
                carried = max(0, self._opens_prev - self._opens_full)
            verdicts = self.engine.evaluate(table, window=window, carried=carried)
            self._known = table.cookies
            self._full, self._full_at, self._opens_full = table, mono, opens or 0
            self._headroom = self._headroom_of(table)
        else:
            assert self._full is not None
            syn = self.scan_syn(self.config.ports)
            verdicts = self.engine.evaluate(syn)
            table = _with_syn_of(self._full, syn)
        self._opens_prev, self._prev_at = opens, mono
        if table.netstat is not None:
            if self._netstat is not None:
                verdicts += self.engine.syn_cookies(table.netstat.delta(self._netstat).syncookies_sent)
            self._netstat = table.netstat
        if self.follower is not None:
            for v in self.follower.verdicts(self.config.sip_rules):
                why = self.allow.why(v.address or "")
                verdicts.append(v if why is None else Verdict(v.rule, ALERT, v.address, None, 1, 1, 0, v.evidence, why))
        if any(v.graceable and v.action == BAN for v in verdicts):  # rare: ask the kernel only then
            verdicts = spare_in_grace(verdicts, self.grace())
        fleet_bans = self._fleet_take(errors)
        result = self.apply([v for v in verdicts if v.action == BAN], fleet_bans)
        result.table = table
        result.verdicts = verdicts
        result.alerts = [v for v in verdicts if v.action == ALERT]
        result.errors = errors + result.errors
        result.banned = self._meter_found + result.banned
        self._meter_found = []
        result.reasserted = reasserted
        result.full_scan = full
        return result

    def _full_scan_needed(self, mono: float, opens: int | None) -> bool:
        """False only when the counters prove no ban rule (nor port_near_limit) can fire this poll."""
        if opens is None or self._full is None or self._opens_prev is None or self.config.full_scan_every <= 0:
            return True
        if mono - self._full_at >= self.config.full_scan_every:
            return True
        since_full, this_poll = opens - self._opens_full, opens - self._opens_prev
        if since_full < 0 or this_poll < 0:  # counter went back (netns recreated): start over
            return True
        if since_full >= self._headroom:
            return True
        return this_poll > self._min_rate * max(mono - self._prev_at, 0.0)

    def _headroom_of(self, table: scanner.ConnectionTable) -> float:
        """How many new connections it takes, at least, before conn_flood, source_near_limit or
        port_near_limit can fire: the smallest (next level - address's count) and (alert level - port total).
        An address already at source_near_limit's level (alerted) counts against conn_flood's."""
        limits = [self.config.thresholds, *self.config.per_port.values()]
        room = min(
            min(t.max_conns_per_ip * t.source_alert_ratio, t.tcp_max_connections * t.port_alert_ratio) for t in limits
        )
        for (port, state, ip), n in table.counts.items():
            # An allowlisted address is never banned nor warned about: not counted.
            if state != scanner.TcpState.ESTABLISHED or ip in self.allow:
                continue
            lim = self.engine.limits(port)
            near = lim.max_conns_per_ip * lim.source_alert_ratio
            room = min(room, (near if n < near else lim.max_conns_per_ip) - n)
        for port, stats in table.ports.items():
            lim = self.engine.limits(port)
            total = stats.total - stats.states.get(scanner.TcpState.TIME_WAIT, 0)
            room = min(room, lim.tcp_max_connections * lim.port_alert_ratio - total)
        return room

    def apply(self, verdicts: Sequence[Verdict], fleet_bans: Sequence[Ban] = ()) -> PollResult:
        """Ban the verdicts' addresses not already banned: journal, one batch, close connections, log.

        fleet_bans: the LAPI's decisions read since the last poll, written in the same batch (refresh:
        their remaining time replaces an element's)."""
        now = self.clock()
        fresh: dict[str, Verdict] = {}
        for v in verdicts:
            addr = v.address
            if addr is None or addr in fresh or self.live.get(addr, 0) > now or addr in self.allow:
                continue
            fresh[addr] = v
        result = PollResult(None, list(verdicts), [], [])
        if not fresh:
            if fleet_bans and self.backend is not None:
                try:
                    self.backend.refresh(fleet_bans)
                except BanBackendError as exc:
                    result.errors.append(f"CrowdSec decisions: {exc}")
            return result
        started = time.perf_counter()
        previous = self.journal.counts(fresh) if self.journal is not None else {}
        wanted = []
        for addr, v in fresh.items():
            prev = previous.get(addr)
            count = 1 if prev is None or prev.until + self.config.forgive_after <= now else prev.count + 1
            seconds = escalate(v.seconds, count, self.config.ban_factor, self.config.ban_max)
            wanted.append(NewBan(addr, v.rule, _evidence(v), seconds))
        if self.backend is None or self.journal is None:  # report only
            result.banned = [BanRecord(b.address, b.rule, b.evidence, now, now + b.seconds, 1, False) for b in wanted]
            return result
        # A returning address may still have a kernel element (e.g. from the SYN meter): refresh replaces it.
        apply = self.backend.refresh if previous or fleet_bans else self.backend.ban
        bans = [Ban(b.address, b.seconds, b.rule, b.seconds) for b in wanted] + list(fleet_bans)
        close = self.closer if self.config.close_connections else None
        closed: list[int] = []

        def kernel_side() -> None:
            apply(bans)
            if close is not None:  # once the kernel drops their packets: a client reconnecting meets the ban
                try:
                    closed.append(close([b.address for b in wanted]))
                except OSError as exc:
                    result.errors.append(f"closing connections: {exc}")

        # The kernel's batch and the connections' close run in a thread while the journal writes and the
        # log lines are formatted: libnftables (ctypes), `nft -f`, sock_diag and SQLite release the GIL, so a
        # 10k-ban poll costs the longer side, not the sum (a journal that fails after the kernel took the
        # bans leaves kernel elements that expire on their own).
        kernel = _Background(kernel_side)
        try:
            records = self.journal.record(wanted, forgive_after=self.config.forgive_after, previous=previous)
            lines = [
                format_event("ban", r.address, r.rule, r.until, r.evidence, seconds=round(r.until - r.since),
                             count=r.count)
                for r in records
            ]  # fmt: skip
        finally:
            failed = kernel.wait()
        if failed is not None:
            result.errors.append(str(failed))
            self.journal.unban(r.address for r in records)  # the journal must not claim what the kernel lacks
            return result
        result.apply_seconds = time.perf_counter() - started
        result.closed = sum(closed)
        for r in records:
            self.live[r.address] = r.until
        self._journal_version = self.journal.version()
        if self.fleet is not None:
            self.fleet.queue(
                LocalBan(r.address, round(r.until - r.since), r.rule, r.evidence, r.since) for r in records
            )
        for line in lines:
            self.events(line)
        result.banned = records
        return result

    def _fleet_take(self, errors: list[str]) -> list[Ban]:
        """The LAPI's decisions since the last poll: elements to write (returned, for this poll's batch);
        lifted ones removed now (this host's own bans deleted on the LAPI leave the journal too)."""
        if self.fleet is None or self.backend is None:
            return []
        work = self.fleet.take(self.live)
        for line in work.events:
            self.events(line)
        if work.lifted_local and self.journal is not None:
            self.journal.unban(work.lifted_local)
            for addr in work.lifted_local:
                self.live.pop(addr, None)
                self.events(format_event("unban", addr, "crowdsec", None, "decision deleted on the LAPI"))
            self._journal_version = self.journal.version()
        if work.remove:
            try:
                self.backend.unban(work.remove)
            except BanBackendError as exc:
                errors.append(f"CrowdSec deletions: {exc}")
        return work.add

    def _maintain(self, errors: list[str]) -> int:
        """Pick up bans/unbans made by the CLI; re-assert when the canary is gone or it is time."""
        if self.journal is None or self.backend is None:
            return 0
        mono = self.monotonic()
        try:
            if self.journal.version() != self._journal_version:
                self._reload_live()
            if mono >= self._next_meter_scan:
                self._meter_found = self.journal_meter_bans(errors)
            if mono >= self._next_reassert:
                return self.reassert()
            if mono >= self._next_canary:
                self._next_canary = mono + self.config.canary_every
                if not self.backend.intact():
                    errors.append("ban sets were wiped: re-asserting every live ban")
                    return self.reassert()
        except BanBackendError as exc:
            errors.append(str(exc))
        return 0


def _with_syn_of(full: scanner.ConnectionTable, syn: scanner.ConnectionTable) -> scanner.ConnectionTable:
    """The last full scan with its SYN_RECV counts replaced by a fresh SYN_RECV-only scan's."""
    counts = {k: n for k, n in full.counts.items() if k[1] != scanner.TcpState.SYN_RECV}
    counts.update(syn.counts)
    return scanner.ConnectionTable(
        counts=counts,
        new={},
        cookies=full.cookies,
        netstat=syn.netstat,
        source=syn.source,
        fallback_reason=syn.fallback_reason,
        taken_at=syn.taken_at,
        elapsed=syn.elapsed,
    )


def _evidence(v: Verdict) -> str:
    port = f" port={v.port}" if v.port is not None and "port=" not in v.evidence else ""
    return f"{v.evidence}{port}".strip()


class _Background:
    """write() in a thread (a kernel batch: libnftables and `nft -f` release the GIL, as SQLite does, so the
    journal's work runs beside it on the second core); wait() joins it and returns its BanBackendError."""

    def __init__(self, write: Callable[[], None]) -> None:
        self._error: BanBackendError | None = None
        self._other: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(write,), name="sipops-ban", daemon=True)
        self._thread.start()

    def _run(self, write: Callable[[], None]) -> None:
        try:
            write()
        except BanBackendError as exc:
            self._error = exc
        except BaseException as exc:  # a bug: raised again in the watcher's thread
            self._other = exc

    def wait(self) -> BanBackendError | None:
        self._thread.join()
        if self._other is not None:
            raise self._other
        return self._error
