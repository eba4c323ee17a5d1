"""`sipops calltest` against a lab with a real OpenSIPS: every role passes over UDP and TCP with media
both ways and DTMF, digest auth (accounts from `sipops users`, named or made by calltest itself), a
gateway stopped mid-test is failed over, load mode, and a proxy that does not record-route fails
naming that step.

Its own lab (3 hosts: h1 registrar/proxy, h2 registrar/proxy with registrar_auth, h3 load balancer; 3
attacker namespaces). The lab inventory gives h3 the edge nodes as gateways; a call test needs callees
at the gateways' addresses, so this inventory points h3 at a1 and a2, where calltest runs them, and the
phones call from the attackers too.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sipops.cli.main import app
from sipops.inventory import load_inventory
from sipops.lab.access import exec_argv
from sipops.lab.lifecycle import UpOptions, down, up
from sipops.lab.state import LabState
from sipops.users import add_accounts, list_accounts

from .conftest import lab_skip_reason

pytestmark = [pytest.mark.e2e, pytest.mark.needs_opensips]
NETWORK = IPv4Network("198.18.96.0/20")  # no other test lab's range (bench/calls.py: 198.18.112.0/20)
ACCOUNTS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}


class CallLab:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.inventory = directory / "inventory.yaml"

    @property
    def state(self) -> LabState:
        state = LabState.load(self.dir)
        assert state is not None
        return state

    def exec(self, name: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        state = self.state
        argv = exec_argv(state, state.member(name), list(cmd))
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def address(self, name: str) -> str:
        return self.state.member(name).address


def sipops(*args: str | Path) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout + res.stderr


@pytest.fixture(scope="module")
def clab(tmp_path_factory: pytest.TempPathFactory, opensips_prefix: Path) -> Iterator[CallLab]:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("calllab")
    opts = UpOptions(hosts=3, attackers=3, prefix="sipq", network=NETWORK, opensips_prefix=opensips_prefix)
    up(directory, opts, log=lambda _: None)
    try:
        lab = CallLab(directory)
        data = yaml.safe_load(lab.inventory.read_text())
        data["hosts"]["h2"]["vars"] = {"registrar_auth": True}
        data["hosts"]["h3"]["vars"]["gateways"] = [
            {"name": "gw1", "address": lab.address("a1"), "port": 5060, "set": 1, "kind": "media"},
            {"name": "gw2", "address": lab.address("a2"), "port": 5060, "set": 1, "kind": "media"},
        ]
        lab.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        code, out = sipops("install", "all", "-i", lab.inventory)
        assert code == 0, out
        # The accounts the user names (calltest makes its own when none are named: see below).
        add_accounts(load_inventory(lab.inventory), "h2", list(ACCOUNTS.items()))
        yield lab
    finally:
        down(directory, log=lambda _: None)


def account_args() -> list[str]:
    return [a for user, pw in ACCOUNTS.items() for a in ("--account", f"{user}:{pw}")]


@pytest.fixture(scope="module")
def full_run(clab: CallLab) -> tuple[int, dict[str, Any], str]:
    code, out = sipops("calltest", "all", "-i", clab.inventory, "--json", *account_args())
    return code, json.loads(out[out.index("{") :]), out


def checks(doc: dict[str, Any], host: str, check: str) -> dict[str, dict[str, Any]]:
    return {c["transport"]: c for c in doc["checks"] if c["host"] == host and c["check"] == check}


def test_every_role_of_the_lab_passes_over_udp_and_tcp(full_run: tuple[int, dict[str, Any], str]) -> None:
    code, doc, out = full_run
    failed = [c for c in doc["checks"] if c["status"] != "ok"]
    assert code == 0 and doc["ok"] and not failed, json.dumps(failed, indent=1)
    expected = {
        "h1": ["register", "call", "cancel", "unknown-user"],
        "h2": ["register", "wrong-password", "call", "cancel", "unknown-user"],
        "h3": ["gateways", "failover"],
    }
    for host, names in expected.items():
        for name in names:
            assert set(checks(doc, host, name)) == {"udp", "tcp"}, (host, name, out)


@pytest.mark.parametrize("host", ["h1", "h2"])
def test_calls_carry_media_both_ways_and_the_digits(full_run: tuple[int, dict[str, Any], str], host: str) -> None:
    for transport, c in checks(full_run[1], host, "call").items():
        d = c["data"]
        assert d["rtp_caller_sent"] > 200 and d["rtp_callee_received"] == d["rtp_caller_sent"], (transport, d)
        assert d["rtp_callee_sent"] > 200 and d["rtp_caller_received"] == d["rtp_callee_sent"], (transport, d)
        assert d["dtmf_packets_received"] > 0 and "DTMF 1234 received" in c["detail"]


def test_every_gateway_gets_calls_and_a_stopped_one_is_failed_over(full_run: tuple[int, dict[str, Any], str]) -> None:
    doc = full_run[1]
    for c in checks(doc, "h3", "gateways").values():
        assert c["data"]["per_gateway"]["gw1"] > 0 and c["data"]["per_gateway"]["gw2"] > 0, c
    for c in checks(doc, "h3", "failover").values():
        assert c["data"]["stopped"] == "gw2" and c["data"]["answered"] == c["data"]["calls"], c
        assert "gateway gw2" in c["detail"] and c["data"]["failed_over"] >= 1, c


def test_without_accounts_calltest_makes_its_own_and_removes_them(clab: CallLab) -> None:
    code, out = sipops("calltest", "h2", "-i", clab.inventory, "-t", "udp", "--no-media", "--dtmf", "")
    assert code == 0, out
    assert "h2: register (udp): ok" in out and "h2: call (udp): ok" in out
    assert sorted(u for u, _ in list_accounts(load_inventory(clab.inventory), "h2")) == sorted(ACCOUNTS)


def test_load_mode_reports_answers_setup_times_and_rtp_loss(clab: CallLab) -> None:
    code, out = sipops("calltest", "h1", "-i", clab.inventory, "--rate", "4", "--calls", "8", "--json")
    doc = json.loads(out[out.index("{") :])
    assert code == 0 and doc["ok"], out
    assert (doc["attempts"], doc["answered"], doc["failed"]) == (8, 8, 0)
    assert doc["setup_ms"]["p99"] is not None and doc["rtp"]["loss_to_callee"] == 0.0, doc


def test_a_proxy_that_drops_record_route_fails_naming_the_step(clab: CallLab, tmp_path: Path) -> None:
    # A user's template override beside a copy of the inventory (file by file, as sipops documents it).
    broken = tmp_path / "broken"
    (broken / "templates" / "opensips").mkdir(parents=True)
    packaged = (Path(__file__).resolve().parents[2] / "templates" / "opensips" / "opensips.cfg.j2").read_text()
    line = '\tif (!is_method("REGISTER"))\n\t\trecord_route();\n'
    assert line in packaged
    (broken / "templates" / "opensips" / "opensips.cfg.j2").write_text(packaged.replace(line, ""))
    data = yaml.safe_load(clab.inventory.read_text())
    for key in ("key", "known_hosts"):
        data["defaults"]["ssh"][key] = str(clab.dir / data["defaults"]["ssh"][key])
    (broken / "inventory.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    code, out = sipops("push", "h1", "-i", broken / "inventory.yaml")
    assert code == 0, out
    try:
        # The lab's attackers still place the phones: the broken inventory is no lab's, so say where.
        netns = ["--from-netns", clab.state.member("a1").netns, "--from-netns", clab.state.member("a2").netns]
        code, out = sipops("calltest", "h1", "-i", broken / "inventory.yaml", "-t", "udp", *netns)
        assert code == 1, out
        assert "h1: call (udp): FAILED: no Record-Route in the dialog: the proxy does not record-route" in out
    finally:
        code, restored = sipops("push", "h1", "-i", clab.inventory)
        assert code == 0, restored
