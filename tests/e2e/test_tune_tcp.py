"""`sipops tune-tcp` on a lab host, proven by holding connections.

A stand-in for OpenSIPS (a python3 TCP accept loop, unit opensips-standin.service) takes its limits
from the very drop-in tune-tcp pushes for opensips.service. From both attacker namespaces M > 1024
connections are opened at once: before tune-tcp they stop at the distribution's 1024 descriptors,
after `sipops tune-tcp HOST --max-connections M` all M are held.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from sipops.cli import app

from .conftest import Lab
from .tcp_hold import STANDIN_UNIT, hold, standin_remove_script, standin_script

pytestmark = pytest.mark.e2e
HOST, PORT, M = "h2", 5071, 2000


def sipops(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.stdout + res.stderr


def sh(lab: Lab, script: str, timeout: float = 60) -> str:
    res = lab.exec(HOST, "sh", "-c", script, timeout=timeout)
    assert res.returncode == 0, (script, res.stdout, res.stderr)
    return res.stdout


@dataclass
class Run:
    before: dict[str, int]
    limit_before: str
    code: int
    out: str
    limit_after: str
    after: dict[str, int]
    again: tuple[int, str]


@pytest.fixture(scope="module")
def tuned(lab: Lab) -> Iterator[Run]:
    # Start from the distribution's limits: no opensips drop-in on this host yet.
    sh(lab, "rm -f /etc/systemd/system/opensips.service.d/sipops.conf")
    sh(lab, standin_script(PORT))
    attackers = sorted(lab.attackers)
    address = lab.hosts[HOST]
    inv = str(lab.inventory)
    try:
        limit_before = sh(lab, f"systemctl show -p LimitNOFILESoft --value {STANDIN_UNIT}").strip()
        before = hold(lab.exec, attackers, address, PORT, M, wait=20)
        code, out = sipops("tune-tcp", HOST, "--max-connections", str(M), "-i", inv)
        # push restarts opensips when its limits change; OpenSIPS is not on this host, so the stand-in is
        # restarted the same way here
        sh(lab, f"systemctl restart {STANDIN_UNIT}")
        limit_after = sh(lab, f"systemctl show -p LimitNOFILESoft --value {STANDIN_UNIT}").strip()
        after = hold(lab.exec, attackers, address, PORT, M, wait=30)
        again = sipops("tune-tcp", HOST, "--max-connections", str(M), "-i", inv)
        yield Run(before, limit_before, code, out, limit_after, after, again)
    finally:
        lab.exec(HOST, "sh", "-c", standin_remove_script())
        sipops("rollback", HOST, "-i", inv)  # the tuned files go back to what the host had


def test_before_tune_tcp_the_connections_stop_at_the_default_limit(tuned: Run) -> None:
    assert tuned.limit_before == "1024"
    assert 900 < tuned.before["held"] < 1024, tuned.before


def test_tune_tcp_succeeds_and_prints_current_to_target(tuned: Run) -> None:
    assert tuned.code == 0, tuned.out
    assert f"{HOST}: {M} connections;" in tuned.out
    assert "LimitNOFILE" in tuned.out and "tcp_max_connections" in tuned.out
    assert "read back:" in tuned.out and "did not take" not in tuned.out, tuned.out


def test_after_tune_tcp_all_m_connections_are_held(tuned: Run) -> None:
    assert int(tuned.limit_after) >= M + 64
    assert tuned.after["held"] == M, tuned.after


def test_what_the_container_cannot_set_is_reported_not_failed(tuned: Run) -> None:
    # netdev_max_backlog does not exist in the host's own network namespace
    assert "must be set on the container host" in tuned.out
    assert "net.core.netdev_max_backlog" in tuned.out


def test_a_second_run_pushes_nothing(tuned: Run) -> None:
    code, out = tuned.again
    assert code == 0, out
    assert "files already tuned; nothing pushed" in out, out
