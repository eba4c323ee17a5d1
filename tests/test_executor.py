"""The fleet executor (sipops.remote.executor): --forks, --serial, per-host results, one summary table,
and unreachable hosts failing alone with the reason (a real SSH connection to a closed loopback port)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipops.inventory import load_inventory
from sipops.remote.executor import (
    NOT_STARTED,
    HostRun,
    Unreachable,
    failed_line,
    reach,
    run_hosts,
    summary_table,
)
from sipops.remote.runner import LocalRunner, SSHRunner
from tests.conftest import Cli

NAMES = ["a", "b", "c", "d", "e"]


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def refused_inventory(write_inventory: Callable[[str], Path], tmp_path: Path) -> Path:
    """Two hosts whose SSH port refuses connections (loopback, nothing listening there)."""
    key = tmp_path / "id_test"
    key.write_text("not a key: the connection is refused before it is read\n")
    port = _closed_port()
    return write_inventory(
        f"""
        defaults:
          ssh: {{user: root, key: {key}, port: {port}, connect_timeout: 2}}
        hosts:
          h1: {{address: 127.0.0.1, roles: [proxy]}}
          h2: {{address: 127.0.0.2, roles: [proxy]}}
        """
    )


def test_serial_runs_batches_and_stops_after_the_batch_with_a_failure() -> None:
    started: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> str:
        with lock:
            started.append(name)
        if name == "c":
            raise RuntimeError("validator refused app.conf")
        return name

    runs = run_hosts(NAMES, work, forks=10, serial=2)
    assert [(r.host, r.status) for r in runs] == [
        ("a", "ok"), ("b", "ok"), ("c", "failed"), ("d", "ok"), ("e", "skipped"),
    ]  # fmt: skip
    assert sorted(started) == ["a", "b", "c", "d"]  # the batch with the failure finishes; the next never starts
    assert runs[2].reason == "RuntimeError: validator refused app.conf" and runs[4].reason == NOT_STARTED


def test_without_serial_every_host_runs_whatever_fails() -> None:
    runs = run_hosts(NAMES, lambda n: n, verdict=lambda n: ("failed", "no") if n == "a" else ("changed", ""))
    assert [r.status for r in runs] == ["failed", "changed", "changed", "changed", "changed"]
    assert [r.result for r in runs] == NAMES


def test_forks_bounds_the_hosts_worked_on_at_once() -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def work(name: str) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)  # long enough for the others to start if the pool let them
        with lock:
            running -= 1

    run_hosts([f"h{i}" for i in range(8)], work, forks=3)
    assert most == 3


def test_an_unreachable_host_fails_alone_with_the_reason(refused_inventory: Path) -> None:
    inv = load_inventory(refused_inventory)
    lines: list[str] = []

    def work(name: str) -> str:
        local = name == "h2"  # this machine: nothing to reach
        runner = reach(lambda: LocalRunner(name) if local else SSHRunner(inv.hosts[name]))()
        try:
            return runner.exec("echo hi", b"", 10).stdout.decode().strip()
        finally:
            runner.close()

    runs = run_hosts(["h1", "h2"], work, emit=lines.append)
    assert [(r.host, r.status, r.result) for r in runs] == [("h1", "unreachable", None), ("h2", "ok", "hi")]
    assert "Connection refused" in runs[0].reason or "Unable to connect" in runs[0].reason, runs[0].reason
    assert lines == [f"h1: UNREACHABLE: {runs[0].reason}"]
    assert failed_line(runs) == "failed on 1 of 2 hosts: h1 (unreachable)"


def test_reach_raises_unreachable_when_the_runner_cannot_be_made() -> None:
    def broken() -> LocalRunner:
        raise ValueError("ssh.jump of h1: expected [user@]host[:port], got '@@'")

    with pytest.raises(Unreachable, match=r"ValueError: ssh\.jump of h1"):
        reach(broken)


def test_the_summary_table_aligns_the_columns_a_command_adds_between_status_and_time() -> None:
    runs = [
        HostRun("sip1", "changed", "", 1.25, ["a", "b"]),
        HostRun("registrar-2", "unreachable", "NoValidConnectionsError: [Errno 111] refused", 2.0),
    ]
    lines = summary_table(runs, [("FILES", lambda r: str(len(r.result)))])
    assert lines == [
        "HOST         STATUS       FILES  TIME  REASON",
        "sip1         changed      2      1.2s",
        "registrar-2  unreachable  -      2.0s  NoValidConnectionsError: [Errno 111] refused",
    ]


def test_service_on_unreachable_hosts_is_a_row_each_and_exit_1(cli: Cli, refused_inventory: Path) -> None:
    code, out, _ = cli("service", "status", "all", "-i", refused_inventory, "--forks", "1")
    assert code == 1, out
    assert re.search(r"^h1 +unreachable +[0-9.]+s +\S", out, re.M) and re.search(r"^h2 +unreachable ", out, re.M)
    assert out.rstrip().endswith("failed on 2 of 2 hosts: h1 (unreachable), h2 (unreachable)"), out


def test_push_serial_skips_the_hosts_after_a_failed_batch(cli: Cli, refused_inventory: Path) -> None:
    code, out, _ = cli("push", "all", "-i", refused_inventory, "--serial", "1")
    assert code == 1, out
    assert re.search(r"^h1 +unreachable ", out, re.M), out
    assert re.search(rf"^h2 +skipped +- +- +0.0s +{NOT_STARTED}$", out, re.M), out


def test_every_command_module_imports_alone_without_the_app() -> None:
    """No cycles: sipops/cli modules import sipops.cli.options, never sipops.cli.main."""
    modules = [p.stem for p in Path("sipops/cli").glob("*.py") if p.stem not in ("__init__", "__main__", "main")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module('sipops.cli.' + m)\n"
        "assert 'sipops.cli.main' not in sys.modules, 'a command module imports the app'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("option", ["--inventory", "--forks", "--serial", "--accept-new-host-key", "--lock-timeout"])
def test_shared_options_are_declared_once(option: str) -> None:
    declared = [p.name for p in Path("sipops/cli").glob("*.py") if f'"{option}"' in p.read_text()]
    assert declared == ["options.py"]
