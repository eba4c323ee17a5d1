"""`sipops ban / unban / bans / watch` through Typer's CliRunner; patched only where they reach the kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sipops.cli import ban as ban_cli
from sipops.cli.main import app
from sipops.host.monitor.ban import NftBackend


class RecordingNft:
    def __init__(self) -> None:
        self.batches: list[str] = []

    def run(self, batch: str) -> str:
        self.batches.append(batch)
        return ""


@pytest.fixture
def nft(monkeypatch: pytest.MonkeyPatch) -> RecordingNft:
    rec = RecordingNft()
    monkeypatch.setattr(ban_cli, "_backend", lambda kind: NftBackend(rec))
    monkeypatch.setattr("sipops.host.monitor.scan.close_connections", lambda addrs, ports=None: 0)
    monkeypatch.setattr("sipops.host.monitor.watch.syslog_sink", lambda message: None)
    monkeypatch.delenv("SSH_CLIENT", raising=False)
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    return rec


def test_ban_writes_journal_and_one_refresh_batch_and_bans_lists_it(nft: RecordingNft, tmp_path: Path) -> None:
    j = str(tmp_path / "bans.sqlite")
    result = CliRunner().invoke(app, ["ban", "203.0.113.9", "198.51.100.0/24", "--for", "2h", "--reason", "abuse",
                                      "--journal", j])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "banned 203.0.113.9 for 2h (ban #1)" in result.output
    refresh = nft.batches[-1].splitlines()
    assert refresh[-2:] == [
        'add element inet sipops ban4 { 203.0.113.9 timeout 7200s expires 7200s comment "manual" }',
        'add element inet sipops banned_cidr4 { 198.51.100.0/24 timeout 7200s expires 7200s comment "manual" }',
    ]
    listed = json.loads(CliRunner().invoke(app, ["bans", "--json", "--journal", j]).output)
    assert [(b["address"], b["rule"], b["evidence"]) for b in listed] == [
        ("203.0.113.9", "manual", "abuse"),
        ("198.51.100.0/24", "manual", "abuse"),
    ]


def test_unban_removes_from_kernel_and_journal(nft: RecordingNft, tmp_path: Path) -> None:
    j = str(tmp_path / "bans.sqlite")
    CliRunner().invoke(app, ["ban", "203.0.113.9", "--journal", j])
    result = CliRunner().invoke(app, ["unban", "203.0.113.9", "--journal", j])
    assert result.exit_code == 0 and "unbanned 203.0.113.9" in result.output
    assert nft.batches[-1] == (
        "add element inet sipops ban4 { 203.0.113.9 timeout 1s }\ndelete element inet sipops ban4 { 203.0.113.9 }\n"
    )
    assert CliRunner().invoke(app, ["bans", "--journal", j]).output.strip() == "no bans"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ban", "127.0.0.1"], "127.0.0.1 is allowlisted"),
        (["ban", "192.0.2.7", "--allow", "192.0.2.0/24"], "192.0.2.7 is allowlisted (--allow)"),
        (["ban", "example.com"], "not an IP address or CIDR"),
        (["ban", "192.0.2.7", "--for", "soon"], "not a duration"),
        (["unban", "1.2.3"], "not an IP address or CIDR"),
    ],
)
def test_bad_or_allowlisted_input_is_one_line_and_exit_2(
    nft: RecordingNft, tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, [*args, "--journal", str(tmp_path / "bans.sqlite")])
    assert result.exit_code == 2
    assert message in result.output
    assert nft.batches == []


def test_the_operators_ssh_source_is_never_banned(
    nft: RecordingNft, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSH_CLIENT", "198.51.100.200 50022 22")
    result = CliRunner().invoke(app, ["ban", "198.51.100.200", "--journal", str(tmp_path / "b.sqlite")])
    assert result.exit_code == 2 and "SSH session" in result.output


def test_watch_without_ban_reports_and_touches_no_kernel(
    nft: RecordingNft, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sipops.host.monitor.scan import ConnectionTable, TcpState

    table = ConnectionTable(
        counts={(5060, TcpState.ESTABLISHED, "203.0.113.5"): 300}, new={}, cookies=frozenset(), netstat=None,
        source="netlink", fallback_reason=None, taken_at=0.0, elapsed=0.001,
    )  # fmt: skip
    monkeypatch.setattr("sipops.host.monitor.scan.scan", lambda ports=None, states=None, **kw: table)
    result = CliRunner().invoke(app, ["watch", "--port", "5060", "--json", "--max-polls", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.splitlines()[-1])
    assert [b["address"] for b in data["would_ban"]] == ["203.0.113.5"]
    assert nft.batches == []
