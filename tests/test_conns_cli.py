"""`sipops conns`: table and JSON from real loopback sockets, the scanner shipped by the one boot path, bad input."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Cli

from sipops.monitor.remote import ENTRY, run_report
from sipops.remote import ship
from sipops.remote.runner import LocalRunner, Output, ship_command


@pytest.fixture
def served() -> Iterator[tuple[int, list[socket.socket]]]:
    """A loopback listener on an ephemeral port with 3 connections from 127.0.0.2 and 1 from 127.0.0.3."""
    with ExitStack() as stack:
        lsn = stack.enter_context(socket.socket())
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(16)
        clients = []
        for source in ("127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.2"):
            cli = stack.enter_context(socket.socket())
            cli.settimeout(5)
            cli.bind((source, 0))
            cli.connect(lsn.getsockname())
            stack.enter_context(lsn.accept()[0])
            clients.append(cli)
        yield lsn.getsockname()[1], clients


def test_json_shows_the_port_its_states_and_top_remote_ips(cli: Cli, served: tuple[int, list[socket.socket]]) -> None:
    port, _ = served
    code, out, _err = cli("conns", "--port", str(port), "--json")
    assert code == 0
    [report] = json.loads(out)
    [row] = report["ports"]
    assert report["source"] == "netlink"
    assert (row["port"], row["total"], row["states"], row["remote_ips"]) == (port, 4, {"ESTAB": 4}, 2)
    assert row["top"][0] == {"ip": "127.0.0.2", "count": 3, "states": {"ESTAB": 3}}
    [lsn] = row["listeners"]
    assert lsn["address"] == "127.0.0.1" and lsn["backlog"] == 16
    # this test process owns the listener (named "pytest" when run as .venv/bin/pytest)
    assert any(p["name"] == psutil.Process().name() for p in lsn["processes"]), lsn["processes"]


def test_table_lists_ports_states_and_top_ips(cli: Cli, served: tuple[int, list[socket.socket]]) -> None:
    port, _ = served
    code, out, _err = cli("conns", "-p", str(port), "--top", "1")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["PORT", "PROCESS", "TOTAL"] and "ESTAB" in lines[1]
    assert lines[2].split()[0] == str(port) and lines[2].split()[2] == "4"
    assert f"{port}  127.0.0.2" in out and "127.0.0.3" not in out  # --top 1


def test_state_filter_leaves_other_states_out(cli: Cli, served: tuple[int, list[socket.socket]]) -> None:
    port, clients = served
    clients[2].close()  # 127.0.0.3's server end goes to CLOSE_WAIT
    code, out, _err = cli("conns", "-p", str(port), "--state", "close-wait", "--json")
    assert code == 0
    [row] = json.loads(out)[0]["ports"]
    assert row["states"] == {"CLOSE-WAIT": 1} and row["top"][0]["ip"] == "127.0.0.3"


def test_limits_reports_tcp_connections_per_port(cli: Cli, served: tuple[int, list[socket.socket]]) -> None:
    port, _ = served
    code, out, _err = cli("conns", "-p", str(port), "--limits", "--json")
    assert code == 0
    lim = json.loads(out)[0]["limits"]
    assert lim["per_port"] == {str(port): 4} and lim["tcp_connections"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port: not a TCP port (1-65535): '70000'"),
        (["--port", "sip"], "--port: not a TCP port"),
        (["--state", "half-open"], "--state: unknown TCP state 'half-open'"),
        (["--top", "0"], "--top: expected a count from 1"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(cli: Cli, args: list[str], message: str) -> None:
    code, out, err = cli("conns", *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_unknown_host_is_bad_input(cli: Cli, write_inventory: Callable[[str], Path]) -> None:
    inv = write_inventory(
        """
        hosts:
          sip1: {address: 198.18.0.10, roles: [proxy]}
        """
    )
    code, _out, err = cli("conns", "sip2", "-i", inv)
    assert code == 2 and "no host or group named 'sip2'" in err


class LocalShellDouble:
    """Stands in for the push engine's SSHRunner: runs the command in a local shell (no SSH here)."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.name = host.name
        self.commands: list[str] = []

    def exec(self, command: str, stdin: bytes, timeout: float) -> Output:
        self.commands.append(command)
        proc = subprocess.run(command, shell=True, input=stdin, capture_output=True, timeout=timeout, check=False)
        return Output(proc.returncode, proc.stdout, proc.stderr)

    def close(self) -> None:
        return None


def test_remote_host_gets_the_scanner_shipped_and_its_inventory_limit(
    cli: Cli,
    write_inventory: Callable[[str], Path],
    served: tuple[int, list[socket.socket]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, _ = served
    inv = write_inventory(
        """
        hosts:
          sip1: {address: 198.18.0.10, roles: [proxy], vars: {tcp_max_connections: 777}}
        """
    )
    doubles: list[LocalShellDouble] = []

    def fake_runner(host: Any, **_: Any) -> LocalShellDouble:
        doubles.append(LocalShellDouble(host))
        return doubles[-1]

    monkeypatch.setattr("sipops.remote.runner.SSHRunner", fake_runner)
    code, out, _err = cli("conns", "sip1", "-i", inv, "-p", str(port), "--limits", "--json")
    assert code == 0
    [report] = json.loads(out)
    assert report["host"] == "sip1" and report["ports"][0]["total"] == 4
    assert report["limits"]["tcp_max_connections"] == 777
    assert report["limits"]["tcp_max_connections_from"] == "inventory"
    # One round trip; a second only when the host had to be sent the bundle (not in its code cache yet).
    assert 1 <= len(doubles[0].commands) <= 2 and set(doubles[0].commands) == {ship_command()}


def test_a_failing_host_is_reported_and_exits_1(
    cli: Cli, write_inventory: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = write_inventory(
        """
        hosts:
          sip1: {address: 198.18.0.10, roles: [proxy]}
        """
    )

    def refuse(host: Any, **_: Any) -> Any:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr("sipops.remote.runner.SSHRunner", refuse)
    code, out, _err = cli("conns", "sip1", "-i", inv)
    assert code == 1
    assert "sip1: error: ConnectionRefusedError" in out


def test_the_scanner_runs_through_the_one_boot_path() -> None:
    report = run_report(LocalRunner(), {"ports": [1], "top": 1})
    assert report["ports"][0]["port"] == 1 and report["ports"][0]["total"] == 0
    assert ship.bundle(ENTRY).modules == tuple(
        sorted(["sipops", "sipops.host", "sipops.host.monitor"] + [f"sipops.host.monitor.{m}" for m in
               ("procnet", "report", "scan", "sockdiag")])
    )  # fmt: skip


@pytest.mark.parametrize(("allowlist", "near"), [("[]", True), ("[127.0.0.2/32]", False)])
def test_a_remote_source_near_the_watchers_ban_limit_is_shown_unless_allowlisted(
    cli: Cli,
    write_inventory: Callable[[str], Path],
    served: tuple[int, list[socket.socket]],
    monkeypatch: pytest.MonkeyPatch,
    allowlist: str,
    near: bool,
) -> None:
    port, _ = served  # 3 connections from 127.0.0.2, 1 from 127.0.0.3
    inv = write_inventory(
        f"""
        hosts:
          sip1: {{address: 198.18.0.10, roles: [proxy], vars: {{flood_max_conns_per_ip: 3, allowlist: {allowlist}}}}}
        """
    )
    monkeypatch.setattr("sipops.remote.runner.SSHRunner", lambda host, **_: LocalShellDouble(host))
    code, out, _err = cli("conns", "sip1", "-i", inv, "-p", str(port))
    assert code == 0
    line = f"NEAR BAN LIMIT 127.0.0.2 on {port}: 3 connections of flood_max_conns_per_ip 3 (100%)"
    assert (line in out) is near, out
    assert "127.0.0.3 on" not in out  # 1 of 3
