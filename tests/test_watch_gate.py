"""Partial polls: the watcher skips full scans only while the PassiveOpens counter proves no ban rule
can fire, and the rate rule stays exact across them (scripted scans, counter and clock)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sipops.host.monitor import allow
from sipops.host.monitor.ban import NftBackend
from sipops.host.monitor.journal import Journal
from sipops.host.monitor.scan import ConnectionTable, TcpState
from sipops.host.monitor.watch import WatchConfig, Watcher
from sipops.monitor.watchdefaults import role_thresholds
from tests.test_watcher import Clock, RecordingNft

E, SYN = TcpState.ESTABLISHED, TcpState.SYN_RECV
GATEWAY = "198.51.100.31"


def table(
    counts: dict[tuple[int, TcpState, str], int], new: dict[tuple[int, str], int] | None = None
) -> ConnectionTable:
    return ConnectionTable(
        counts=counts, new=new or {}, cookies=frozenset(), netstat=None, source="netlink", fallback_reason=None,
        taken_at=0.0, elapsed=0.0,
    )  # fmt: skip


class Gate:
    """A watcher whose full scans, SYN_RECV scans and opens counter are scripted; one poll per second."""

    def __init__(self, tmp: Path, **limits: float) -> None:
        self.clock = Clock()
        self.opens = 1000
        self.full: list[ConnectionTable] = []
        self.syn: list[ConnectionTable] = []
        self.calls: list[str] = []
        thresholds = role_thresholds(**{"max_conns_per_ip": 10, "new_per_sec": 5.0, "syn_recv_per_ip": 20, **limits})
        cfg = WatchConfig(ports=[5060], thresholds=thresholds, ban=True, full_scan_every=5.0)
        self.watcher = Watcher(
            cfg, Journal(tmp / "bans.sqlite", self.clock), NftBackend(RecordingNft()),
            allow.build([(GATEWAY, "gateway")], host_addresses=["198.18.0.2"], env={}),
            scan=self._scan, scan_syn=self._scan_syn, opens=lambda: self.opens, closer=lambda a: len(a),
            clock=self.clock, monotonic=self.clock, events=lambda _: None,
        )  # fmt: skip
        self.watcher.start()

    def _scan(self, ports: Iterable[int] | None, known: object = None) -> ConnectionTable:
        self.calls.append("full")
        return self.full.pop(0) if self.full else table({})

    def _scan_syn(self, ports: Iterable[int] | None) -> ConnectionTable:
        self.calls.append("syn")
        return self.syn.pop(0) if self.syn else table({})

    def poll(self, opened: int = 0, seconds: float = 1.0) -> list[str]:
        self.clock.t += seconds
        self.opens += opened
        return [r.address for r in self.watcher.poll().banned]


STEADY = {(5060, E, "192.0.2.7"): 3, (5060, E, GATEWAY): 400}


def test_quiet_polls_read_only_syn_recv_until_the_opens_could_make_a_rule_fire(tmp_path: Path) -> None:
    g = Gate(tmp_path)
    g.full.append(table(STEADY))
    g.poll()
    # busiest non-allowlisted address has 3 of 10: 5 new connections could make source_near_limit fire
    # (at 8 of 10), not fewer
    for _ in range(2):
        g.poll(opened=2)
    assert g.calls == ["full", "syn", "syn"]
    g.poll(opened=1)  # 5 since the full scan
    assert g.calls[-1] == "full"


def test_a_full_scan_happens_every_full_scan_every_seconds_even_when_nothing_opens(tmp_path: Path) -> None:
    g = Gate(tmp_path)
    for _ in range(7):
        g.poll()
    assert g.calls == ["full", "syn", "syn", "syn", "syn", "full", "syn"]


def test_a_burst_of_opens_forces_a_full_scan_and_the_flooder_is_banned_in_that_poll(tmp_path: Path) -> None:
    g = Gate(tmp_path)
    g.full.append(table(STEADY))
    g.poll()
    g.poll(opened=2)  # quiet: partial
    burst = {(5060, E, "203.0.113.9"): 30, **STEADY}
    g.full.append(table(burst, new={(5060, "203.0.113.9"): 30}))
    assert g.poll(opened=30) == ["203.0.113.9"]
    assert g.calls == ["full", "syn", "full"]


def test_the_rate_after_partial_polls_is_a_lower_bound_so_a_steady_client_is_not_banned(tmp_path: Path) -> None:
    """18 new connections over the 2 s since the full scan, 4 of the opens counted before the last poll;
    the burst is max_conns_per_ip (10): (18 - 10) / 2 s and (18 - 4 - 10) / 1 s are both 4/s, so the rule
    must not call it (18 - 10) / 1 s = 8/s."""
    g = Gate(tmp_path)
    g.full.append(table(STEADY))
    g.poll()
    g.poll(opened=4)
    g.full.append(table(STEADY, new={(5060, "192.0.2.7"): 18}))
    assert g.poll(opened=14) == []  # over the headroom: a full scan; 4/s is not over 5/s
    assert g.calls == ["full", "syn", "full"]
    g.full.append(table(STEADY, new={(5060, "192.0.2.7"): 16}))
    assert g.poll(opened=16) == ["192.0.2.7"]  # a full scan one poll after a full one: (16 - 10) / 1 s, exact


def test_a_syn_flood_is_banned_from_a_partial_poll(tmp_path: Path) -> None:
    g = Gate(tmp_path)
    g.full.append(table(STEADY))
    g.poll()
    g.syn.append(table({(5060, SYN, "203.0.113.66"): 25}))
    assert g.poll() == ["203.0.113.66"]
    assert g.calls == ["full", "syn"]


def test_an_allowlisted_busy_gateway_does_not_force_full_scans(tmp_path: Path) -> None:
    g = Gate(tmp_path)  # the gateway holds 400 connections, far over max_conns_per_ip=10
    g.full.append(table(STEADY))
    g.poll()
    g.poll()
    assert g.calls == ["full", "syn"]


def test_without_the_opens_counter_every_poll_is_a_full_scan(tmp_path: Path) -> None:
    g = Gate(tmp_path)
    g.watcher.opens = lambda: None
    for _ in range(3):
        g.poll()
    assert g.calls == ["full", "full", "full"]


def test_real_kernel_counters_skip_then_force_the_full_scan(tmp_path: Path) -> None:
    """The real scanners and /proc/net/snmp on loopback: a quiet poll reads SYN_RECV alone, new
    connections past the headroom bring the full scan back, and it sees them."""
    import socket

    from sipops.host.monitor.allow import Allowlist

    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(64)
    port = lsn.getsockname()[1]
    held: list[socket.socket] = []

    def connect(n: int) -> None:
        for _ in range(n):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            held.append(lsn.accept()[0])

    clock = Clock()
    cfg = WatchConfig(ports=[port], thresholds=role_thresholds(max_conns_per_ip=6), full_scan_every=60.0)
    watcher = Watcher(cfg, None, None, Allowlist(), clock=clock, monotonic=clock, events=lambda _: None)
    try:
        connect(4)
        first = watcher.poll()
        clock.t += 1
        quiet = watcher.poll()
        assert (first.full_scan, quiet.full_scan) == (True, False)
        assert quiet.table is not None and quiet.table.by_ip(port, [E]) == {"127.0.0.1": 4}
        connect(3)  # 7 > 6: past the headroom of 2
        clock.t += 1
        busy = watcher.poll()
        assert busy.full_scan
        assert [r.address for r in busy.banned] == ["127.0.0.1"]  # report only: would ban
    finally:
        for s in held:
            s.close()
        lsn.close()
