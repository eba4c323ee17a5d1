"""The watcher with a recording backend, a scripted scanner and clocks: what it bans, logs, restores."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sipops.host.monitor import allow
from sipops.host.monitor.ban import Ban, NftBackend
from sipops.host.monitor.journal import Journal
from sipops.host.monitor.scan import ConnectionTable, TcpState
from sipops.host.monitor.watch import WatchConfig, Watcher, format_event
from sipops.monitor.watchdefaults import role_thresholds

E = TcpState.ESTABLISHED


class Clock:
    def __init__(self, t: float = 2_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class RecordingNft:
    def __init__(self) -> None:
        self.batches: list[str] = []
        self.canary = True
        self.listing = ""  # what `list table` prints (the meter's elements)
        self.listings = 0

    def run(self, batch: str) -> str:
        if batch.startswith("list table"):
            self.listings += 1
            return self.listing
        if batch.startswith("create element"):  # the canary check: refused while the canary is there
            if self.canary:
                from sipops.host.monitor.ban import BanBackendError

                raise BanBackendError("nft: Error: Could not process rule: File exists")
            return ""
        self.batches.append(batch)
        return ""


def table(counts: dict[tuple[int, TcpState, str], int]) -> ConnectionTable:
    return ConnectionTable(
        counts=counts, new={}, cookies=frozenset(), netstat=None, source="netlink", fallback_reason=None,
        taken_at=0.0, elapsed=0.0,
    )  # fmt: skip


class Rig:
    def __init__(self, tmp: Path, *, ban: bool = True, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.nft = RecordingNft()
        self.events: list[str] = []
        self.closed: list[list[str]] = []
        self.tables: list[ConnectionTable] = []
        self.journal = Journal(tmp / "bans.sqlite", self.clock)
        cfg = WatchConfig(ports=[5060], thresholds=role_thresholds(max_conns_per_ip=10, ban_seconds=600), ban=ban)
        self.watcher = Watcher(
            cfg, self.journal, NftBackend(self.nft),
            allow.build([("198.51.100.31", "gateway fs1")], host_addresses=["198.18.0.2"], env={}),
            scan=lambda ports, known=None: self.tables.pop(0), closer=self.close, clock=self.clock,
            monotonic=self.clock, events=self.events.append,
        )  # fmt: skip

    def close(self, addrs: Sequence[str]) -> int:
        self.closed.append(list(addrs))
        return len(addrs)


FLOOD = {(5060, E, "203.0.113.5"): 50, (5060, E, "198.51.100.31"): 50, (5060, E, "192.0.2.7"): 3}


def test_a_flooder_is_banned_in_one_batch_its_connections_closed_and_one_syslog_line_written(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.watcher.start()
    rig.nft.batches.clear()
    rig.tables.append(table(FLOOD))
    result = rig.watcher.poll()
    assert [r.address for r in result.banned] == ["203.0.113.5"]
    assert rig.nft.batches == ['add element inet sipops ban4 { 203.0.113.5 timeout 600s comment "conn_flood" }\n']
    assert rig.closed == [["203.0.113.5"]]
    (line,) = rig.events
    assert re.fullmatch(
        r"action=ban addr=203\.0\.113\.5 rule=conn_flood until=\S+Z seconds=600 count=1"
        r' evidence="conns=50>10 port=5060"',
        line,
    )
    assert [a.allowlisted for a in result.alerts] == ["gateway fs1"]


def test_a_banned_address_is_not_banned_again_while_live(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.watcher.start()
    rig.tables += [table(FLOOD), table(FLOOD)]
    rig.watcher.poll()
    rig.nft.batches.clear()
    assert rig.watcher.poll().banned == []
    assert rig.nft.batches == []


def test_a_returning_offender_gets_a_longer_ban_through_refresh(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.watcher.start()
    rig.tables += [table(FLOOD), table(FLOOD)]
    rig.watcher.poll()
    rig.clock.t += 601
    rig.nft.batches.clear()
    (r,) = rig.watcher.poll().banned
    assert (r.count, round(r.until - r.since)) == (2, 2400)
    assert rig.nft.batches[-1].splitlines()[-1] == (
        'add element inet sipops ban4 { 203.0.113.5 timeout 2400s expires 2400s comment "conn_flood" }'
    )


def test_restart_restores_live_bans_with_remaining_time_in_one_batch_and_unbans_stay_gone(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.watcher.start()
    rig.tables.append(table({**FLOOD, (5060, E, "203.0.113.6"): 20}))
    rig.watcher.poll()
    rig.journal.unban(["203.0.113.6"])
    rig.clock.t += 100
    again = Rig(tmp_path, clock=rig.clock)
    assert again.watcher.start() == 1
    _start, restore_batch, _allowlisted = again.nft.batches
    restore = restore_batch.splitlines()
    assert restore == ['add element inet sipops ban4 { 203.0.113.5 timeout 600s expires 500s comment "conn_flood" }']


def test_allowlisted_host_addresses_are_taken_out_of_the_kernel_set_at_start(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.watcher.start()
    unban = rig.nft.batches[-1]
    assert "delete element inet sipops ban4 { " in unban and "198.51.100.31" in unban and "198.18.0.2" in unban


def test_a_wiped_set_is_re_asserted_when_the_canary_is_gone(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.watcher.start()
    rig.tables += [table(FLOOD), table({}), table({})]
    rig.watcher.poll()
    rig.clock.t += 10
    rig.nft.canary = False
    rig.nft.batches.clear()
    result = rig.watcher.poll()
    assert result.reasserted == 1
    assert "203.0.113.5 timeout 600s expires 590s" in rig.nft.batches[-1]


def test_without_ban_it_reports_what_it_would_ban_and_touches_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ban=False)
    rig.watcher.start()
    rig.tables.append(table(FLOOD))
    result = rig.watcher.poll()
    assert [r.address for r in result.banned] == ["203.0.113.5"]
    assert rig.nft.batches == [] and rig.closed == [] and rig.events == []
    assert rig.journal.live() == []


def test_the_event_format_escapes_quotes_so_it_stays_parseable() -> None:
    line = format_event("unban", "192.0.2.1", "manual", None, 'said "hi"\nthere')
    assert line == 'action=unban addr=192.0.2.1 rule=manual until=- evidence="said \\"hi\\" there"'


def test_ban_objects_carry_total_and_remaining_time() -> None:
    assert Ban("192.0.2.1", 600, remaining=5).remaining == 5


def test_the_event_line_carries_the_end_time_in_utc_and_the_extras_in_order() -> None:
    line = format_event("ban", "192.0.2.1", "conn_flood", 1_800_000_000.9, "conns=300>200", seconds=600, count=2)
    assert line == (
        "action=ban addr=192.0.2.1 rule=conn_flood until=2027-01-15T08:00:00Z seconds=600 count=2 "
        'evidence="conns=300>200"'
    )


def test_a_refused_batch_leaves_no_journal_claim_no_log_line_and_closes_nothing(tmp_path: Path) -> None:
    from sipops.host.monitor.ban import BanBackendError

    rig = Rig(tmp_path)
    rig.watcher.start()

    run = rig.nft.run

    def refuse(batch: str) -> str:
        if batch.startswith("add element"):
            raise BanBackendError("nft: Error: Could not process rule: No buffer space available")
        return run(batch)

    rig.nft.run = refuse  # type: ignore[method-assign]
    rig.tables.append(table(FLOOD))
    result = rig.watcher.poll()
    assert result.banned == [] and result.errors == ["nft: Error: Could not process rule: No buffer space available"]
    assert rig.journal.live() == [] and rig.closed == [] and rig.events == []
