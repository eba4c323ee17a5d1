"""CrowdSec on the controller's side (which LAPI a host joins, bad URLs) and on hosts' health and bans output."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sipops.cli.main import app
from sipops.host.health.checks_crowdsec import check_crowdsec
from sipops.host.health.model import Status
from sipops.host.monitor.fleetops import fleet_rows, push_manual
from tests.health_helpers import CFG, FakeSources

INV = """
defaults:
  ssh: {{user: root}}
hosts:
  lapi: {{address: 198.18.64.2, roles: [crowdsec]}}
  h1: {{address: 198.18.64.3, roles: [proxy]{h1_vars}}}
"""


def render(tmp_path: Path, h1_vars: str = "") -> tuple[int, str]:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INV.format(h1_vars=h1_vars))
    res = CliRunner().invoke(app, ["render", "all", "-i", str(inv), "-o", str(tmp_path / "out")])
    return res.exit_code, res.stdout + res.stderr


def test_the_lapi_host_listens_for_the_fleet_and_the_firewall_opens_its_port_to_the_fleet_only(tmp_path: Path) -> None:
    code, out = render(tmp_path)
    assert code == 0, out
    conf = (tmp_path / "out/lapi/etc/crowdsec/config.yaml.local").read_text()
    assert "listen_uri: 0.0.0.0:8080" in conf
    nft = (tmp_path / "out/lapi/etc/sipops/firewall.nft").read_text()
    assert "ip saddr { 198.18.64.2, 198.18.64.3 } tcp dport 8080 accept" in nft
    assert "tcp dport 8080 counter drop" in nft
    health = json.loads((tmp_path / "out/h1/etc/sipops/health.json").read_text())
    assert health["crowdsec"] == "http://198.18.64.2:8080"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://lapi:8080", "http:// or https://"),
        ("http://lapi:99999", "Port out of range"),
        ("http://lapi:8080/v1", "server only"),
    ],
)
def test_a_lapi_url_that_does_not_parse_is_one_line_at_its_field_exit_2(tmp_path: Path, url: str, why: str) -> None:
    code, out = render(tmp_path, f", vars: {{crowdsec_lapi_url: {json.dumps(url)}}}")
    assert code == 2
    (line,) = out.strip().splitlines()
    assert re.match(r"sipops: error: .*inventory\.yaml:\d+: hosts\.h1\.vars\.crowdsec_lapi_url: ", line), line
    assert why in line
    assert not (tmp_path / "out").exists()


def test_health_says_since_when_the_lapi_is_down_and_ok_when_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIPOPS_STATE_DIR", str(tmp_path))
    cfg = replace(CFG, crowdsec="http://198.18.64.2:8080")
    assert check_crowdsec(cfg, FakeSources(), {}).status == Status.WARNING  # no state yet
    state = {"link": {"up": False, "since": 1_700_000_000, "error": "LAPI 198.18.64.2:8080 unreachable: refused",
                      "url": "http://198.18.64.2:8080", "outbox": 2}, "decisions": {}}  # fmt: skip
    (tmp_path / "crowdsec.json").write_text(json.dumps(state))
    res = check_crowdsec(cfg, FakeSources(), {})
    assert res.status == Status.WARNING
    assert "down since 2023-11-14T22:13:20Z" in res.message and "refused; 2 bans waiting" in res.message
    state["link"].update(up=True)
    state["decisions"] = {"192.0.2.1": {"origin": "fleet:h2", "scenario": "sipops/sip_scanner from h2", "until": 9e9}}
    (tmp_path / "crowdsec.json").write_text(json.dumps(state))
    res = check_crowdsec(cfg, FakeSources(), {})
    assert res.status == Status.OK and "1 decisions applied" in res.message
    assert fleet_rows(time.time(), tmp_path)[0]["origin"] == "fleet:h2"


def test_ban_fleet_without_credentials_says_so_in_one_line(tmp_path: Path) -> None:
    line = push_manual(["192.0.2.1"], 60, "manual", tmp_path / "none.json")
    assert line.startswith("sipops: error: --fleet: this host has no CrowdSec LAPI") and "\n" not in line


def test_credentials_readable_by_others_are_refused(tmp_path: Path) -> None:
    creds = tmp_path / "crowdsec.json"
    creds.write_text("{}")
    creds.chmod(0o644)
    line = push_manual(["192.0.2.1"], 60, "manual", creds)
    assert "readable by others (mode 644)" in line
