"""`sipops conns HOST` on a lab host: connections from attacker namespaces, seen per remote IP over SSH."""

from __future__ import annotations

import json
import select
import subprocess
import sys
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from sipops.cli.main import app
from sipops.lab.access import exec_argv

from .conftest import Lab

pytestmark = pytest.mark.e2e

PORT = 5077
# Holds every accepted connection; gives up after 120 s whatever happens.
LISTENER = f"""
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(64); s.settimeout(1)
held, end = [], time.monotonic() + 120
while time.monotonic() < end:
    try:
        held.append(s.accept()[0])
    except socket.timeout:
        pass
"""
# Opens N connections to HOST:PORT, says READY, holds them until stdin closes (at most 90 s).
CLIENT = """
import select, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = [socket.create_connection((host, port), timeout=5) for _ in range(min(n, 200))]
print("READY", flush=True)
select.select([sys.stdin], [], [], 90)
"""


@pytest.fixture
def listener(lab: Lab) -> Iterator[str]:
    """A TCP listener on h1:PORT, killed (by pid) at the end."""
    started = lab.exec("h1", "sh", "-c", f"setsid python3 -c {_q(LISTENER)} </dev/null >/dev/null 2>&1 & echo $!")
    assert started.returncode == 0, started.stderr
    pid = started.stdout.strip()
    try:
        for _ in range(50):  # up to ~5 s for it to listen
            if lab.exec("h1", "sh", "-c", f"ss -Hltn sport = :{PORT} | grep -q LISTEN").returncode == 0:
                break
            lab.exec("h1", "sleep", "0.1")
        yield lab.hosts["h1"]
    finally:
        lab.exec("h1", "kill", pid)


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _connect(lab: Lab, attacker: str, host: str, n: int) -> subprocess.Popen[str]:
    state = lab.state
    argv = exec_argv(state, state.member(attacker), [sys.executable, "-c", CLIENT, host, str(PORT), str(n)])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready and proc.stdout.readline().strip() == "READY", f"{attacker} could not connect"
    return proc


@pytest.fixture
def clients(lab: Lab, listener: str) -> Iterator[None]:
    procs = [_connect(lab, "a1", listener, 12), _connect(lab, "a2", listener, 3)]
    try:
        yield
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _conns(lab: Lab, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["conns", "h1", "-i", str(lab.inventory), *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def test_conns_on_a_host_shows_attackers_by_remote_ip(lab: Lab, clients: None) -> None:
    code, out = _conns(lab, "--port", str(PORT), "--json")
    assert code == 0, out
    [report] = json.loads(out)
    assert report["host"] == "h1" and report["source"] == "netlink"
    [row] = report["ports"]
    by_ip = {t["ip"]: t["count"] for t in row["top"]}
    assert by_ip == {lab.attackers["a1"]: 12, lab.attackers["a2"]: 3}
    assert row["states"] == {"ESTAB": 15} and row["remote_ips"] == 2
    # psutil is not installed on the hosts: process names come from /proc
    assert [p["name"] for p in row["listeners"][0]["processes"]] == ["python3"]


def test_conns_without_port_covers_every_listening_port(lab: Lab, clients: None) -> None:
    code, out = _conns(lab, "--top", "1")
    assert code == 0, out
    assert f"{PORT}  {lab.attackers['a1']}" in out
    assert any(line.split()[:1] == ["22"] for line in out.splitlines())  # sshd's port is listed too


def test_limits_use_the_inventory_tcp_max_connections(lab: Lab, clients: None) -> None:
    code, out = _conns(lab, "--port", str(PORT), "--limits", "--json")
    assert code == 0, out
    lim = json.loads(out)[0]["limits"]
    assert lim["tcp_max_connections_from"] == "inventory" and lim["tcp_max_connections"] > 0
    assert lim["per_port"] == {str(PORT): 15}
