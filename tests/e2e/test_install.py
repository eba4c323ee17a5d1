"""`sipops install` on a lab host: every phase but OpenSIPS itself for real, then nothing to change.

The lab hosts cannot get OpenSIPS here (no package registry carries it), so the runs use
`--skip opensips`; the OpenSIPS phase's command plan is asserted from `--check`. A run with a real
OpenSIPS build is the needs_opensips test below.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
import yaml
from typer.testing import CliRunner

from sipops.cli.main import app

from .conftest import Lab

pytestmark = pytest.mark.e2e
HOST = "h3"


def sipops(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.stdout + res.stderr


@pytest.fixture(scope="module")
def installed(lab: Lab) -> Iterator[tuple[int, str]]:
    """One real install of HOST; afterwards its firewall is taken down so other tests see an open host."""
    yield sipops("install", HOST, "-i", str(lab.inventory), "--skip", "opensips")
    lab.exec(HOST, "sh", "-c", "systemctl disable --now sipops-firewall; nft delete table inet sipops; true")


def test_the_first_install_runs_every_phase_and_succeeds(installed: tuple[int, str]) -> None:
    code, out = installed
    assert code == 0, out
    for phase in ("os", "dependencies", "sipops agent", "files", "limits", "firewall", "logging"):
        assert f"{HOST}: {phase}: " in out, (phase, out)
    assert f"{HOST}: opensips: skipped" in out
    assert "Debian GNU/Linux 12" in out


def test_missing_packages_were_installed_through_the_package_manager(lab: Lab, installed: tuple[int, str]) -> None:
    # curl is not in the lab's base: the dependencies phase had to apt-get it
    assert "install packages" in installed[1]
    res = lab.exec(HOST, "dpkg-query", "-W", "-f=${Status}", "curl")
    assert res.returncode == 0 and "ok installed" in res.stdout


def test_sipops_runs_on_the_host_from_the_uploaded_wheelhouse(lab: Lab, installed: tuple[int, str]) -> None:
    res = lab.exec(HOST, "/opt/sipops/bin/sipops", "--version")
    assert res.returncode == 0 and res.stdout.startswith("sipops "), res.stderr


def test_the_firewall_is_up_and_ssh_still_works(lab: Lab, installed: tuple[int, str]) -> None:
    res = lab.exec(HOST, "nft", "list", "chain", "inet", "sipops", "input")
    assert res.returncode == 0 and "policy drop" in res.stdout
    assert "udp dport 5060 accept" in res.stdout
    assert lab.exec(HOST, "systemctl", "is-enabled", "sipops-firewall").stdout.strip() == "enabled"
    # a new SSH session after the firewall went up: the operator is never locked out
    assert lab.exec(HOST, "true").returncode == 0
    allow = lab.exec(HOST, "nft", "list", "set", "inet", "sipops", "allow4").stdout
    assert lab.state.naming.bridge_address.exploded in allow


def test_opensips_log_lines_reach_their_own_file(lab: Lab, installed: tuple[int, str]) -> None:
    res = lab.exec(HOST, "grep", "-c", "sipops install probe", "/var/log/opensips.log")
    assert res.returncode == 0 and int(res.stdout) >= 1
    assert lab.exec(HOST, "test", "-s", "/etc/logrotate.d/opensips").returncode == 0


def test_limits_are_live(lab: Lab, installed: tuple[int, str]) -> None:
    assert lab.exec(HOST, "sysctl", "-n", "net.core.somaxconn").stdout.strip() == "4096"
    drop_in = lab.exec(HOST, "cat", "/etc/systemd/system/opensips.service.d/sipops.conf").stdout
    # the lab inventory caps it at what the nspawn hosts can hold (this machine's hard limit)
    want = yaml.safe_load(lab.inventory.read_text())["defaults"]["vars"].get("open_files_limit", 65536)
    assert f"LimitNOFILE={want}" in drop_in


def test_a_second_install_changes_nothing(lab: Lab, installed: tuple[int, str]) -> None:
    code, out = sipops("install", HOST, "-i", str(lab.inventory), "--skip", "opensips")
    assert code == 0, out
    assert re.search(rf"^{HOST} +unchanged ", out, re.M), out  # its row in the summary table
    assert " changed" not in out, out


def test_check_shows_the_opensips_plan_without_changing_anything(lab: Lab, installed: tuple[int, str]) -> None:
    code, out = sipops("install", HOST, "-i", str(lab.inventory), "--check")
    assert code == 0, out
    assert "would   repository key from https://apt.opensips.org/opensips-org.gpg (signed-by keyring" in out
    assert "would   repository https://apt.opensips.org 3.6-releases for bookworm" in out
    assert "would   install OpenSIPS: opensips" in out
    assert lab.exec(HOST, "test", "-e", "/etc/apt/sources.list.d/opensips.list").returncode == 1


def test_an_unreachable_host_fails_alone(lab: Lab, installed: tuple[int, str], tmp_path) -> None:
    text = lab.inventory.read_text()
    bad = tmp_path / "inventory.yaml"
    # 198.18.0.250 / 198.19.x.250 is inside the lab range with nothing there (the guard route makes it fail fast)
    network = lab.state.naming.network
    ghost = str(network[250])
    bad.write_text(
        text.replace("hosts:\n", f"hosts:\n  ghost:\n    address: {ghost}\n    ssh: {{connect_timeout: 2}}\n", 1)
    )
    for rel in ("ssh",):
        os.symlink(lab.inventory.parent / rel, tmp_path / rel)
    code, out = sipops("install", "ghost", HOST, "-i", str(bad), "--skip", "opensips")
    assert code == 1
    # h3 goes on (its files change: the fleet it allowlists now has a ghost member)
    # the summary table: the ghost unreachable, with the reason; h3 changed
    assert re.search(r"^ghost +unreachable +[0-9.]+s +\S", out, re.M), out
    assert re.search(rf"^{HOST} +changed ", out, re.M), out
    assert "failed on 1 of 2 hosts: ghost (unreachable)" in out, out


def _inventory_with(lab: Lab, tmp_path, **values: object):
    """A copy of the lab's inventory with HOST's variables changed (its ssh folder linked beside it)."""
    data = yaml.safe_load(lab.inventory.read_text())
    data["hosts"][HOST].setdefault("vars", {}).update(values)
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    os.symlink(lab.inventory.parent / "ssh", tmp_path / "ssh")
    return path


def test_turning_the_watcher_off_retires_its_service_and_turning_it_on_brings_it_back(
    lab: Lab, installed: tuple[int, str], tmp_path
) -> None:
    """A file whose `when` turns false is removed by the push engine, its retire command run first
    (the watcher stopped and disabled), then systemd reloaded; nothing else restarts."""
    unit = "/etc/systemd/system/sipops-watch.service"
    assert lab.exec(HOST, "systemctl", "is-active", "sipops-watch").stdout.strip() == "active"
    off = _inventory_with(lab, tmp_path, watcher=False)
    code, out = sipops("install", HOST, "-i", str(off), "--skip", "opensips")
    assert code == 0, out
    assert f"removed {unit}" in out or unit in out, out
    assert lab.exec(HOST, "test", "-e", unit).returncode == 1
    assert lab.exec(HOST, "systemctl", "is-active", "sipops-watch").stdout.strip() in ("inactive", "unknown")
    assert lab.exec(HOST, "systemctl", "is-enabled", "sipops-watch").returncode != 0
    code, out = sipops("install", HOST, "-i", str(lab.inventory), "--skip", "opensips")
    assert code == 0, out
    assert lab.exec(HOST, "systemctl", "is-active", "sipops-watch").stdout.strip() == "active"


def test_turning_the_firewall_off_takes_our_table_out_and_on_again_puts_it_back(
    lab: Lab, installed: tuple[int, str], tmp_path
) -> None:
    off = _inventory_with(lab, tmp_path, firewall=False)
    code, out = sipops("install", HOST, "-i", str(off), "--skip", "opensips")
    assert code == 0, out
    # the firewall's input chain (policy drop) is gone; the restarted watcher keeps only its own guard
    table = lab.exec(HOST, "nft", "list", "table", "inet", "sipops")
    assert "policy drop" not in table.stdout, table.stdout
    assert lab.exec(HOST, "nft", "list", "chain", "inet", "sipops", "input").returncode != 0
    for gone in ("/etc/sipops/firewall.nft", "/etc/systemd/system/sipops-firewall.service"):
        assert lab.exec(HOST, "test", "-e", gone).returncode == 1, gone
    assert lab.exec(HOST, "systemctl", "is-active", "sipops-watch").stdout.strip() == "active"  # restarted
    code, out = sipops("install", HOST, "-i", str(lab.inventory), "--skip", "opensips")
    assert code == 0, out
    res = lab.exec(HOST, "nft", "list", "chain", "inet", "sipops", "input")
    assert res.returncode == 0 and "policy drop" in res.stdout
    assert lab.exec(HOST, "systemctl", "is-enabled", "sipops-firewall").stdout.strip() == "enabled"
