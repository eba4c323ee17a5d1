"""The kernel sets' reader (nft listing -> elements), its merge with the journal, and the watcher journaling
the bans the firewall's SYN meter adds (real nftables: tests/test_ban_kernel.py, tests/e2e/test_meter_bans.py)."""

from __future__ import annotations

from pathlib import Path

from pytest import MonkeyPatch
from typer.testing import CliRunner

from sipops.host.monitor.ban import NftBackend
from sipops.host.monitor.journal import Journal, NewBan
from sipops.host.monitor.kernelbans import KernelBan, merge, parse_ipset_listing, parse_nft_listing
from sipops.host.monitor.scan import ConnectionTable
from tests.test_watcher import Rig, table

# `nft list table inet sipops` as nft 1.0.6 prints it (sets, then chains; tabs as spaces here).
LISTING = """table inet sipops {
    set ban4 {
        type ipv4_addr
        size 1048576
        flags dynamic,timeout
        elements = { 0.0.0.1 timeout 30d expires 29d23h59m54s328ms comment "sipops-canary", 10.0.0.1 timeout 10m expires 1m38s276ms comment "manual",
                 10.0.0.2 timeout 10m expires 9m54s328ms }
    }

    set ban6 {
        type ipv6_addr
        size 1048576
        flags dynamic,timeout
        elements = { 2001:db8::1 timeout 1h expires 59m54s328ms comment "a b,c}" }
    }

    set banned_cidr4 {
        type ipv4_addr
        size 65536
        flags interval,timeout
    }

    set synrate4 {
        type ipv4_addr
        size 65536
        flags dynamic,timeout
        timeout 1m
        elements = { 10.0.0.2 limiter rate over 100/second timeout 1m expires 58s }
    }

    chain input {
        type filter hook input priority filter - 10; policy drop;
        tcp flags syn / syn,ack tcp dport { 5060 } update @synrate4 { ip saddr limit rate over 100/second } add @ban4 { ip saddr timeout 10m } counter packets 3 bytes 180 drop
    }
}
"""  # noqa: E501


def test_the_listing_gives_every_ban_element_with_times_and_comment_and_skips_the_canary() -> None:
    found = [k for k in parse_nft_listing(LISTING) if k.set_name.startswith("ban")]
    assert found == [
        KernelBan("10.0.0.1", "ban4", 600, 98, "manual"),
        KernelBan("10.0.0.2", "ban4", 600, 594, ""),
        KernelBan("2001:db8::1", "ban6", 3600, 3594, "a b,c}"),
    ]
    assert [(k.rule, k.by_meter) for k in found] == [("manual", False), ("syn_meter", True), ("a b,c}", False)]


def test_ipset_members_are_read_with_their_time_left() -> None:
    text = 'Name: sipops-ban4\nType: hash:ip\nMembers:\n192.0.2.9 timeout 57 comment "conn_flood"\n0.0.0.1 timeout 9\n'
    assert parse_ipset_listing(text) == [KernelBan("192.0.2.9", "ban4", None, 57, "conn_flood")]


def test_merge_shows_journal_bans_with_the_kernel_time_and_meter_bans_the_journal_lacks(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "bans.sqlite", lambda: 1000.0)
    journal.record([NewBan("10.0.0.1", "manual", "abuse", 600), NewBan("10.0.0.9", "conn_flood", "conns=50>10", 600)])
    kernel = [KernelBan("10.0.0.1", "ban4", 600, 98, "manual"), KernelBan("10.0.0.2", "ban4", 600, 594, ""),
              KernelBan("192.0.2.50", "ban4", 600, 500, "CAPI")]  # fmt: skip
    rows = merge(kernel, journal.live(), 1000.0, ["192.0.2.50"])
    assert [(r["address"], r["rule"], r["origin"], r["in_kernel"], r["remaining"]) for r in rows] == [
        ("10.0.0.1", "manual", "local", True, 98),
        ("10.0.0.9", "conn_flood", "local", False, 600.0),  # journaled, not dropped: shown, flagged
        ("10.0.0.2", "syn_meter", "kernel meter", True, 594),
    ]


def test_the_watcher_journals_a_meter_ban_with_its_remaining_time_once_and_not_every_poll(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.nft.listing = LISTING
    rig.watcher.start()
    rig.tables.append(rig_table())
    result = rig.watcher.poll()
    assert [(r.address, r.rule) for r in result.banned] == [("10.0.0.2", "syn_meter")]
    rec = rig.journal.get("10.0.0.2")
    assert rec is not None and rec.rule == "syn_meter" and rec.until == rig.clock() + 594
    assert rec.until - rec.since == 600
    assert rig.events[-1].startswith("action=ban addr=10.0.0.2 rule=syn_meter") and "found=kernel" in rig.events[-1]
    listings = rig.nft.listings
    for _ in range(5):  # 5 polls one second apart: no listing (every meter_scan_every = 30 s)
        rig.clock.t += 1
        rig.tables.append(rig_table())
        assert rig.watcher.poll().banned == []
    assert rig.nft.listings == listings
    rig.clock.t += 30
    rig.tables.append(rig_table())
    assert rig.watcher.poll().banned == []  # listed again: already journaled
    assert rig.nft.listings == listings + 1
    # After a reboot the journal restores it with the time it has left.
    rig.nft.batches.clear()
    rig.watcher.reassert()
    assert '10.0.0.2 timeout 600s expires 559s comment "syn_meter"' in rig.nft.batches[-1]


def test_an_allowlisted_address_the_meter_caught_is_let_go_not_journaled(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.nft.listing = LISTING.replace("10.0.0.2 timeout", "198.51.100.31 timeout")
    rig.watcher.start()
    rig.tables.append(rig_table())
    assert rig.watcher.poll().banned == []
    assert rig.journal.get("198.51.100.31") is None
    assert any("delete element inet sipops ban4 { 198.51.100.31 }" in b for b in rig.nft.batches)


def rig_table() -> ConnectionTable:
    return table({})  # nobody connected: the bans here come from the kernel listing only


def test_without_the_firewall_table_there_is_no_meter_and_nothing_is_listed(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.nft.listing = LISTING
    rig.watcher.backend = NftBackend(rig.nft, own_chain=True)  # the watcher's guard chain: no SYN meter
    rig.watcher.start()
    rig.tables.append(rig_table())
    assert rig.watcher.poll().banned == []
    assert rig.nft.listings == 0


def test_bans_and_unban_on_the_command_line_show_the_kernel_truth(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    from sipops.cli import ban as ban_cli
    from sipops.cli.main import app
    from tests.test_watcher import RecordingNft

    nft = RecordingNft()
    nft.listing = LISTING
    monkeypatch.setattr(ban_cli, "_backend", lambda kind: NftBackend(nft))
    monkeypatch.setattr("sipops.host.monitor.watch.syslog_sink", lambda message: None)
    monkeypatch.setattr("sipops.host.monitor.fleetops.fleet_rows", lambda now: [])
    j = ["--journal", str(tmp_path / "bans.sqlite")]
    text = CliRunner().invoke(app, ["bans", *j]).output.splitlines()
    assert text[0].split() == ["ADDRESS", "RULE", "LEFT", "#", "ORIGIN", "WHERE", "EVIDENCE"]
    meter = next(line for line in text if line.startswith("10.0.0.2 "))
    assert meter.split()[:6] == ["10.0.0.2", "syn_meter", "9m54s", "1", "kernel", "meter"]
    out = CliRunner().invoke(app, ["unban", "10.0.0.2", "192.0.2.77", *j]).output.splitlines()
    assert out == [
        "unbanned 10.0.0.2: removed from the kernel (nftables set ban4, rule syn_meter, 9m54s left)",
        "192.0.2.77 was not banned (neither in the kernel nor in the journal): nothing removed",
    ]
    nft.listing = ""
    assert CliRunner().invoke(app, ["bans", *j]).output.strip() == "no bans"
