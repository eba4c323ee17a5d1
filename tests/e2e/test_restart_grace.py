"""Bans that never hit legitimate traffic, on a real OpenSIPS (issue 20, needs_opensips).

Its own lab (prefix sipv, 198.18.240.0/20): h1 installed by `sipops install` (firewall, watcher service reading
watch.json, OpenSIPS from the build under test), a1 and a2 attacker namespaces. h1's flood_max_conns_per_ip is
120 (the largest office behind one address): the per-source SYN burst is 120, the flood line's 360.
- after a push restarts OpenSIPS (its handler opens the restart grace), an office of 100 phones behind one
  address reconnects within 100 ms, and again twice (retries while OpenSIPS starts): all accepted, nothing banned;
- the same storm with no grace is banned by the SYN meter: the grace is what spares it, by design;
- a PBX re-opening its 30 connections together (twice) is not banned;
- 2,000 SYN/s from one address for at most 2 s during a grace are banned within 1 s (the flood line) and
  `sipops bans` lists the ban with its rule.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipops.lab.access import exec_argv
from sipops.lab.lifecycle import UpOptions, down, up
from sipops.lab.state import LabState

from .conftest import lab_skip_reason

pytestmark = [pytest.mark.e2e, pytest.mark.needs_opensips]
NETWORK = IPv4Network("198.18.240.0/20")  # no other test lab's range
ROOT = Path(__file__).resolve().parents[2]
SIPOPS = [sys.executable, "-c", "from sipops.cli.main import run; run()"]
HOST_SIPOPS = "/opt/sipops/bin/sipops"

# `waves` times: `n` connections to HOST:5060 back to back (each must complete), then reset (what a restart
# does to them). Prints how many connected and the longest wave in ms. At most waves*n connections, 20 s.
WAVES = """
import socket, struct, sys, time
host, n, waves = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok, longest, end = 0, 0.0, time.monotonic() + 20
for _ in range(waves):
    t, held = time.monotonic(), []
    for _ in range(n):
        if time.monotonic() > end:
            break
        s = socket.socket(); s.settimeout(2)
        try:
            s.connect((host, 5060)); held.append(s); ok += 1
        except OSError:
            s.close()
    longest = max(longest, time.monotonic() - t)
    for s in held:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); s.close()
print(ok, round(longest * 1000))
"""
# SYNs at `rate`/s (batches every 10 ms) for at most `seconds`: at most rate*seconds SYNs.
FLOOD = """
import socket, sys, time
host, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
start = time.monotonic(); sent = 0
while time.monotonic() - start < seconds and sent < rate * seconds:
    due = int((time.monotonic() - start) * rate) + 1
    while sent < due:
        s = socket.socket(); s.setblocking(False)
        try:
            s.connect((host, 5060))
        except OSError:
            pass
        s.close(); sent += 1
    time.sleep(0.01)
print(sent)
"""
# On h1: when ADDR shows up in ban4 (epoch seconds), polling every 20 ms for at most 6 s.
BAN_CLOCK = """
import subprocess, sys, time
end = time.monotonic() + 6
while time.monotonic() < end:
    r = subprocess.run(["nft", "get", "element", "inet", "sipops", "ban4", "{ " + sys.argv[1] + " }"],
                       capture_output=True)
    if r.returncode == 0:
        print(time.time()); break
    time.sleep(0.02)
"""


class GraceLab:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.inventory = directory / "inventory.yaml"
        self.base = yaml.safe_load(self.inventory.read_text())
        self.fr_timeout = 5

    @property
    def state(self) -> LabState:
        state = LabState.load(self.dir)
        assert state is not None
        return state

    def address(self, name: str) -> str:
        return self.state.member(name).address

    def argv(self, name: str, *cmd: str) -> list[str]:
        state = self.state
        return exec_argv(state, state.member(name), list(cmd))

    def exec(self, name: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(name, *cmd), capture_output=True, text=True, timeout=timeout, check=False)

    def write(self) -> None:
        data = json.loads(json.dumps(self.base))
        data["hosts"]["h1"]["vars"] = {
            **(data["hosts"]["h1"].get("vars") or {}),
            "flood_max_conns_per_ip": 120,
            "sip_fr_timeout": self.fr_timeout,
        }
        self.inventory.write_text(yaml.safe_dump(data))

    def sipops(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [*SIPOPS, *args, "-i", str(self.inventory)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)

    def restart_by_push(self) -> None:
        """A modparam change pushed: the `restart opensips` handler (which opens the grace first)."""
        self.fr_timeout = 6 if self.fr_timeout == 5 else 5
        self.write()
        res = self.sipops("push", "h1")
        assert res.returncode == 0 and "ran restart opensips" in res.stdout, res.stdout + res.stderr

    def grace_left(self) -> str:
        return self.exec("h1", "nft", "get", "element", "inet", "sipops", "grace", "{ tcp }").stdout

    def end_grace(self) -> None:
        self.exec("h1", "nft", "delete", "element", "inet", "sipops", "grace", "{ tcp }")

    def waves(self, attacker: str, n: int, waves: int) -> tuple[int, int]:
        argv = self.argv(attacker, sys.executable, "-c", WAVES, self.address("h1"), str(n), str(waves))
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout.split()
        return int(out[0]), int(out[1])

    def bans(self) -> list[dict[str, Any]]:
        res = self.exec("h1", HOST_SIPOPS, "bans", "--json")
        assert res.returncode == 0, res.stderr
        rows: list[dict[str, Any]] = json.loads(res.stdout)
        return rows

    def unban(self, *addresses: str) -> None:
        self.exec("h1", HOST_SIPOPS, "unban", *addresses)


@pytest.fixture(scope="module")
def glab(tmp_path_factory: pytest.TempPathFactory, opensips_prefix: Path) -> Iterator[GraceLab]:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("gracelab")
    opts = UpOptions(hosts=1, attackers=2, prefix="sipv", network=NETWORK, opensips_prefix=opensips_prefix)
    up(directory, opts, log=lambda _: None)
    try:
        lab = GraceLab(directory)
        lab.write()
        res = lab.sipops("install", "h1", timeout=900)
        assert res.returncode == 0, res.stdout + res.stderr
        assert lab.exec("h1", "systemctl", "is-active", "sipops-watch").stdout.strip() == "active"
        yield lab
    finally:
        down(directory, log=lambda _: None)


def test_after_a_restart_an_office_reconnecting_at_once_and_retrying_is_accepted_and_never_banned(
    glab: GraceLab,
) -> None:
    glab.restart_by_push()
    assert "expires" in glab.grace_left()  # the handler opened the grace
    ok, longest_ms = glab.waves("a1", 100, 1)  # every phone of the office at once
    assert ok == 100 and longest_ms <= 100, (ok, longest_ms)
    ok, _ = glab.waves("a1", 100, 2)  # and twice more (retries while OpenSIPS came up)
    assert ok == 200
    time.sleep(2)  # two of the watcher's polls
    assert [b for b in glab.bans() if b["address"] == glab.address("a1")] == []


def test_the_same_storm_without_the_grace_is_banned_the_grace_spares_it_by_design(glab: GraceLab) -> None:
    glab.end_grace()
    a1 = glab.address("a1")
    try:
        ok, _ = glab.waves("a1", 100, 3)
        assert ok < 300
        rows = [b for b in glab.bans() if b["address"] == a1]
        assert [b["rule"] for b in rows] == ["syn_meter"], rows
    finally:
        glab.unban(a1)


def test_a_pbx_reopening_its_30_connections_together_is_not_banned(glab: GraceLab) -> None:
    glab.end_grace()
    ok, _ = glab.waves("a2", 30, 2)  # its trunk up, reset, up again at once
    assert ok == 60
    time.sleep(2)
    assert [b for b in glab.bans() if b["address"] == glab.address("a2")] == []


def test_a_flood_of_2000_syn_per_second_during_the_grace_is_banned_within_a_second_and_listed(
    glab: GraceLab,
) -> None:
    glab.restart_by_push()
    assert "expires" in glab.grace_left()
    a2 = glab.address("a2")
    clock = subprocess.Popen(glab.argv("h1", "python3", "-c", BAN_CLOCK, a2), stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)  # the poller is running on h1
    started = time.time()
    flood = subprocess.run(glab.argv("a2", sys.executable, "-c", FLOOD, glab.address("h1"), "2000", "2"),
                           capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    out, _ = clock.communicate(timeout=30)
    assert int(flood.stdout) <= 4000
    assert out.strip(), "not banned within 6 s"
    assert float(out) - started < 1.0, float(out) - started  # same clock: the lab hosts share this kernel
    rows = [b for b in glab.bans() if b["address"] == a2]
    assert [(b["rule"], b["in_kernel"]) for b in rows] == [("syn_meter", True)], rows
    text = glab.exec("h1", HOST_SIPOPS, "bans").stdout
    assert a2 in text and "syn_meter" in text
    glab.unban(a2)
