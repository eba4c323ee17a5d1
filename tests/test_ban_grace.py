"""The firewall's SYN meters against the real kernel (issue 20), in throwaway network namespaces (root only).

The rendered firewall of the example inventory's edge1 (flood_max_conns_per_ip 100: the burst; flood_syn_per_sec
100; flood_line_syn_per_sec 1000), loaded in a victim namespace with a listener on 5060; an attacker
namespace plays an office behind one NAT address, a PBX, and a flooder. Every loop is bounded in count and time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipops.host.monitor import kernelbans
from sipops.host.monitor.ban import NftBackend, NftCliExecutor
from sipops.inventory import load_inventory
from sipops.render import render_host
from tests.netns_helpers import netns_pair, sh, skip_reason
from tests.test_ban_kernel import serving

REASON = skip_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
ROOT = Path(__file__).resolve().parents[1]
ATTACKER = "10.77.0.2"

# `waves` times: open `n` connections back to back (each must complete), then reset them all (what a
# restart of the proxy does to them); prints how many connected and the longest wave in ms. At most
# waves*n connections, 10 s.
WAVES = """
import socket, struct, sys, time
n, waves = int(sys.argv[1]), int(sys.argv[2])
ok, longest, end = 0, 0.0, time.monotonic() + 10
for _ in range(waves):
    t, held = time.monotonic(), []
    for _ in range(n):
        if time.monotonic() > end:
            break
        s = socket.socket(); s.settimeout(1)
        try:
            s.connect(("10.77.0.1", 5060)); held.append(s); ok += 1
        except OSError:
            s.close()
    longest = max(longest, time.monotonic() - t)
    for s in held:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); s.close()
print(ok, round(longest * 1000))
"""
# SYNs at `rate` per second (batches every 10 ms) for at most `seconds`: at most rate*seconds SYNs.
FLOOD = """
import socket, sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
start = time.monotonic(); sent = 0
while time.monotonic() - start < seconds and sent < rate * seconds:
    due = int((time.monotonic() - start) * rate) + 1
    while sent < due:
        s = socket.socket(); s.setblocking(False)
        try:
            s.connect(("10.77.0.1", 5060))
        except OSError:
            pass
        s.close(); sent += 1
    time.sleep(0.01)
print(sent)
"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the firewall file, the restart handler's command) of edge1."""
    inv = load_inventory(ROOT / "inventory.example.yaml")
    res = render_host(inv, inv.hosts["edge1"])
    path = tmp_path_factory.mktemp("fw") / "firewall.nft"
    path.write_bytes(next(f for f in res.files if f.dest == "/etc/sipops/firewall.nft").content)
    return path, res.handlers["restart opensips"]


@pytest.fixture
def victim(rendered: tuple[Path, str]) -> Iterator[tuple[str, str]]:
    with netns_pair("gr") as (v, a), serving(v):
        sh("nft", "-f", str(rendered[0]), ns=v)
        yield v, a


def _banned(ns: str) -> list[kernelbans.KernelBan]:
    return kernelbans.read(NftBackend(NftCliExecutor(prefix=["ip", "netns", "exec", ns])))


def _waves(ns: str, n: int, waves: int) -> tuple[int, int]:
    ok, ms = sh(sys.executable, "-c", WAVES, str(n), str(waves), ns=ns).split()
    return int(ok), int(ms)


def _open_grace(ns: str, handler: str) -> None:
    """What the `restart opensips` handler does before it restarts OpenSIPS (the nft part of it)."""
    command = handler.split(" 2>/dev/null", 1)[0]
    assert command.startswith("nft 'add element inet sipops grace"), handler
    sh("sh", "-c", command, ns=ns)


def test_an_office_reconnecting_with_retries_during_the_restart_grace_is_accepted_and_never_banned(
    victim: tuple[str, str], rendered: tuple[Path, str]
) -> None:
    v, a = victim
    _open_grace(v, rendered[1])
    ok, longest_ms = _waves(a, 100, 3)  # 100 phones, each reconnecting three times while OpenSIPS starts
    assert ok == 300
    assert longest_ms < 1000
    assert _banned(v) == []


def test_100_connections_within_100_ms_after_a_restart_are_accepted(
    victim: tuple[str, str], rendered: tuple[Path, str]
) -> None:
    v, a = victim
    _open_grace(v, rendered[1])
    ok, longest_ms = _waves(a, 100, 1)
    assert ok == 100 and longest_ms <= 100
    assert _banned(v) == []


def test_the_same_reconnect_storm_outside_the_grace_is_banned_by_the_rate_meter(victim: tuple[str, str]) -> None:
    """The grace is what spares the wave, by design: without it, 300 SYNs in a second exceed the burst (100)
    plus flood_syn_per_sec (100/s)."""
    v, a = victim
    ok, _ = _waves(a, 100, 3)
    assert ok < 300
    assert [(k.address, k.rule) for k in _banned(v)] == [(ATTACKER, "syn_meter")]


def test_a_pbx_reopening_30_connections_together_is_not_banned(victim: tuple[str, str]) -> None:
    v, a = victim
    ok, _ = _waves(a, 30, 2)  # its trunk up, reset, up again
    assert ok == 60
    assert _banned(v) == []


@pytest.mark.parametrize("grace", [False, True], ids=["no grace", "during the restart grace"])
def test_a_flood_of_2000_syn_per_second_is_banned_within_a_second(
    victim: tuple[str, str], rendered: tuple[Path, str], grace: bool
) -> None:
    v, a = victim
    if grace:
        _open_grace(v, rendered[1])
    flood = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-c", FLOOD, "2000", "2"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    started = time.monotonic()
    banned_after = None
    try:
        while time.monotonic() - started < 3 and banned_after is None:
            if "10.77.0.2" in sh("nft", "list", "set", "inet", "sipops", "ban4", ns=v):
                banned_after = time.monotonic() - started
            time.sleep(0.05)
    finally:
        out, _ = flood.communicate(timeout=10)
    assert int(out) <= 4000
    assert banned_after is not None and banned_after < 1.0, banned_after
    rows = kernelbans.merge(_banned(v), [], time.time())
    assert [(r["address"], r["rule"], r["origin"]) for r in rows] == [(ATTACKER, "syn_meter", "kernel meter")]
