"""Bans the firewall's own SYN meter makes are visible and manageable on a lab host: a SYN flood from an
attacker is banned from the packet path; `sipops bans` shows it with rule syn_meter and its time left;
`unban` removes it and says so; the watcher service journals a new one, and after `sipops lab restart`
of the host (a reboot) it is back in the kernel with the time it had left.

The host gets the real sipops CLI (as tests/e2e/test_watch.py ships it), the rendered firewall and the
rendered sipops-firewall and sipops-watch units, enabled as `sipops install` enables them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipops.inventory import load_inventory
from sipops.lab.access import exec_argv
from sipops.lab.lifecycle import restart
from sipops.render import render_host

from .conftest import Lab
from .test_watch import SIPOPS, run

pytestmark = pytest.mark.e2e

HOST = "h2"
FILES = ("/etc/sipops/firewall.nft", "/etc/systemd/system/sipops-firewall.service",
         "/etc/systemd/system/sipops-watch.service", "/etc/sipops/health.json", "/etc/sipops/watch.json")  # fmt: skip
# At most 400 SYNs in at most 5 s from one source: well over flood_syn_per_sec (100/s).
SYN_FLOOD = """
import socket, sys, time
end = time.monotonic() + 5
for _ in range(400):
    if time.monotonic() > end:
        break
    s = socket.socket(); s.setblocking(False)
    try:
        s.connect((sys.argv[1], 5060))
    except OSError:
        pass
    s.close()
"""


@pytest.fixture(scope="module")
def host(lab: Lab) -> Iterator[Lab]:
    """HOST with sipops, its rendered firewall and watcher, both enabled (removed afterwards)."""
    _ship(lab)
    inv = load_inventory(lab.inventory)
    rendered = {f.dest: f.content for f in render_host(inv, inv.hosts[HOST]).files}
    for dest in FILES:
        run(lab, HOST, "sh", "-c", f"mkdir -p /etc/sipops && cat > {dest}", stdin=rendered[dest])
    run(lab, HOST, "sh", "-c", "rm -f /var/lib/sipops/bans.sqlite*; systemctl daemon-reload && "
        "systemctl enable --now sipops-firewall sipops-watch")  # fmt: skip
    try:
        yield lab
    finally:
        files = " ".join(FILES)
        cleanup = f"systemctl disable --now sipops-watch sipops-firewall; rm -f {files} /var/lib/sipops/bans.sqlite*"
        run(lab, HOST, "sh", "-c", f"{cleanup}; systemctl daemon-reload; nft delete table inet sipops; true")


def _ship(lab: Lab) -> None:
    """sipops on HOST from a wheelhouse built here (as tests/e2e/test_watch.py's `shipped`)."""
    from sipops.provision import wheelhouse as agent

    version = run(lab, HOST, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])").strip()
    arch = run(lab, HOST, "uname", "-m").strip()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sipops-e2e"
    tar, stamp = agent.build_wheelhouse(cache, version, arch)
    run(lab, HOST, "sh", "-c", f"mkdir -p {Path(agent.REMOTE_TAR).parent} && cat > {agent.REMOTE_TAR}",
        stdin=tar.read_bytes())  # fmt: skip
    run(lab, HOST, "python3", "-c", agent._INSTALL, agent.REMOTE_TAR, "/opt/sipops", stamp, timeout=120)


def syn_flood(lab: Lab, attacker: str) -> None:
    state = lab.state
    argv = exec_argv(state, state.member(attacker), [sys.executable, "-c", SYN_FLOOD, lab.hosts[HOST]])
    subprocess.run(argv, capture_output=True, timeout=30, check=True)


def bans(lab: Lab) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(run(lab, HOST, SIPOPS, "bans", "--json"))
    return rows


def test_a_syn_flood_banned_by_the_meter_is_listed_with_its_rule_and_time_left(host: Lab) -> None:
    lab = host
    a1 = lab.attackers["a1"]
    syn_flood(lab, "a1")
    rows = [b for b in bans(lab) if b["address"] == a1]
    assert len(rows) == 1, bans(lab)
    assert rows[0]["rule"] == "syn_meter" and rows[0]["in_kernel"] is True
    assert 540 < rows[0]["remaining"] <= 600  # ban_timeout: 10m
    text = run(lab, HOST, SIPOPS, "bans")
    assert a1 in text and "syn_meter" in text
    health = lab.exec(HOST, SIPOPS, "health", "--local", "--check", "bans", "--state-dir", "/var/tmp/sipops-e2e-meter")
    assert "1 live bans" in health.stdout, health.stdout + health.stderr


def test_unban_removes_the_meter_ban_and_says_so(host: Lab) -> None:
    lab = host
    a1 = lab.attackers["a1"]
    out = run(lab, HOST, SIPOPS, "unban", a1)
    assert out.startswith(f"unbanned {a1}: removed from the kernel (nftables set ban4, rule syn_meter"), out
    assert [b for b in bans(lab) if b["address"] == a1] == []


def test_after_a_reboot_the_meter_ban_is_back_with_its_remaining_time(host: Lab) -> None:
    lab = host
    a2 = lab.attackers["a2"]
    flooded = time.time()
    syn_flood(lab, "a2")
    deadline = time.monotonic() + 45  # the watcher lists the meter's set every 30 s
    journaled: dict[str, Any] | None = None
    while time.monotonic() < deadline and journaled is None:
        journaled = next((b for b in bans(lab) if b["address"] == a2 and b["origin"] == "local"), None)
        time.sleep(1)
    assert journaled is not None and journaled["rule"] == "syn_meter", bans(lab)
    restart(lab.dir, HOST)
    rebooted = time.time()
    deadline = time.monotonic() + 30  # the watcher service restores the journal at start
    back: dict[str, Any] | None = None
    while time.monotonic() < deadline and back is None:
        back = next((b for b in bans(lab) if b["address"] == a2 and b["in_kernel"]), None)
        time.sleep(1)
    assert back is not None, bans(lab)
    assert back["rule"] == "syn_meter"
    expected = journaled["until"] - rebooted
    assert expected - 30 < back["remaining"] <= expected + 2
    assert back["remaining"] <= 600 - (time.time() - flooded) + 2  # not a fresh 10m ban: the time it had left
