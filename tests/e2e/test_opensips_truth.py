"""What OpenSIPS runs is what the inventory says, and a failed push says the truth (needs_opensips).

A load balancer (h1, the OpenSIPS build copied in) over gateways in the attackers' namespaces:
- a gateway's address changed and pushed: ds_list / lb_list show the new one, not the old one, and the
  balancer's OPTIONS probes reach the new address;
- a handler whose MI call returns a JSON-RPC error fails the push, which rolls back;
- a table edited and reloaded behind sipops' back: health reports the drift, diff shows it;
- a listen address the host lacks is refused before anything changes;
- a cfg that fails at start (a port another process holds: `-C` cannot see it) is rolled back quickly,
  and the summary says the restored config is healthy.
"""

from __future__ import annotations

import json
import shutil
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
NETWORK = IPv4Network("198.18.192.0/20")
ROOT = Path(__file__).resolve().parents[2]
SIPOPS = [sys.executable, "-c", "from sipops.cli.main import run; run()"]
CFG_FILES = ["etc/opensips/opensips.cfg", "etc/opensips/dbtext/dispatcher"]

# Answers SIP OPTIONS with 200 and prints the source of each, for a bounded time (the gateway stand-in).
RESPONDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5060))
s.settimeout(0.5)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        continue
    text = data.decode(errors="replace")
    if not text.startswith("OPTIONS "):
        continue
    print("OPTIONS from", peer[0], flush=True)
    head = text.split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [h for h in head[1:] if h.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
    reply = "SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
    s.sendto(reply.encode(), peer)
"""


class TruthLab:
    def __init__(self, directory: Path, prefix: Path) -> None:
        self.dir = directory
        self.inventory = directory / "inventory.yaml"
        self.opensips_prefix = prefix
        self.base = yaml.safe_load(self.inventory.read_text())

    @property
    def state(self) -> LabState:
        state = LabState.load(self.dir)
        assert state is not None
        return state

    def address(self, name: str) -> str:
        return self.state.member(name).address

    def exec(self, name: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        state = self.state
        argv = exec_argv(state, state.member(name), list(cmd))
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def popen(self, name: str, *cmd: str) -> subprocess.Popen[str]:
        state = self.state
        argv = exec_argv(state, state.member(name), list(cmd))
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def gateways(self, *names: str) -> list[dict[str, Any]]:
        return [{"name": f"gw{i}", "address": self.address(n), "set": 1} for i, n in enumerate(names, 1)]

    def set_vars(self, **host_vars: Any) -> None:
        """h1's vars: the load balancer's, with these on top (the lab's inventory otherwise)."""
        data = json.loads(json.dumps(self.base))
        data["hosts"]["h1"]["roles"] = ["loadbalancer"]
        data["hosts"]["h1"]["vars"] = {
            "gateways": self.gateways("a1", "a2"),
            "lb_ping_interval": 1,
            "lb_probing_mode": 1,
            "watcher": False,
            **host_vars,
        }
        self.inventory.write_text(yaml.safe_dump(data))

    def sipops(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [*SIPOPS, *args, "-i", str(self.inventory)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)

    def mi(self, method: str) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1})
        res = self.exec("h1", "curl", "-sS", "--max-time", "5", "-X", "POST", "http://127.0.0.1:8888/mi",
                        "-H", "Content-Type: application/json", "-d", body)  # fmt: skip
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)["result"]

    def hashes(self) -> str:
        paths = [f"{self.opensips_prefix}/{p}" for p in CFG_FILES]
        return self.exec("h1", "sha256sum", *paths).stdout


@pytest.fixture(scope="module")
def tlab(tmp_path_factory: pytest.TempPathFactory, opensips_prefix: Path) -> Iterator[TruthLab]:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("truthlab")
    opts = UpOptions(hosts=1, attackers=3, prefix="sipg", network=NETWORK, opensips_prefix=opensips_prefix)
    up(directory, opts, log=lambda _: None)
    try:
        lab = TruthLab(directory, opensips_prefix)
        lab.set_vars()
        res = lab.sipops("install", "h1", timeout=900)
        assert res.returncode == 0, res.stdout + res.stderr
        yield lab
    finally:
        down(directory, log=lambda _: None)


def _uris(listing: Any) -> set[str]:
    text = json.dumps(listing)
    return {u for u in (w.strip('",') for w in text.split()) if u.startswith("sip:")}


def _gateway_check(lab: TruthLab) -> dict[str, Any]:
    health = lab.sipops("health", "h1", "--format", "json")
    checks = json.loads(health.stdout)["hosts"][0]["checks"]
    found: dict[str, Any] = next(c for c in checks if c["name"] == "gateways")
    return found


def _probes_reach(lab: TruthLab, name: str, seconds: float = 6) -> str:
    """Run the responder in an attacker's namespace for a bounded time; what it saw."""
    proc = lab.popen(name, "python3", "-c", RESPONDER, str(seconds))
    try:
        out, _ = proc.communicate(timeout=seconds + 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


@pytest.mark.parametrize("engine", ["dispatcher", "load_balancer"])
def test_a_changed_gateway_address_is_what_opensips_runs_after_push(tlab: TruthLab, engine: str) -> None:
    method = "ds_list" if engine == "dispatcher" else "lb_list"
    tlab.set_vars(lb_engine=engine)
    res = tlab.sipops("push", "h1")
    assert res.returncode == 0, res.stdout + res.stderr
    a1, a2, a3 = (tlab.address(n) for n in ("a1", "a2", "a3"))
    assert _uris(tlab.mi(method)) == {f"sip:{a1}:5060", f"sip:{a2}:5060"}

    tlab.set_vars(lb_engine=engine, gateways=tlab.gateways("a1", "a3"))  # same count, one address changed
    res = tlab.sipops("push", "h1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "reload gateways" in res.stdout, res.stdout
    assert _uris(tlab.mi(method)) == {f"sip:{a1}:5060", f"sip:{a3}:5060"}  # the old a2 is gone
    if engine == "dispatcher":  # dispatcher probes every destination each second (lb probes only failed ones)
        assert f"OPTIONS from {tlab.address('h1')}" in _probes_reach(tlab, "a3")
    # Calls reach the new address: calltest's callee for gw2 answers on a3 now.
    call = tlab.sipops("calltest", "h1", "-t", "udp", "--no-media", "--dtmf", "", "--json")
    spread = next(c for c in json.loads(call.stdout)["checks"] if c["check"] == "gateways")
    assert spread["status"] == "ok" and spread["data"]["per_gateway"]["gw2"] > 0, spread
    gateways = _gateway_check(tlab)
    assert "differs" not in gateways["message"], gateways


def test_a_handler_whose_mi_call_fails_fails_the_push_and_rolls_back(tlab: TruthLab) -> None:
    tlab.set_vars()
    assert tlab.sipops("push", "h1").returncode == 0
    before = tlab.hashes()
    roles = tlab.dir / "roles"
    roles.mkdir(exist_ok=True)
    packaged = (ROOT / "roles" / "loadbalancer.yaml").read_text()
    assert "dbt_reload {{" in packaged
    (roles / "loadbalancer.yaml").write_text(packaged.replace("dbt_reload {{", "dbt_reloadx {{"))
    try:
        tlab.set_vars(gateways=tlab.gateways("a1", "a3"))
        res = tlab.sipops("push", "h1")
    finally:
        shutil.rmtree(roles)
    assert res.returncode == 1, res.stdout
    assert "ROLLED BACK: handler 'reload gateways' failed" in res.stdout, res.stdout
    assert "MI dbt_reloadx failed" in res.stdout and '"error"' in res.stdout, res.stdout
    assert tlab.hashes() == before


def test_health_and_diff_report_a_gateway_changed_behind_sipops_back(tlab: TruthLab) -> None:
    tlab.set_vars()
    assert tlab.sipops("push", "h1").returncode == 0
    table = f"{tlab.opensips_prefix}/etc/opensips/dbtext/dispatcher"
    a2, a3 = tlab.address("a2"), tlab.address("a3")
    edit = tlab.exec("h1", "sed", "-i", f"s/{a2}/{a3}/", table)
    assert edit.returncode == 0, edit.stderr
    tlab.mi("dbt_reload")
    tlab.mi("ds_reload")
    gateways = _gateway_check(tlab)
    assert gateways["status"] == "WARNING", gateways
    assert f"-set 1 sip:{a2}:5060" in gateways["message"] and f"+set 1 sip:{a3}:5060" in gateways["message"]
    diff = tlab.sipops("diff", "h1")
    assert "dbtext/dispatcher" in diff.stdout and a3 in diff.stdout, diff.stdout
    assert f"runtime ds_list differs from the inventory: +set 1 sip:{a3}:5060" in diff.stdout, diff.stdout
    # The file put back by hand but never reloaded: no file differs, what runs still does.
    assert tlab.exec("h1", "sed", "-i", f"s/{a3}/{a2}/", table).returncode == 0
    diff = tlab.sipops("diff", "h1")
    assert "dbtext/dispatcher" not in diff.stdout, diff.stdout
    assert f"runtime ds_list differs from the inventory: -set 1 sip:{a2}:5060" in diff.stdout, diff.stdout
    assert tlab.sipops("push", "h1").returncode == 0  # put back
    assert _uris(tlab.mi("ds_list")) == {f"sip:{tlab.address('a1')}:5060", f"sip:{a2}:5060"}


def test_a_listen_address_the_host_lacks_is_refused_before_anything_changes(tlab: TruthLab) -> None:
    tlab.set_vars()
    assert tlab.sipops("push", "h1").returncode == 0
    before = tlab.hashes()
    other = tlab.address("a1")  # an address of another machine
    tlab.set_vars(sip_listen=other)
    res = tlab.sipops("push", "h1")
    assert res.returncode == 1, res.stdout
    assert f"opensips.cfg listens on {other}, which is not an address of this host" in res.stdout, res.stdout
    assert tlab.address("h1") in res.stdout  # the host's own addresses are named
    assert tlab.hashes() == before
    assert tlab.exec("h1", "systemctl", "is-active", "opensips").stdout.strip() == "active"


def test_a_cfg_that_fails_at_start_is_rolled_back_fast_and_the_restored_one_is_healthy(tlab: TruthLab) -> None:
    tlab.set_vars()
    assert tlab.sipops("push", "h1").returncode == 0
    before = tlab.hashes()
    # Another program holds UDP 5070 on the host: `opensips -C` passes, the start fails to bind.
    hold = "import socket, time; s = socket.socket(2, 2); s.bind(('0.0.0.0', 5070)); time.sleep(60)"
    holder = tlab.popen("h1", "python3", "-c", hold)
    try:
        time.sleep(1)
        tlab.set_vars(sip_port=5070)
        t = time.monotonic()
        res = tlab.sipops("push", "h1")
        took = time.monotonic() - t
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 1, res.stdout
    assert "ROLLED BACK" in res.stdout and "previous config restored and healthy" in res.stdout, res.stdout
    assert "FAILED too" not in res.stdout
    assert took < 15, f"the push waited {took:.1f} s on a service that had failed"
    assert tlab.hashes() == before
    assert tlab.exec("h1", "systemctl", "is-active", "opensips").stdout.strip() == "active"


def _opensips_pid(lab: TruthLab) -> str:
    return lab.exec("h1", "systemctl", "show", "-p", "MainPID", "--value", "opensips").stdout.strip()


def test_a_routes_only_change_is_reloaded_without_a_restart(tlab: TruthLab) -> None:
    tlab.set_vars()
    assert tlab.sipops("push", "h1").returncode == 0
    pid = _opensips_pid(tlab)
    tlab.set_vars(lb_failover_codes="408|50[0-9]")  # used in failure_route[gw_failover] only
    diff = tlab.sipops("diff", "h1")
    assert "failure_route[gw_failover] changed: reload routes" in diff.stdout, diff.stdout
    res = tlab.sipops("push", "h1")
    assert res.returncode == 0 and "ran reload routes" in res.stdout, res.stdout
    assert _opensips_pid(tlab) == pid  # the same process: calls, transactions and TCP connections kept


def test_a_modparam_change_restarts_opensips(tlab: TruthLab) -> None:
    tlab.set_vars()
    assert tlab.sipops("push", "h1").returncode == 0
    pid = _opensips_pid(tlab)
    tlab.set_vars(sip_fr_timeout=7)
    diff = tlab.sipops("diff", "h1")
    assert 'modparam("tm", "fr_timeout", 7) changed: restart opensips' in diff.stdout, diff.stdout
    res = tlab.sipops("push", "h1")
    assert res.returncode == 0 and "ran restart opensips" in res.stdout, res.stdout
    assert _opensips_pid(tlab) != pid
