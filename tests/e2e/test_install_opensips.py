"""`sipops install` with a real OpenSIPS (method `existing`, copied into the hosts by `lab up
--opensips-prefix`): running, registering users, logging to its file, and back after a reboot.

Needs $SIPOPS_OPENSIPS_PREFIX (an OpenSIPS 3.6/3.4 build); its own small lab, so the session lab's
hosts stay free of OpenSIPS on 5060.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sipops.cli.main import app
from sipops.lab.access import exec_argv
from sipops.lab.lifecycle import UpOptions, down, restart, up
from sipops.lab.state import LabState

from .conftest import lab_skip_reason

pytestmark = [pytest.mark.e2e, pytest.mark.needs_opensips]
NETWORK = IPv4Network("198.18.224.0/20")  # neither the session lab's nor the scratch lab's range

REGISTER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register">
  <send retrans="500"><![CDATA[
REGISTER sip:[remote_ip] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:alice@[remote_ip]>;tag=[call_number]
To: <sip:alice@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:alice@[local_ip]:[local_port]>
Max-Forwards: 70
Expires: 300
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""


class OpensipsLab:
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


@pytest.fixture(scope="module")
def olab(tmp_path_factory: pytest.TempPathFactory, opensips_prefix: Path) -> Iterator[OpensipsLab]:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("oslab")
    opts = UpOptions(hosts=1, attackers=1, prefix="sipn", network=NETWORK, opensips_prefix=opensips_prefix)
    up(directory, opts, log=lambda _: None)
    # Registrations written back to sqlite: the database phase creates the tables from the install's schema.
    inventory = directory / "inventory.yaml"
    data = yaml.safe_load(inventory.read_text())
    data["hosts"]["h1"]["vars"] = {"registrar_persist": True}
    inventory.write_text(yaml.safe_dump(data))
    try:
        yield OpensipsLab(directory)
    finally:
        down(directory, log=lambda _: None)


@pytest.fixture(scope="module")
def installed(olab: OpensipsLab) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["install", "h1", "-i", str(olab.inventory)])
    return res.exit_code, res.stdout + res.stderr


def test_install_ends_with_opensips_running_and_answering(installed: tuple[int, str]) -> None:
    code, out = installed
    assert code == 0, out
    assert "h1: verify: 3 ok" in out, out
    assert "h1: service: " in out and "FAILED" not in out


def test_the_database_phase_created_the_registrar_tables(olab: OpensipsLab, installed: tuple[int, str]) -> None:
    assert "changed sqlite database /var/lib/opensips/opensips.sqlite: tables version, location" in installed[1]
    query = (
        "import sqlite3; c = sqlite3.connect('/var/lib/opensips/opensips.sqlite');"
        " print(c.execute(\"select table_version from version where table_name='location'\").fetchone()[0])"
    )
    res = olab.exec("h1", "python3", "-c", query)
    assert res.returncode == 0 and res.stdout.strip() == "1013", res.stderr


def test_a_register_from_sipp_is_answered_200(olab: OpensipsLab, installed: tuple[int, str], tmp_path: Path) -> None:
    sipp = shutil.which("sipp")
    if sipp is None:
        pytest.skip("sipp (Debian package sip-tester) is not installed")
    scenario = tmp_path / "register.xml"
    scenario.write_text(REGISTER)
    h1 = olab.state.member("h1").address
    res = olab.exec(
        "a1",
        sipp,
        h1,
        "-sf",
        str(scenario),
        "-m",
        "1",
        "-timeout",
        "10s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-error_file",
        str(tmp_path / "sipp-errors.log"),  # not into the working directory
        timeout=30,
    )
    errors = (tmp_path / "sipp-errors.log").read_text() if (tmp_path / "sipp-errors.log").exists() else ""
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:] + errors


def test_opensips_logs_to_its_own_file(olab: OpensipsLab, installed: tuple[int, str]) -> None:
    res = olab.exec("h1", "grep", "-c", "-F", "sipops: OpenSIPS started on h1", "/var/log/opensips.log")
    tail = olab.exec("h1", "tail", "-n", "5", "/var/log/opensips.log").stdout
    assert res.returncode == 0 and int(res.stdout) > 0, tail


def test_a_reboot_brings_opensips_back(olab: OpensipsLab, installed: tuple[int, str]) -> None:
    restart(olab.dir, "h1")
    for _ in range(50):
        if olab.exec("h1", "systemctl", "is-active", "opensips").stdout.strip() == "active":
            break
        subprocess.run(["sleep", "0.2"], check=False)
    assert olab.exec("h1", "systemctl", "is-active", "opensips").stdout.strip() == "active"
    assert olab.exec("h1", "nft", "list", "table", "inet", "sipops").returncode == 0  # firewall back at boot too


def test_a_second_install_changes_nothing(olab: OpensipsLab, installed: tuple[int, str]) -> None:
    res = CliRunner().invoke(app, ["install", "h1", "-i", str(olab.inventory)])
    assert res.exit_code == 0 and re.search(r"^h1 +unchanged ", res.stdout, re.M), res.stdout
