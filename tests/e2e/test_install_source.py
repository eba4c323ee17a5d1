"""`sipops install` with `opensips_install: source` on a bare lab host: the release tarball (the official
download's layout) is uploaded, built (the core and the modules the host's roles load; build dependencies
from Debian through the lab's package proxy), installed into /usr/local/opensips, started and checked;
health is OK, a REGISTER and an OPTIONS from an attacker get 200, calls go through, and a second install
skips the build. The lab is made the way the README tells a user with the tarball: `lab up
--opensips-source TARBALL` writes the source install into the lab inventory.

Needs $SIPOPS_OPENSIPS_SOURCE (release tarballs separated by ':'; the first one is built). The build takes
minutes: the install's progress lines (no terminal here) name the build step while it runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import yaml

from sipops.lab.access import exec_argv
from sipops.lab.lifecycle import UpOptions, down, opensips_source_release, up
from sipops.lab.state import LabState

from .conftest import lab_skip_reason

pytestmark = [pytest.mark.e2e, pytest.mark.needs_opensips]
NETWORK = IPv4Network("198.18.160.0/20")  # no other test lab's range
SIPOPS = [sys.executable, "-c", "from sipops.cli.main import run; run()"]
BINARY = "/usr/local/opensips/sbin/opensips"

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="{method}">
  <send retrans="500"><![CDATA[
{method} sip:[remote_ip] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:alice@[remote_ip]>;tag=[call_number]
To: <sip:alice@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 {method}
Contact: <sip:alice@[local_ip]:[local_port]>
Max-Forwards: 70
Expires: 300
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""


def source_tarball() -> Path | None:
    found = [p for p in os.environ.get("SIPOPS_OPENSIPS_SOURCE", "").split(":") if p.strip()]
    return Path(found[0]) if found else None


class SourceLab:
    def __init__(self, directory: Path, tarball: Path) -> None:
        self.dir = directory
        self.inventory = directory / "inventory.yaml"
        self.tarball = tarball
        self.release = opensips_source_release(tarball)

    @property
    def state(self) -> LabState:
        state = LabState.load(self.dir)
        assert state is not None
        return state

    def exec(self, name: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        state = self.state
        argv = exec_argv(state, state.member(name), list(cmd))
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def sipops(self, *args: str, timeout: float = 120) -> tuple[int, str]:
        res = subprocess.run(
            [*SIPOPS, *args, "-i", str(self.inventory)], capture_output=True, text=True, timeout=timeout, check=False
        )
        return res.returncode, res.stdout + res.stderr


@pytest.fixture(scope="module")
def slab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourceLab]:
    tarball = source_tarball()
    if tarball is None:
        pytest.skip("SIPOPS_OPENSIPS_SOURCE is not set (OpenSIPS release tarballs separated by ':')")
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("srclab")
    up(
        directory,
        UpOptions(hosts=1, attackers=1, prefix="sipy", network=NETWORK, opensips_source=tarball),
        log=lambda _: None,
    )
    try:
        yield SourceLab(directory, tarball)
    finally:
        down(directory, log=lambda _: None)


@pytest.fixture(scope="module")
def installed(slab: SourceLab) -> tuple[int, str, float]:
    started = time.monotonic()
    code, out = slab.sipops("install", "h1", timeout=1800)
    return code, out, time.monotonic() - started


def test_the_lab_inventory_says_source_install_from_the_tarball(slab: SourceLab) -> None:
    data = yaml.safe_load(slab.inventory.read_text())["defaults"]["vars"]
    assert data["opensips_install"] == "source"
    assert data["opensips_source_url"] == str(slab.tarball.absolute())
    assert data["opensips_release"] == slab.release
    assert data["opensips_version"] == slab.release.rsplit(".", 1)[0]


def test_install_builds_opensips_and_ends_with_it_running(slab: SourceLab, installed: tuple[int, str, float]) -> None:
    code, out, seconds = installed
    assert code == 0, out
    assert re.search(rf"changed +build and install {re.escape(slab.release)} with ", out), out
    assert "h1: verify: 3 ok" in out, out
    print(f"source install of {slab.release}: {seconds:.0f}s", file=sys.stderr)


def test_the_built_binary_reports_the_release(slab: SourceLab, installed: tuple[int, str, float]) -> None:
    res = slab.exec("h1", BINARY, "-V")
    assert res.returncode == 0 and f"opensips {slab.release} " in res.stdout, res.stdout + res.stderr


def test_the_service_runs(slab: SourceLab, installed: tuple[int, str, float]) -> None:
    assert slab.exec("h1", "systemctl", "is-active", "opensips").stdout.strip() == "active"


def test_progress_lines_name_the_build_step_while_it_runs(slab: SourceLab, installed: tuple[int, str, float]) -> None:
    # Not a terminal: a plain line every 30 s of a long step, with its last output line.
    lines = [line for line in installed[1].splitlines() if ": running for " in line]
    build = [line for line in lines if line.startswith(f"h1: opensips: build and install {slab.release} with ")]
    assert build, "\n".join(lines) or installed[1]
    print("\n".join(lines), file=sys.stderr)


def test_health_is_ok(slab: SourceLab, installed: tuple[int, str, float]) -> None:
    code, out = slab.sipops("health", "h1")
    assert code == 0, out


def _sipp(slab: SourceLab, tmp_path: Path, method: str) -> subprocess.CompletedProcess[str]:
    sipp = shutil.which("sipp")
    if sipp is None:
        pytest.skip("sipp (Debian package sip-tester) is not installed")
    scenario = tmp_path / f"{method.lower()}.xml"
    scenario.write_text(SCENARIO.format(method=method))
    errors = tmp_path / f"{method.lower()}-errors.log"
    h1 = slab.state.member("h1").address
    argv = [sipp, h1, "-sf", str(scenario), "-m", "1", "-timeout", "10s", "-timeout_error", "-nostdin"]
    return slab.exec("a1", *argv, "-trace_err", "-error_file", str(errors), timeout=30)


@pytest.mark.parametrize("method", ["REGISTER", "OPTIONS"])
def test_sip_from_an_attacker_is_answered_200(
    slab: SourceLab, installed: tuple[int, str, float], tmp_path: Path, method: str
) -> None:
    res = _sipp(slab, tmp_path, method)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


def test_calls_go_through(slab: SourceLab, installed: tuple[int, str, float]) -> None:
    code, out = slab.sipops("calltest", "h1", "-t", "udp", timeout=300)
    assert code == 0, out
    assert "h1: register (udp): ok" in out and "h1: call (udp): ok" in out, out


def test_a_second_install_skips_the_build_and_changes_nothing(
    slab: SourceLab, installed: tuple[int, str, float]
) -> None:
    built = slab.exec("h1", "stat", "-c", "%Y", BINARY).stdout
    code, out = slab.sipops("install", "h1", timeout=600)
    assert code == 0 and re.search(r"^h1 +unchanged ", out, re.M), out
    assert "build and install" not in out and ": running for " not in out, out
    assert slab.exec("h1", "stat", "-c", "%Y", BINARY).stdout == built  # not built nor installed again
