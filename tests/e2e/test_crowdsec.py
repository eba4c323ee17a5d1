"""Fleet-wide bans through a real CrowdSec LAPI (Debian 12's crowdsec, installed by `sipops install`).

Its own lab: h1 and h2 registrar/proxy, h3 the LAPI (role crowdsec), attackers a1 and a2. A SIP
scanner from an attacker is caught by h1's watcher (OpenSIPS logs its User-Agent); h2 must drop it
within 5 s without ever seeing its traffic; `cscli decisions delete` on the LAPI lifts it on both;
a LAPI stopped for a while loses nothing; a decision against the allowlisted operator is never applied.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sipops.cli.main import app
from sipops.lab.access import exec_argv
from sipops.lab.lifecycle import UpOptions, down, up
from sipops.lab.state import LabState
from tests.opensips_builds import prefixes

from .conftest import lab_skip_reason

pytestmark = [pytest.mark.e2e, pytest.mark.needs_opensips]
NETWORK = IPv4Network("198.18.64.0/20")  # no other test lab's range
PROXIES = ("h1", "h2")
LAPI = "h3"

# An OPTIONS from a SIP scanner's User-Agent (the proxy role logs SIPOPS-SCANNER for it and does not
# answer); with `probe`, an ordinary OPTIONS that waits for an answer (a banned source gets none).
SCANNER = """
import socket, sys, os
dst, probe = sys.argv[1], len(sys.argv) > 2
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0); s.connect((dst, 5060))
me = s.getsockname()[0]; tag = os.urandom(4).hex()
msg = (f"OPTIONS sip:100@{dst} SIP/2.0\\r\\nVia: SIP/2.0/UDP {me}:{s.getsockname()[1]};branch=z9hG4bK{tag}\\r\\n"
       f"From: <sip:100@{me}>;tag={tag}\\r\\nTo: <sip:100@{dst}>\\r\\nCall-ID: {tag}@{me}\\r\\nCSeq: 1 OPTIONS\\r\\n"
       "Max-Forwards: 70\\r\\nUser-Agent: " + ("sipops-e2e-probe" if probe else "friendly-scanner")
       + "\\r\\nContent-Length: 0\\r\\n\\r\\n")
s.send(msg.encode())
if probe:
    try:
        s.recv(65535); print("answered")
    except OSError:
        print("silent")
"""


class CsLab:
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

    def ban4(self, host: str) -> dict[str, dict[str, object]]:
        proc = self.exec(host, "nft", "-j", "list", "set", "inet", "sipops", "ban4")
        if proc.returncode != 0:
            return {}
        out: dict[str, dict[str, object]] = {}
        for item in json.loads(proc.stdout)["nftables"]:
            for e in item.get("set", {}).get("elem", []):
                elem = e["elem"] if isinstance(e, dict) else {"val": e}
                out[str(elem["val"])] = elem
        return out

    def scan(self, attacker: str, target: str, *, probe: bool = False) -> str:
        args = [self.address(target)] + (["probe"] if probe else [])
        res = self.exec(attacker, "python3", "-c", SCANNER, *args, timeout=20)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def cscli(self, *args: str) -> str:
        res = self.exec(LAPI, "cscli", *args)
        assert res.returncode == 0, res.stderr
        return res.stdout


def sipops(*args: str | Path) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout + res.stderr


def lapi_decisions(lab: CsLab) -> set[str]:
    """Values of the LAPI's live decisions (`cscli decisions list -a -o json`: alerts with their decisions)."""
    alerts = json.loads(lab.cscli("decisions", "list", "-a", "-o", "json") or "null") or []
    return {d["value"] for a in alerts for d in (a.get("decisions") or [])}


def wait_for(what: Callable[[], bool], seconds: float, step: float = 0.1) -> float | None:
    """Seconds until `what` held, or None when it did not within `seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if what():
            return time.monotonic() - start
        time.sleep(step)
    return None


@pytest.fixture(scope="module")
def cslab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CsLab]:
    reason = lab_skip_reason()
    if reason or not prefixes():
        pytest.skip(reason or "SIPOPS_OPENSIPS_PREFIX is not set")
    directory = tmp_path_factory.mktemp("cslab")
    # CrowdSec has nothing to do with the OpenSIPS release: the first build of the list is enough.
    opts = UpOptions(hosts=3, attackers=2, prefix="sipf", network=NETWORK, opensips_prefix=prefixes()[0])
    up(directory, opts, log=lambda _: None)
    try:
        lab = CsLab(directory)
        data = yaml.safe_load(lab.inventory.read_text())
        for name in PROXIES:
            data["hosts"][name]["roles"] = ["registrar", "proxy"]
        data["hosts"][LAPI]["roles"] = ["crowdsec"]
        data["hosts"][LAPI]["vars"] = {"crowdsec_capi": False}  # the lab has no Internet; it was a load balancer
        lab.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        code, out = sipops("install", "all", "-i", lab.inventory)
        assert code == 0, out
        lab.install_output = out  # type: ignore[attr-defined]
        yield lab
    finally:
        down(directory, log=lambda _: None)


def test_install_registers_every_host_with_root_only_credentials_made_once(cslab: CsLab) -> None:
    out: str = cslab.install_output  # type: ignore[attr-defined]
    for name in (*PROXIES, LAPI):
        assert f"{name}: crowdsec: machine and bouncer registered" in out, out
        mode = cslab.exec(name, "stat", "-c", "%a %U", "/etc/sipops/crowdsec.json").stdout.split()
        assert mode == ["600", "root"]
    secret = json.loads(cslab.exec("h1", "cat", "/etc/sipops/crowdsec.json").stdout)
    assert secret["password"] not in out and secret["api_key"] not in out
    machines = {m["machineId"]: m for m in json.loads(cslab.cscli("machines", "list", "-o", "json"))}
    assert all(machines[f"sipops-{n}"]["isValidated"] for n in (*PROXIES, LAPI)), machines
    bouncers = {b["name"] for b in json.loads(cslab.cscli("bouncers", "list", "-o", "json"))}
    assert {f"sipops-{n}" for n in (*PROXIES, LAPI)} <= bouncers
    code, again = sipops("push", "all", "-i", cslab.inventory)
    assert code == 0, again
    assert "h1: crowdsec: credentials in place" in again, again
    assert json.loads(cslab.exec("h1", "cat", "/etc/sipops/crowdsec.json").stdout) == secret


def test_a_scanner_banned_on_h1_is_dropped_by_h2_within_5_seconds(cslab: CsLab) -> None:
    a1 = cslab.address("a1")
    assert cslab.scan("a1", "h2", probe=True) == "answered"  # h2 sees nothing wrong with a1 by itself
    cslab.scan("a1", "h1")
    assert wait_for(lambda: a1 in cslab.ban4("h1"), 10) is not None, "h1 did not ban the scanner"
    took = wait_for(lambda: a1 in cslab.ban4("h2"), 5)
    assert took is not None, "h2 did not apply h1's ban within 5 s"
    elem = cslab.ban4("h2")[a1]
    assert elem.get("comment") == "fleet:h1", elem
    assert 3000 < int(str(elem.get("expires", 0))) <= 3600, elem  # scanner bans: 1h, its remaining time
    assert cslab.scan("a1", "h2", probe=True) == "silent"
    bans = json.loads(cslab.exec("h2", "/opt/sipops/bin/sipops", "bans", "--json").stdout)
    assert [b["origin"] for b in bans if b["address"] == a1] == ["fleet:h1"], bans
    assert a1 in lapi_decisions(cslab), cslab.cscli("alerts", "list", "-a", "-o", "json")[-3000:]


def test_cscli_decisions_delete_lifts_it_everywhere(cslab: CsLab) -> None:
    a1 = cslab.address("a1")
    if a1 not in cslab.ban4("h2"):
        pytest.skip("the propagation test did not leave a ban to lift")
    cslab.cscli("decisions", "delete", "-i", a1)
    assert wait_for(lambda: a1 not in cslab.ban4("h2") and a1 not in cslab.ban4("h1"), 5) is not None
    assert cslab.scan("a1", "h1", probe=True) in ("answered", "silent")  # no assertion: it would re-ban a1
    bans = json.loads(cslab.exec("h1", "/opt/sipops/bin/sipops", "bans", "--json").stdout or "[]")
    assert all(b["address"] != a1 or not b.get("live", True) for b in bans if "address" in b), bans


def test_a_decision_against_the_allowlisted_operator_is_never_applied(cslab: CsLab) -> None:
    operator = str(cslab.state.naming.bridge_address)
    cslab.cscli("decisions", "add", "-i", operator, "-d", "1h", "-R", "test operator")
    try:
        time.sleep(4)
        for host in PROXIES:
            assert operator not in cslab.ban4(host)
        log = cslab.exec("h2", "journalctl", "-t", "sipops-ban", "--no-pager", "-n", "50").stdout
        assert f"action=skip addr={operator}" in log, log
    finally:
        cslab.cscli("decisions", "delete", "-i", operator)
    with socket.create_connection((cslab.address("h2"), 22), timeout=5):
        pass  # the operator still reaches the host


def test_a_lapi_stopped_for_a_minute_loses_nothing_and_health_says_so(cslab: CsLab) -> None:
    a2 = cslab.address("a2")
    assert cslab.exec(LAPI, "systemctl", "stop", "crowdsec").returncode == 0
    stopped = time.monotonic()
    try:
        cslab.scan("a2", "h1")
        assert wait_for(lambda: a2 in cslab.ban4("h1"), 10) is not None, "local bans must go on"
        time.sleep(3)
        _, out = sipops("health", "h1", "-i", cslab.inventory, "--check", "crowdsec", "--format", "json")
        assert '"name": "crowdsec"' in out and '"status": "WARNING"' in out and "down since" in out, out[-3000:]
        time.sleep(max(0.0, 60 - (time.monotonic() - stopped)))  # the minute: backoff at its cap
    finally:
        assert cslab.exec(LAPI, "systemctl", "start", "crowdsec").returncode == 0
    # h1 retries at most every 10 s (fleetlink.RETRY_CAP), h2 polls every few seconds: well within 30 s
    # of the LAPI answering again (it takes a few seconds to start).
    assert wait_for(lambda: a2 in cslab.ban4("h2"), 30, step=0.5) is not None, "the ban made meanwhile never arrived"
    assert a2 in lapi_decisions(cslab), cslab.cscli("alerts", "list", "-a", "-o", "json")[-3000:]


def test_an_unreachable_lapi_is_one_line_naming_the_host_and_nothing_changes(cslab: CsLab) -> None:
    original = cslab.inventory.read_text()
    data = yaml.safe_load(original)
    data["hosts"]["h2"].setdefault("vars", {}).update(crowdsec_lapi_url="http://198.18.64.250:8080", log_keep=7)
    before = cslab.exec("h2", "sha256sum", "/etc/logrotate.d/opensips", "/etc/sipops/crowdsec.json").stdout
    cslab.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        code, out = sipops("push", "h2", "-i", cslab.inventory)
    finally:
        cslab.inventory.write_text(original)
    assert code == 1, out
    lines = [ln for ln in out.splitlines() if "FAILED" in ln and "LAPI" in ln]
    assert len(lines) == 1 and lines[0].startswith("h2: FAILED: crowdsec: LAPI 198.18.64.250:8080 unreachable"), out
    after = cslab.exec("h2", "sha256sum", "/etc/logrotate.d/opensips", "/etc/sipops/crowdsec.json").stdout
    assert after == before
