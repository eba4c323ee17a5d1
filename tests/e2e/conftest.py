"""The lab every e2e test runs against: brought up once per session, always torn down."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from sipops.lab.access import LabHost, exec_argv, lab_host
from sipops.lab.lifecycle import UpOptions, down, up
from sipops.lab.state import LabState

# Not the default prefix and network, so the tests never collide with a lab a developer has up
# (sipl-, 198.18.0.0/16). The teardown tests use a third pair.
E2E_PREFIX = "sipt"
E2E_NETWORK = IPv4Network("198.19.0.0/17")
SCRATCH_PREFIX = "sipu"
SCRATCH_NETWORK = IPv4Network("198.19.128.0/17")


def lab_skip_reason() -> str | None:
    """Why lab tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "e2e lab tests need root (network namespaces, overlay mounts, systemd-nspawn)"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            return f"e2e lab tests need {tool} (apt-get install {package})"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@dataclass
class Lab:
    """A running lab: where its inventory is, its hosts and attackers (name -> address)."""

    dir: Path
    inventory: Path
    hosts: dict[str, str]
    attackers: dict[str, str]

    @property
    def state(self) -> LabState:
        state = LabState.load(self.dir)
        assert state is not None, f"no state in {self.dir}"
        return state

    def host(self, name: str) -> LabHost:
        """The host as sipops.remote.transport.connect takes it (lab key, lab known_hosts)."""
        state = self.state
        return lab_host(state, state.member(name))

    def exec(self, name: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command in an attacker's namespace or on a host (over SSH)."""
        state = self.state
        argv = exec_argv(state, state.member(name), list(command))
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


E2E_LOCK = Path("/run/lock/sipops-e2e.lock")


@pytest.fixture(scope="session", autouse=True)
def _one_e2e_session_per_machine() -> Iterator[None]:
    """Two pytest runs on one machine would create the same lab names: the second one waits."""
    if lab_skip_reason():
        yield
        return
    E2E_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(E2E_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Three hosts and two attackers, up once for the session and down at its end (also on failure)."""
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("lab")
    options = UpOptions(hosts=3, attackers=2, prefix=E2E_PREFIX, network=E2E_NETWORK)
    result = up(directory, options, log=lambda line: print(line, file=sys.stderr))  # rolls back on failure
    try:
        state = result.state
        yield Lab(
            dir=directory,
            inventory=result.inventory,
            hosts={m.name: m.address for m in state.hosts()},
            attackers={m.name: m.address for m in state.attackers()},
        )
    finally:
        down(directory, log=lambda _: None)
