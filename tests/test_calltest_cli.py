"""`sipops calltest`: what each role is tested with, and bad input (one line, exit 2, nothing started)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sipops.calltest import sipp as sipp_module
from sipops.calltest.plan import Options, checks_for, parse_account, parse_callee, read_accounts, targets
from sipops.errors import InputError
from sipops.inventory import load_inventory
from tests.conftest import Cli

INVENTORY = """
hosts:
  edge1:
    address: 198.51.100.10
    roles: [registrar, proxy]
  edge2:
    address: 198.51.100.11
    roles: [registrar, proxy]
    vars: {registrar_auth: true, sip_protocols: [udp]}
  lb1:
    address: 198.51.100.20
    roles: [loadbalancer]
    vars:
      gateways:
        - {name: fs1, address: 198.51.100.31}
        - {name: fs2, address: 198.51.100.32}
"""


@pytest.fixture
def inventory(write_inventory: Callable[[str], Path]) -> Path:
    return write_inventory(INVENTORY)


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records any sipp process start (bad input must start none) and pretends sipp is installed."""
    started: list[object] = []
    monkeypatch.setattr(sipp_module.SippProcess, "__init__", lambda self, *a: started.append(a))
    monkeypatch.setattr(sipp_module.shutil, "which", lambda name: "/usr/bin/sipp")
    return started


def test_each_role_is_tested_by_the_calls_it_carries(inventory: Path) -> None:
    inv = load_inventory(inventory)
    by_name = {t.name: t for t in targets(inv, ["all"])}
    assert checks_for(by_name["edge1"], Options()) == ["register", "call", "cancel", "unknown-user"]
    assert checks_for(by_name["edge2"], Options()) == ["register", "wrong-password", "call", "cancel", "unknown-user"]
    assert checks_for(by_name["lb1"], Options()) == ["gateways", "failover"]
    with_callee = Options(callees=[parse_callee("sip:1000@pbx.example.net")])
    assert checks_for(by_name["lb1"], with_callee)[-1] == "callee"


def test_a_host_is_reached_on_its_sip_port_over_its_transports(inventory: Path) -> None:
    by_name = {t.name: t for t in targets(load_inventory(inventory), ["all"])}
    assert (by_name["edge1"].address, by_name["edge1"].port, by_name["edge1"].transports) == (
        "198.51.100.10", 5060, ("udp", "tcp"),
    )  # fmt: skip
    assert by_name["edge2"].transports == ("udp",)


def test_a_callee_uri_parses_with_user_host_and_port() -> None:
    c = parse_callee("sip:1000@pbx.example.net:5080")
    assert (c.user, c.host, c.port) == ("1000", "pbx.example.net", 5080)
    assert parse_callee("sip:ivr@[2001:db8::1]").host == "2001:db8::1"


def test_accounts_come_from_options_and_files_with_the_line_named(tmp_path: Path) -> None:
    assert parse_account("alice:s3cret", "--account").password == "s3cret"
    f = tmp_path / "accounts"
    f.write_text("# test phones\nalice:one\nbob two\n")
    with pytest.raises(InputError) as exc:
        read_accounts(f)
    assert f"{f}:3: --accounts:" in str(exc.value)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["nosuch"], "no host or group named 'nosuch'"),
        (["edge1", "--callee", "pbx.example.net"], "--callee: 'pbx.example.net' is not a SIP URI"),
        (["edge1", "--callee", "sip:@x"], "is not a SIP URI"),
        (["edge1", "--transport", "sctp"], "--transport: unknown transport 'sctp'"),
        (["edge1", "--dtmf", "12x"], "--dtmf: '12x': DTMF digits are 0-9 * #"),
        (["edge1", "--account", "alice"], "--account: an account is USER:PASSWORD"),
        (["edge1", "--account", "alice:pass word"], "--account: an account is USER:PASSWORD"),
        (["edge1", "--phones", "0"], "--phones: 0 phones: out of range"),
        (["edge1", "--rate", "0", "--calls", "10"], "--rate: 0 calls per second: out of range"),
        (["edge1", "--rate", "100000", "--calls", "10"], "--rate: 100000 calls per second: out of range"),
        (["edge1", "--rate", "10", "--calls", "0"], "--calls: 0 calls: out of range"),
        (["edge1", "--rate", "10"], "load mode needs both --rate and --calls"),
        (["edge1", "--rate", "10", "--calls", "5", "--concurrency", "0"], "--concurrency: 0: out of range"),
        (["edge1", "--rate", "10", "--calls", "5", "--duration", "-1"], "--duration: -1 s: out of range"),
        (["all", "--rate", "10", "--calls", "5"], "load mode runs against one host"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_starts_nothing(
    cli: Cli, inventory: Path, nothing_starts: list[object], args: list[str], words: str
) -> None:
    code, out, err = cli("calltest", "-i", inventory, *args)
    assert code == 2, (out, err)
    assert words in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("sipops: error: ")
    assert nothing_starts == [] and out == ""


def test_without_sipp_the_error_names_the_package(cli: Cli, inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sipp_module.shutil, "which", lambda name: None)
    code, _, err = cli("calltest", "edge1", "-i", inventory)
    assert code == 2 and "sipp is not installed: apt-get install sip-tester" in err
