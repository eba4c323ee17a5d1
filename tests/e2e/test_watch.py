"""`sipops watch --ban` on a lab host: a flooder from an attacker namespace is banned in the kernel within
2 s, its packets dropped and its connections gone; an allowlisted flooder and a polite client keep working;
bans expire; a restart restores live bans with their remaining time; an unban survives a restart.

The lab hosts have python3 and no sipops: the test ships the real CLI the way `sipops install` does, a
wheelhouse built on this machine for the host's Python (sipops.provision.wheelhouse), unpacked by python3 into
/opt/sipops. The hosts have nftables but not python3-nftables, so this is the `nft -f -` executor.
Run as: flock /tmp/sipops-e2e.lock python -m pytest tests/e2e/test_watch.py
"""

from __future__ import annotations

import json
import os
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipops.lab.access import exec_argv

from .conftest import Lab

pytestmark = pytest.mark.e2e

HOST, PORT = "h1", 5060
JOURNAL = "/var/lib/sipops-e2e-watch/bans.sqlite"
WATCH_LOG = "/var/tmp/sipops-e2e-watch.log"
SIP_LOG = "/var/tmp/sipops-e2e-opensips.log"
SIPOPS = "/opt/sipops/bin/sipops"
# Holds every accepted connection on PORT; gives up after 300 s whatever happens.
LISTENER = f"""
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(1024); s.settimeout(0.5)
held, end = [], time.monotonic() + 300
while time.monotonic() < end:
    try:
        held.append(s.accept()[0])
    except OSError:
        pass
"""
# Opens N connections, prints READY, holds them until stdin closes (at most 60 s).
FLOOD = """
import select, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = [socket.create_connection((host, port), timeout=5) for _ in range(min(n, 100))]
print("READY", flush=True)
select.select([sys.stdin], [], [], 60)
"""
PROBE = "import socket, sys\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()"


def run(lab: Lab, name: str, *cmd: str, timeout: float = 60, stdin: bytes | None = None) -> str:
    state = lab.state
    argv = exec_argv(state, state.member(name), list(cmd))
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{name}: {' '.join(cmd)[:200]}: {proc.stderr.decode(errors='replace')[-500:]}"
    return proc.stdout.decode()


def can_connect(lab: Lab, name: str) -> bool:
    state = lab.state
    python = sys.executable if state.member(name).kind == "attacker" else "python3"
    argv = exec_argv(state, state.member(name), [python, "-c", PROBE, lab.hosts[HOST], str(PORT)])
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


def ban4(lab: Lab) -> dict[str, dict[str, object]]:
    state = lab.state
    argv = exec_argv(state, state.member(HOST), ["nft", "-j", "list", "set", "inet", "sipops", "ban4"])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        return {}
    out: dict[str, dict[str, object]] = {}
    for item in json.loads(proc.stdout)["nftables"]:
        for e in item.get("set", {}).get("elem", []):
            elem = e["elem"] if isinstance(e, dict) else {"val": e}
            out[str(elem["val"])] = elem
    return out


@pytest.fixture(scope="module")
def shipped(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """sipops installed on HOST from a wheelhouse built here (cached by source digest)."""
    from sipops.provision import wheelhouse as agent

    version = run(lab, HOST, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])").strip()
    arch = run(lab, HOST, "uname", "-m").strip()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sipops-e2e"
    tar, stamp = agent.build_wheelhouse(cache, version, arch)
    run(lab, HOST, "sh", "-c", f"mkdir -p {Path(agent.REMOTE_TAR).parent} && cat > {agent.REMOTE_TAR}",
        stdin=tar.read_bytes())  # fmt: skip
    run(lab, HOST, "python3", "-c", agent._INSTALL, agent.REMOTE_TAR, "/opt/sipops", stamp, timeout=120)
    assert run(lab, HOST, SIPOPS, "--version").startswith("sipops ")
    return lab


@pytest.fixture(scope="module")
def listener(shipped: Lab) -> Iterator[Lab]:
    lab = shipped
    pid = run(lab, HOST, "sh", "-c", f"setsid python3 -c {shlex.quote(LISTENER)} </dev/null >/dev/null 2>&1 & echo $!")
    try:
        deadline = time.monotonic() + 10
        while not can_connect(lab, "h2") and time.monotonic() < deadline:
            time.sleep(0.2)
        yield lab
    finally:
        run(lab, HOST, "kill", pid.strip())


class Watcher:
    """`sipops watch --ban` on HOST, started over SSH (so the controller's address is the SSH source)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.pid: str | None = None

    def start(self) -> None:
        allow = self.lab.attackers["a2"]
        cmd = (f"SIPOPS_STATE_DIR=/var/lib/sipops-e2e-watch setsid {SIPOPS} watch --ban --port {PORT} "
               f"--max-conns 20 --ban-for 4s --interval 1 --allow {allow} --journal {JOURNAL} --sip-log {SIP_LOG} "
               f"--json "
               f"</dev/null >>{WATCH_LOG} 2>&1 & echo $!")  # fmt: skip
        self.pid = run(self.lab, HOST, "sh", "-c", cmd).strip()
        deadline = time.monotonic() + 20  # the first poll runs after start() restored the journal
        while time.monotonic() < deadline:
            if run(self.lab, HOST, "sh", "-c", f"wc -l < {WATCH_LOG}").strip() not in ("", "0"):
                return
            time.sleep(0.2)
        raise AssertionError(run(self.lab, HOST, "cat", WATCH_LOG))

    def stop(self) -> None:
        if self.pid:
            run(self.lab, HOST, "sh", "-c", f"kill {self.pid}; sleep 0.3; kill -9 {self.pid} 2>/dev/null; true")
            self.pid = None
        run(self.lab, HOST, "sh", "-c", f": > {WATCH_LOG}")


@pytest.fixture(scope="module")
def watcher(listener: Lab) -> Iterator[Watcher]:
    lab = listener
    run(lab, HOST, "sh", "-c", f"rm -f {JOURNAL}* {WATCH_LOG}")
    w = Watcher(lab)
    w.start()
    try:
        yield w
    finally:
        w.stop()
        run(lab, HOST, "sh", "-c", "nft delete table inet sipops 2>/dev/null; true")


def flood(lab: Lab, attacker: str, n: int) -> subprocess.Popen[str]:
    state = lab.state
    argv = exec_argv(state, state.member(attacker), [sys.executable, "-c", FLOOD, lab.hosts[HOST], str(PORT), str(n)])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready and proc.stdout.readline().strip() == "READY", f"{attacker} could not open {n} connections"
    return proc


def established_from(lab: Lab, address: str) -> int:
    out = run(lab, HOST, "ss", "-Htn", "state", "established", f"( sport = :{PORT} and dst {address} )")
    return len(out.splitlines())


def test_a_flooder_is_banned_within_two_seconds_dropped_and_disconnected_others_keep_working(watcher: Watcher) -> None:
    lab = watcher.lab
    a1, a2 = lab.attackers["a1"], lab.attackers["a2"]
    allowed = flood(lab, "a2", 40)  # allowlisted: never banned
    attacker = flood(lab, "a1", 40)
    crossed = time.time()
    try:
        banned_at = None
        while time.time() - crossed < 5:
            if a1 in ban4(lab):
                banned_at = time.time()
                break
            time.sleep(0.1)
        assert banned_at is not None, run(lab, HOST, "tail", "-5", WATCH_LOG)
        assert banned_at - crossed <= 2.0
        assert not can_connect(lab, "a1")  # its packets are dropped
        assert established_from(lab, a1) == 0  # its connections are gone
        assert a2 not in ban4(lab)
        assert established_from(lab, a2) == 40
        assert can_connect(lab, "a2") and can_connect(lab, "h2")  # the allowlisted flooder, a polite client
    finally:
        for proc in (allowed, attacker):
            proc.kill()
            proc.wait()
    # --all: the 4 s ban may have run out during the checks above on a loaded machine
    bans = json.loads(run(lab, HOST, SIPOPS, "bans", "--json", "--all", "--journal", JOURNAL))
    assert [(b["address"], b["rule"]) for b in bans] == [(a1, "conn_flood")]
    assert "conns=40>20 port=5060" in bans[0]["evidence"]


def test_the_ban_expires(watcher: Watcher) -> None:
    lab = watcher.lab
    deadline = time.monotonic() + 15
    while lab.attackers["a1"] in ban4(lab) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lab.attackers["a1"] not in ban4(lab)
    assert can_connect(lab, "a1")


def test_a_restart_restores_live_bans_with_their_remaining_time(watcher: Watcher) -> None:
    lab = watcher.lab
    a1 = lab.attackers["a1"]
    run(lab, HOST, SIPOPS, "ban", a1, "--for", "10m", "--reason", "e2e", "--journal", JOURNAL)
    assert not can_connect(lab, "a1")
    watcher.stop()
    run(lab, HOST, "nft", "flush", "set", "inet", "sipops", "ban4")  # as if the kernel had lost it (reboot)
    assert can_connect(lab, "a1")
    time.sleep(2)
    watcher.start()
    elem = ban4(lab).get(a1)
    assert elem is not None, "not restored"
    assert elem["timeout"] == 600
    assert 540 < int(str(elem["expires"])) < 600
    assert not can_connect(lab, "a1")


def test_an_unban_survives_a_restart(watcher: Watcher) -> None:
    lab = watcher.lab
    a1 = lab.attackers["a1"]
    assert a1 in ban4(lab)
    run(lab, HOST, SIPOPS, "unban", a1, "--journal", JOURNAL)
    assert a1 not in ban4(lab) and can_connect(lab, "a1")
    watcher.stop()
    watcher.start()
    assert a1 not in ban4(lab)
    assert can_connect(lab, "a1")
    assert json.loads(run(lab, HOST, SIPOPS, "bans", "--json", "--journal", JOURNAL)) == []


def test_a_sip_scanner_logged_by_opensips_is_banned(watcher: Watcher) -> None:
    lab = watcher.lab
    a1 = lab.attackers["a1"]
    line = f'Nov 28 10:45:11 h1 /usr/sbin/opensips[2211]: SIPOPS-SCANNER src={a1} ua="friendly-scanner"'
    run(lab, HOST, "sh", "-c", f"echo {shlex.quote(line)} >> {SIP_LOG}")
    deadline = time.monotonic() + 3
    while a1 not in ban4(lab) and time.monotonic() < deadline:
        time.sleep(0.1)
    elem = ban4(lab).get(a1)
    assert elem is not None and elem["comment"] == "sip_scanner"
    assert not can_connect(lab, "a1")
    run(lab, HOST, SIPOPS, "unban", a1, "--journal", JOURNAL)
