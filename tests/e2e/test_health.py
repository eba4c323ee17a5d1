"""`sipops health` and `sipops cron` on a lab host: OPTIONS answered by sipp, alerts once per change,
log errors once, a logrotate rotation losing and repeating nothing, the cron job's textfile.

The lab hosts have python3 and no sipops: `cron install` ships the zipapp agent, `sipops health HOST`
ships the checks to `python3 -`. sipp is not packaged in the lab's base: the controller's
/usr/bin/sipp is copied with its shared libraries and dynamic loader (self-contained, run through
that loader).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipops.lab.access import exec_argv
from sipops.render import render_host

from .conftest import Lab

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parent.parent / "data" / "health"
SIPP_DIR = "/opt/sipops-test-sipp"
AGENT = "/usr/local/lib/sipops/sipops-health.pyz"
LOG = "/var/log/opensips.log"
E2E_ALERTS = "/var/tmp/sipops-e2e-alerts"
CRON_ALERTS = "/var/tmp/sipops-cron-alerts"
NAGIOS_LINE = re.compile(r"^SIPOPS (OK|WARNING|CRITICAL|UNKNOWN) - [^|]+( \| \S+=\S+( \S+=\S+)*)?$")


def _run(
    lab: Lab, name: str, *cmd: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    argv = exec_argv(lab.state, lab.state.member(name), list(cmd))
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)


def _sh(lab: Lab, name: str, script: str) -> str:
    proc = _run(lab, name, "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def _sipp_tarball() -> bytes:
    """sipp, every shared library ldd lists and the dynamic loader, plus a wrapper and the scenario."""
    sipp = shutil.which("sipp")
    if sipp is None:
        pytest.skip("sipp is not installed on the controller (apt-get install sip-tester)")
    ldd = subprocess.run(["ldd", sipp], capture_output=True, text=True, check=True).stdout
    libs = re.findall(r"=> (/\S+)", ldd)
    loader = re.search(r"^\s*(/\S*ld-linux\S*)", ldd, re.M)
    assert loader, ldd
    wrapper = f'#!/bin/sh\nexec {SIPP_DIR}/ld.so --library-path {SIPP_DIR}/lib {SIPP_DIR}/sipp "$@"\n'
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(sipp, "sipp")
        tar.add(str(Path(loader.group(1)).resolve()), "ld.so")
        for lib in libs:
            tar.add(str(Path(lib).resolve()), f"lib/{Path(lib).name}")
        tar.add(str(DATA / "options_uas.xml"), "options_uas.xml")
        info = tarfile.TarInfo("run")
        info.size, info.mode = len(wrapper), 0o755
        tar.addfile(info, io.BytesIO(wrapper.encode()))
    return buffer.getvalue()


def _start_uas(lab: Lab, host: str, address: str) -> None:
    """sipp UAS answering OPTIONS on udp and tcp ADDRESS:5060, as transient units (at most 15 minutes)."""
    for proto, flag in (("udp", "u1"), ("tcp", "t1")):
        _sh(lab, host, f"systemctl reset-failed sipops-test-uas-{proto} 2>/dev/null; "
                       f"systemd-run --unit=sipops-test-uas-{proto} --property=RuntimeMaxSec=900 "
                       f"--working-directory=/tmp {SIPP_DIR}/run -sf {SIPP_DIR}/options_uas.xml -t {flag} "
                       f"-i {address} -p 5060 -m 100000 -nostdin -nd")  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listening = _sh(lab, host, "cat /proc/net/udp /proc/net/tcp")
        if listening.count(":13C4 ") >= 2:
            return
        time.sleep(0.2)
    journal = _sh(lab, host, "journalctl -u sipops-test-uas-udp -u sipops-test-uas-tcp --no-pager | tail -20")
    pytest.fail(f"sipp did not start on {host}:\n{journal}")


def _stop_uas(lab: Lab, host: str) -> None:
    _sh(lab, host, "systemctl stop sipops-test-uas-udp sipops-test-uas-tcp 2>/dev/null; true")


@pytest.fixture(scope="module")
def host(lab: Lab) -> Iterator[tuple[Lab, str, str, Path]]:
    """The first lab host with sipp answering OPTIONS, an inventory limited to the checks it can pass."""
    name, address = next(iter(lab.hosts.items()))
    data: dict[str, Any] = yaml.safe_load(lab.inventory.read_text())
    data.setdefault("defaults", {}).setdefault("vars", {})["health_checks"] = ["sip_options", "log_errors", "disk"]
    # Beside the lab's own inventory: its key and known_hosts paths are relative to that folder.
    inventory = lab.inventory.with_name("inventory-health.yaml")
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = _run(lab, name, "sh", "-c", f"mkdir -p {SIPP_DIR} && tar -xf - -C {SIPP_DIR}", stdin=_sipp_tarball())
    assert proc.returncode == 0, proc.stderr.decode()
    _sh(lab, name, f"rm -f {E2E_ALERTS} {CRON_ALERTS}; touch {LOG}")
    _start_uas(lab, name, address)
    overlay = inventory.parent / "tuned" / f"{name}.yaml"  # where `cron install` keeps its choices
    assert not overlay.exists()
    try:
        yield lab, name, address, inventory
    finally:
        _stop_uas(lab, name)
        _sh(lab, name, f"rm -rf {SIPP_DIR}")
        overlay.unlink(missing_ok=True)  # the lab's inventory is shared with the other e2e tests


def _sipops(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # this interpreter's sipops (the checkout under test), not whatever `sipops` PATH finds
    argv = [sys.executable, "-c", "from sipops.cli.main import run; run()", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


def _check(lab: Lab, name: str) -> dict[str, Any]:
    """One run of the agent on the host, as cron runs it but with its own state and alert file."""
    alert = f"cat >> {E2E_ALERTS}; echo ==== >> {E2E_ALERTS}"
    proc = _run(lab, name, "python3", AGENT, "--local", "--format", "json", "--state-name", "e2e",
                "--alert-cmd", alert)  # fmt: skip
    assert proc.returncode in (0, 1, 2, 3), proc.stderr.decode()
    report: dict[str, Any] = json.loads(proc.stdout)["hosts"][0]
    report["by_name"] = {c["name"]: c for c in report["checks"]}
    return report


def _alerts(lab: Lab, name: str) -> int:
    return _sh(lab, name, f"cat {E2E_ALERTS} 2>/dev/null || true").count("====\n")


def _errors(report: dict[str, Any]) -> int:
    metrics = {m["name"]: m["value"] for m in report["by_name"]["log_errors"]["metrics"]}
    return int(metrics["log_error_lines"])


def _append(lab: Lab, name: str, path: str, level: str, first: int, count: int) -> None:
    lines = "".join(
        f"Nov 28 10:00:00 h opensips[7]: {level}:core:e2e: line {i}\\n" for i in range(first, first + count)
    )
    _sh(lab, name, f"printf '{lines}' >> {path}")


def test_cron_install_ships_the_agent_and_the_entry(host: tuple[Lab, str, str, Path]) -> None:
    lab, name, _, inventory = host
    proc = _sipops("cron", "install", name, "-i", inventory, "--alert-cmd", f"cat >> {CRON_ALERTS}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "/etc/cron.d/sipops-health" in proc.stdout and AGENT in proc.stdout
    entry = _sh(lab, name, "cat /etc/cron.d/sipops-health")
    assert f"root /usr/bin/python3 {AGENT} --local --quiet --state-name cron" in entry
    config = json.loads(_sh(lab, name, "cat /etc/sipops/health.json"))
    assert config["alert_cmd"] == f"cat >> {CRON_ALERTS}" and config["checks"] == ["sip_options", "log_errors", "disk"]
    again = _sipops("cron", "install", name, "-i", inventory, "--alert-cmd", f"cat >> {CRON_ALERTS}")
    assert again.returncode == 0 and again.stdout.splitlines()[0] == f"{name}: no change", again.stdout


def test_push_agrees_with_cron_install_and_never_brings_the_other_form_back(
    host: tuple[Lab, str, str, Path],
) -> None:
    """After `cron install --timer`, the push engine's plan leaves health.json and the timer as they
    are and does not create /etc/cron.d/sipops-health again (the checks would run twice)."""
    lab, name, _, inventory = host
    health = ("/etc/sipops/health.json", "/etc/systemd/system/sipops-health.timer", "/etc/cron.d/sipops-health")
    try:
        proc = _sipops("cron", "install", name, "-i", inventory, "--timer", "--alert-cmd", f"cat >> {CRON_ALERTS}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert _sh(lab, name, "test -e /etc/cron.d/sipops-health && echo yes || echo no").strip() == "no"
        diff = _sipops("diff", name, "-i", inventory)
        assert diff.returncode in (0, 1), diff.stdout + diff.stderr
        changes = [line.split()[1] for line in diff.stdout.splitlines() if line.startswith(("  create ", "  change "))]
        assert changes and not set(changes) & set(health), diff.stdout
    finally:
        back = _sipops("cron", "install", name, "-i", inventory, "--alert-cmd", f"cat >> {CRON_ALERTS}")
        assert back.returncode == 0, back.stdout + back.stderr


def test_sipp_answering_is_ok_and_remote_nagios_line_is_ok(host: tuple[Lab, str, str, Path]) -> None:
    lab, name, address, inventory = host
    report = _check(lab, name)
    assert report["status"] == "OK", report
    sockets = {
        m["labels"]["socket"] for m in report["by_name"]["sip_options"]["metrics"] if m["name"] == "sip_options_rtt"
    }
    assert sockets == {f"udp:{address}:5060", f"tcp:{address}:5060"}
    remote = _sipops("health", name, "-i", inventory, "--format", "nagios")
    first = remote.stdout.splitlines()[0]
    assert remote.returncode == 0 and NAGIOS_LINE.match(first), remote.stdout + remote.stderr


def test_stopping_sipp_is_critical_next_run_and_alerts_exactly_once(host: tuple[Lab, str, str, Path]) -> None:
    lab, name, address, _ = host
    assert _check(lab, name)["status"] == "OK"
    before = _alerts(lab, name)
    _stop_uas(lab, name)
    try:
        first = _check(lab, name)
        assert first["status"] == "CRITICAL" and first["by_name"]["sip_options"]["status"] == "CRITICAL"
        assert _alerts(lab, name) == before + 1
        second = _check(lab, name)
        assert second["status"] == "CRITICAL"
        assert _alerts(lab, name) == before + 1  # still critical: no new alert
        text = _sh(lab, name, f"cat {E2E_ALERTS}")
        assert "sip_options  CRITICAL" in text
    finally:
        _start_uas(lab, name, address)
    assert _check(lab, name)["status"] == "OK"  # recovery is a change too
    assert _alerts(lab, name) == before + 2


def test_error_lines_warn_once_not_on_every_later_run(host: tuple[Lab, str, str, Path]) -> None:
    lab, name, _, _ = host
    _check(lab, name)
    _append(lab, name, LOG, "ERROR", 1, 3)
    warned = _check(lab, name)
    assert warned["by_name"]["log_errors"]["status"] == "WARNING" and _errors(warned) == 3
    later = _check(lab, name)
    assert later["by_name"]["log_errors"]["status"] == "OK" and _errors(later) == 0


def test_logrotate_rotation_loses_no_line_and_repeats_none(host: tuple[Lab, str, str, Path]) -> None:
    lab, name, _, inventory = host
    from sipops.inventory import load_inventory

    inv = load_inventory(inventory)
    rotate = next(f for f in render_host(inv, inv.hosts[name]).files if f.dest == "/etc/logrotate.d/opensips")
    proc = _run(lab, name, "sh", "-c", "cat > /etc/logrotate.d/opensips", stdin=rotate.content)
    assert proc.returncode == 0
    _check(lab, name)
    _append(lab, name, LOG, "ERROR", 100, 4)
    _append(lab, name, LOG, "INFO", 104, 2)
    # The rendered config (dateext, delaycompress, create): a real logrotate run, forced.
    _sh(lab, name, "logrotate --force --state /var/tmp/sipops-e2e-logrotate.state /etc/logrotate.d/opensips")
    rotated = _sh(lab, name, f"ls {LOG}-* | grep -v '\\.gz$' | tail -1").strip()
    assert re.search(r"opensips\.log-\d{8}-\d+$", rotated), rotated
    _append(lab, name, rotated, "ERROR", 200, 2)  # the logger writes on until it reopens
    _append(lab, name, LOG, "ERROR", 300, 3)
    report = _check(lab, name)
    assert _errors(report) == 4 + 2 + 3, report["by_name"]["log_errors"]
    assert _errors(_check(lab, name)) == 0


def test_the_cron_job_writes_a_prometheus_textfile_that_parses(host: tuple[Lab, str, str, Path]) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    lab, name, _, inventory = host
    deadline = time.monotonic() + 75  # cron runs on the minute
    text = ""
    while time.monotonic() < deadline:
        text = _sh(lab, name, "cat /var/lib/prometheus/node-exporter/sipops.prom 2>/dev/null || true")
        if text:
            break
        time.sleep(2)
    assert text, "cron did not write the textfile within 75 s"
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    checks = {s.labels["check"] for s in families["sipops_check_status"].samples}
    assert checks == {"sip_options", "log_errors", "disk"}
    removed = _sipops("cron", "remove", name, "-i", inventory)
    assert removed.returncode == 0 and "removed /etc/cron.d/sipops-health" in removed.stdout
    assert _sh(lab, name, "ls /etc/cron.d/sipops-health 2>/dev/null || echo gone").strip() == "gone"
