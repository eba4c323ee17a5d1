"""Media relays in the lab: real rtpengine from Debian (rtpengine-daemon, userspace forwarding) on two
relay hosts, a real OpenSIPS proxy driving them, calls by `sipops calltest` with RTP both ways.

Its own lab: h1 registrar/proxy with media_relay: rtpengine over h2 and h3 (mediarelay role), phones in
the attacker namespaces a1 and a2. The phones drop every packet from each other, so the RTP they count
can only have come through a relay: the SDP each got names a relay, not the other phone.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sipops.cli.main import app
from sipops.lab.access import exec_argv
from sipops.lab.lifecycle import UpOptions, down, up
from sipops.lab.state import LabState

from .conftest import lab_skip_reason

pytestmark = [pytest.mark.e2e, pytest.mark.needs_opensips]
NETWORK = IPv4Network("198.18.128.0/20")  # no other test lab's range
PHONES = ("a1", "a2")

# ng `statistics` of a relay, asked from h1 (the firewall opens ng to the proxy only) with the health
# check's own client, shipped as a script.
NG_STATS = """
import json, socket, sys, os
cookie = os.urandom(4).hex().encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(cookie + b" d7:command10:statisticse", (sys.argv[1], int(sys.argv[2])))
print(s.recv(65535).decode(errors="replace"))
"""


class RelayLab:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.inventory = directory / "inventory.yaml"

    @property
    def state(self) -> LabState:
        state = LabState.load(self.dir)
        assert state is not None
        return state

    def exec(
        self, name: str, *cmd: str, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        state = self.state
        argv = exec_argv(state, state.member(name), list(cmd))
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)

    def address(self, name: str) -> str:
        return self.state.member(name).address

    def relayed_packets(self, relay: str) -> int:
        """rtpengine's count of the packets it relayed since it started (ng `statistics`)."""
        res = self.exec("h1", "python3", "-c", NG_STATS, self.address(relay), "2223")
        assert res.returncode == 0, res.stderr
        m = re.search(r"14:relayedpacketsi(\d+)e", res.stdout)
        assert m, res.stdout[:500]
        return int(m.group(1))


def sipops(*args: str | Path) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout + res.stderr


def _isolate_phones(lab: RelayLab) -> None:
    """Each phone drops whatever the other phones send it: media reaches it only through a relay."""
    for name in PHONES:
        others = ", ".join(lab.address(o) for o in PHONES if o != name)
        rules = (
            "table inet sipops_e2e_isolate {\n"
            "  chain input { type filter hook input priority -200; policy accept;\n"
            f"    ip saddr {{ {others} }} counter drop; }}\n"
            "}\n"
        )
        res = lab.exec(name, "nft", "-f", "-", stdin=rules)
        assert res.returncode == 0, res.stderr


def _wait_for_relays(lab: RelayLab) -> None:
    """OpenSIPS on h1 started before the relays' install restarted them: its rtpengine module disabled them
    for rtpengine_disable_tout (10 s) and re-tests them on its timer; calls until then get 503 (seen on
    3.4 and 3.6). Wait for a call to pass, bounded: 6 tries, 5 s apart."""
    out = ""
    for _ in range(6):
        code, out = sipops("calltest", "h1", "-i", lab.inventory, "-t", "udp", "--no-media")
        if code == 0:
            return
        time.sleep(5)
    raise AssertionError(f"calls through h1 still fail 30 s after install: {out}")


@pytest.fixture(scope="module")
def rlab(tmp_path_factory: pytest.TempPathFactory, opensips_prefix: Path) -> Iterator[RelayLab]:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("relaylab")
    opts = UpOptions(hosts=3, attackers=2, prefix="sipm", network=NETWORK, opensips_prefix=opensips_prefix)
    up(directory, opts, log=lambda _: None)
    try:
        lab = RelayLab(directory)
        data = yaml.safe_load(lab.inventory.read_text())
        data["hosts"]["h1"]["roles"] = ["registrar", "proxy"]
        data["hosts"]["h1"]["vars"] = {
            "media_relay": "rtpengine",
            "media_relays": ["h2", "h3"],
            "media_relay_policy": "all",  # the lab's phones are not behind NAT
        }
        for relay in ("h2", "h3"):
            data["hosts"][relay]["roles"] = ["mediarelay"]
            data["hosts"][relay]["vars"] = {"relay_calls": 500}
        lab.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        code, out = sipops("install", "all", "-i", lab.inventory)
        assert code == 0, out
        lab.install_output = out  # type: ignore[attr-defined]
        _isolate_phones(lab)
        _wait_for_relays(lab)
        yield lab
    finally:
        down(directory, log=lambda _: None)


def calltest(lab: RelayLab, *extra: str) -> tuple[int, dict[str, Any], str]:
    code, out = sipops("calltest", "h1", "-i", lab.inventory, "-t", "udp", "--json", *extra)
    return code, json.loads(out[out.index("{") :]), out


def health(lab: RelayLab) -> dict[str, Any]:
    # The exit code is Nagios's; stdout is the JSON document alone (the summary table goes to stderr).
    res = CliRunner().invoke(app, ["health", "h1", "-i", str(lab.inventory), "--format", "json"])
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def relay_check(doc: Any) -> dict[str, Any]:
    """The relays check of h1 in `health --format json` output, whatever the nesting."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") == "relays" and "status" in node:
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert found, json.dumps(doc)[:2000]
    return found[0]


def test_install_says_the_relays_forward_in_userspace(rlab: RelayLab) -> None:
    conf = rlab.exec("h2", "cat", "/etc/rtpengine/rtpengine.conf").stdout
    assert "table = -1" in conf and f"interface = default/{rlab.address('h2')}" in conf
    assert "userspace forwarding" in rlab.install_output  # type: ignore[attr-defined]
    state = rlab.exec("h2", "systemctl", "is-active", "rtpengine-daemon").stdout.strip()
    assert state == "active"


def test_calls_through_the_proxy_carry_media_both_ways_through_a_relay(rlab: RelayLab) -> None:
    before = sum(rlab.relayed_packets(r) for r in ("h2", "h3"))
    code, doc, out = calltest(rlab)
    failed = [c for c in doc["checks"] if c["status"] != "ok"]
    assert code == 0 and not failed, json.dumps(failed, indent=1)
    calls = [c for c in doc["checks"] if c["check"] == "call"]
    assert calls, out
    for c in calls:
        d = c["data"]
        # The phones drop each other's packets: what they received came from a relay.
        assert d["rtp_caller_sent"] > 200 and d["rtp_callee_received"] > 0.9 * d["rtp_caller_sent"], d
        assert d["rtp_callee_sent"] > 200 and d["rtp_caller_received"] > 0.9 * d["rtp_callee_sent"], d
    # Every RTP packet the phones sent went through a relay (plus DTMF and RTCP).
    relayed = sum(rlab.relayed_packets(r) for r in ("h2", "h3")) - before
    sent = sum(c["data"]["rtp_caller_sent"] + c["data"]["rtp_callee_sent"] for c in calls)
    assert relayed >= sent, (relayed, sent)


def test_health_reports_every_relay_with_its_figures(rlab: RelayLab) -> None:
    check = relay_check(health(rlab))
    assert check["status"] in ("OK", "ok", 0), check
    text = json.dumps(check)
    assert "h2 up" in text and "h3 up" in text and "relay_up" in text, text


def test_a_stopped_relay_is_failed_over_and_every_relay_stopped_fails_calls_clearly(rlab: RelayLab) -> None:
    assert rlab.exec("h2", "systemctl", "stop", "rtpengine-daemon").returncode == 0
    try:
        code, _, out = calltest(rlab)
        assert code == 0, out  # h3 carries the calls
        check = relay_check(health(rlab))
        assert "1 of 2 media relays down" in json.dumps(check), check
        assert rlab.exec("h3", "systemctl", "stop", "rtpengine-daemon").returncode == 0
        try:
            code, _, out = calltest(rlab)
            assert code == 1, out
            check = relay_check(health(rlab))
            assert "every media relay is down" in json.dumps(check), check
            log = rlab.exec("h1", "tail", "-n", "200", "/var/log/opensips.log").stdout
            assert "SIPOPS-MEDIA no media relay answered" in log, log[-2000:]
        finally:
            assert rlab.exec("h3", "systemctl", "start", "rtpengine-daemon").returncode == 0
    finally:
        assert rlab.exec("h2", "systemctl", "start", "rtpengine-daemon").returncode == 0


def _opensips_pid(lab: RelayLab) -> str:
    return lab.exec("h1", "systemctl", "show", "-p", "MainPID", "--value", "opensips").stdout.strip()


def test_the_relay_set_changes_without_restarting_opensips(rlab: RelayLab) -> None:
    data = yaml.safe_load(rlab.inventory.read_text())
    pid = _opensips_pid(rlab)
    data["hosts"]["h1"]["vars"]["media_relays"] = ["h3"]
    rlab.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        code, out = sipops("push", "h1", "-i", rlab.inventory)
        assert code == 0, out
        assert _opensips_pid(rlab) == pid  # dbt_reload + rtpengine_reload over MI, no restart
        before = {r: rlab.relayed_packets(r) for r in ("h2", "h3")}
        code, _, out = calltest(rlab)
        assert code == 0, out
        assert rlab.relayed_packets("h2") == before["h2"], "h2 left the set but still relays"
        assert rlab.relayed_packets("h3") > before["h3"] + 400, out
    finally:
        data["hosts"]["h1"]["vars"]["media_relays"] = ["h2", "h3"]
        rlab.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        code, out = sipops("push", "h1", "-i", rlab.inventory)
        assert code == 0, out
