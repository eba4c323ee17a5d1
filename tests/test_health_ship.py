"""Shipping the checks to bare hosts (python3 - and the zipapp), the CLI, and cron install/remove."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sipops.health import bundle, cron
from sipops.health.remote import host_config, parse_reply, run_hosts
from sipops.host.health.config import HealthConfig, Socket
from sipops.inventory import load_inventory
from tests.conftest import Cli

STDLIB = set(sys.stdlib_module_names)


def test_shipped_modules_import_only_the_standard_library_and_each_other() -> None:
    for name in bundle.MODULES:
        path, _ = bundle.module_file(name)
        # Module-level imports only: optional ones inside functions are guarded (psutil, the scanner).
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                ok = top in STDLIB or top == "__future__" or target in bundle.MODULES
                ok = ok or (top == "sipops" and any(target.startswith(m + ".") for m in bundle.MODULES))
                assert ok, f"{name} imports {target}, which a bare host does not have"


def _config(tmp_path: Path) -> dict[str, Any]:
    log = tmp_path / "opensips.log"
    log.write_text("boot\n")
    cfg = HealthConfig(host="bare", log_file=str(log), state_dir=str(tmp_path / "state"), checks=("log_errors", "disk"))
    return cfg.as_dict()


def test_python3_dash_script_runs_the_checks_and_answers_json(tmp_path: Path) -> None:
    script = bundle.remote_script({"config": _config(tmp_path), "state_name": "remote"})
    # -I: isolated from this checkout, as on a host without sipops.
    proc = subprocess.run([sys.executable, "-I", "-"], input=script, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = parse_reply("bare", proc.stdout)
    assert [c.name for c in report.checks] == ["log_errors", "disk"]
    assert (tmp_path / "state" / "remote.json").is_file()


def test_zipapp_runs_with_python3_alone(tmp_path: Path) -> None:
    pyz = tmp_path / "sipops-health.pyz"
    pyz.write_bytes(bundle.zipapp_bytes())
    assert bundle.zipapp_bytes() == pyz.read_bytes()  # deterministic: uploads compare hashes
    config = tmp_path / "health.json"
    config.write_text(json.dumps(_config(tmp_path)))
    argv = [sys.executable, "-I", str(pyz), "--local", "--config", str(config), "--format", "json",
            "--textfile", str(tmp_path / "prom")]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "OK"
    assert "sipops_check_status" in (tmp_path / "prom" / "sipops.prom").read_text()


def test_remote_reply_without_a_report_is_unknown() -> None:
    report = parse_reply("h1", "Traceback ...\n")
    assert report.status.name == "UNKNOWN" and report.checks[0].name == "ssh"
    old = parse_reply("h1", json.dumps({"error": "python3 here is 3.6; sipops health needs 3.9 or later"}))
    assert "3.9" in old.checks[0].message


INVENTORY = """
hosts:
  sip1:
    address: 198.18.0.11
    vars: {health_options_timeout_ms: 900, health_shm_warning: 70, health_bans_critical: 5000, mi_http_port: 8899}
  lb1:
    address: 198.18.0.12
    roles: [loadbalancer]
    vars: {health_watcher: false}
"""


def test_inventory_thresholds_reach_the_host_config(write_inventory: Any) -> None:
    inv = load_inventory(write_inventory(INVENTORY))
    cfg = host_config(inv, inv.hosts["sip1"])
    assert cfg.thresholds.options_timeout_ms == 900 and cfg.thresholds.shm_warning == 70
    assert cfg.thresholds.bans_critical == 5000 and cfg.thresholds.shm_critical == 95
    assert cfg.mi_url == "http://127.0.0.1:8899/mi"
    assert cfg.sockets == (Socket("udp", "198.18.0.11", 5060), Socket("tcp", "198.18.0.11", 5060))
    lb = host_config(inv, inv.hosts["lb1"])
    assert lb.gateway_engine == "dispatcher" and "watcher" not in lb.enabled() and "gateways" in lb.enabled()


@dataclass
class Result:
    stdout: str = ""
    stderr: str = ""
    exited: int = 0


@dataclass
class FakeConnection:
    """Records commands and uploads (a test double of fabric.Connection)."""

    facts: str = "PYTHON3=/usr/bin/python3\n"
    commands: list[str] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)

    def run(self, command: str, **kwargs: Any) -> Result:
        self.commands.append(command)
        return Result(self.facts if command.startswith("for f in") else "")

    def put(self, local: Any, remote: str) -> None:
        self.uploads[remote] = local.read()


def test_cron_install_ships_the_agent_and_an_entry_with_the_alert_command(write_inventory: Any) -> None:
    inv = load_inventory(write_inventory(INVENTORY))
    conn = FakeConnection()
    res = cron.install(conn, inv, inv.hosts["sip1"], timer=False, alert_cmd="mail -s sipops ops@example.net")
    assert res.ok
    entry = conn.uploads[cron.CRON_PATH + ".sipops-tmp"].decode()
    assert (
        "* * * * * root /usr/bin/python3 /usr/local/lib/sipops/sipops-health.pyz --local --quiet --state-name cron"
        in entry
    )
    assert "--textfile /var/lib/prometheus/node-exporter" in entry
    config = json.loads(conn.uploads[cron.CONFIG_PATH + ".sipops-tmp"])
    assert config["alert_cmd"] == "mail -s sipops ops@example.net"
    assert conn.uploads[cron.AGENT_PATH + ".sipops-tmp"] == bundle.zipapp_bytes()
    assert not any("systemctl" in c for c in conn.commands)


def test_cron_install_uses_the_installed_sipops_and_uploads_nothing_unchanged(write_inventory: Any) -> None:
    inv = load_inventory(write_inventory(INVENTORY))
    host = inv.hosts["sip1"]
    first = FakeConnection(facts="SIPOPS_BIN=yes\nPYTHON3=/usr/bin/python3\n")
    cron.install(first, inv, host, timer=True, alert_cmd=None)
    assert cron.AGENT_PATH + ".sipops-tmp" not in first.uploads
    unit = first.uploads[cron.SERVICE_PATH + ".sipops-tmp"].decode()
    assert "ExecStart=/opt/sipops/bin/sipops health --local --quiet --state-name cron" in unit
    assert any("systemctl enable --now sipops-health.timer" in c for c in first.commands)
    sums = "".join(f"{__import__('hashlib').sha256(v).hexdigest()}  {k.removesuffix('.sipops-tmp')}\n"
                   for k, v in first.uploads.items())  # fmt: skip
    again = FakeConnection(facts=sums + "SIPOPS_BIN=yes\n")
    assert cron.install(again, inv, host, timer=True, alert_cmd=None).changed == []
    assert again.uploads == {}


def test_cron_install_with_timer_removes_the_cron_entry_and_remove_cleans_both(write_inventory: Any) -> None:
    inv = load_inventory(write_inventory(INVENTORY))
    conn = FakeConnection(facts=f"abc  {cron.CRON_PATH}\nPYTHON3=/usr/bin/python3\n")
    res = cron.install(conn, inv, inv.hosts["sip1"], timer=True, alert_cmd=None)
    assert f"removed {cron.CRON_PATH}" in res.changed
    gone = FakeConnection(facts=f"abc  {cron.TIMER_PATH}\nabc  {cron.AGENT_PATH}\n")
    res = cron.remove(gone, inv, inv.hosts["sip1"])
    assert res.changed == ["removed sipops-health.timer", f"removed {cron.AGENT_PATH}"]


def test_unreachable_host_is_unknown_with_the_reason(write_inventory: Any) -> None:
    inv = load_inventory(write_inventory(INVENTORY))

    def refuse(host: Any) -> Any:
        raise OSError(f"connect to {host.address} refused")

    reports = run_hosts(list(inv.hosts.values()), lambda h: host_config(inv, h), refuse)
    assert [r.status.name for r in reports] == ["UNKNOWN", "UNKNOWN"]
    assert "198.18.0.12 refused" in reports[1].checks[0].message


def test_cli_local_nagios_exit_code_and_bad_input(tmp_path: Path, cli: Cli) -> None:
    config = tmp_path / "health.json"
    cfg = replace(HealthConfig(), log_file=str(tmp_path / "x.log"), state_dir=str(tmp_path / "s"), checks=("disk",))
    config.write_text(json.dumps(cfg.as_dict()))
    code, out, _ = cli("health", "--local", "--config", config, "--format", "nagios")
    assert code == 0 and out.startswith("SIPOPS OK - 1 checks OK | log_disk_free=")
    code, _, err = cli("health", "--local", "--config", config, "--format", "xml")
    assert code == 2 and "unknown format 'xml'" in err
    code, _, err = cli("health", "--local", "--config", config, "--check", "nope")
    assert code == 2 and "unknown check 'nope'" in err
    code, _, err = cli("health")
    assert code == 2 and "--local or HOST" in err


def test_push_renders_what_cron_install_wrote_so_neither_undoes_the_other(write_inventory: Any) -> None:
    """cron install keeps its choices in tuned/<host>.yaml: the push engine then renders the same
    health.json and timer, and no cron.d entry beside the timer (the checks would run twice)."""
    from sipops.render import render_host

    path = write_inventory(INVENTORY)
    inv = load_inventory(path)
    conn = FakeConnection(facts=f"abc  {cron.CRON_PATH}\nPYTHON3=/usr/bin/python3\n")
    assert cron.install(conn, inv, inv.hosts["sip1"], timer=True, alert_cmd="logger sipops").ok
    uploaded = {k.removesuffix(".sipops-tmp"): v for k, v in conn.uploads.items()}

    again = load_inventory(path)
    host = again.hosts["sip1"]
    assert host.origins["health_timer"].level == "cron install"
    pushed = {f.dest: f.content for f in render_host(again, host).files}
    assert cron.CRON_PATH not in pushed
    for dest in (cron.CONFIG_PATH, cron.SERVICE_PATH, cron.TIMER_PATH):
        assert pushed[dest] == uploaded[dest], dest
    assert json.loads(pushed[cron.CONFIG_PATH])["alert_cmd"] == "logger sipops"

    gone = FakeConnection(facts=f"abc  {cron.TIMER_PATH}\n")
    assert cron.remove(gone, again, host).ok
    after = load_inventory(path)
    dests = {f.dest for f in render_host(after, after.hosts["sip1"]).files}
    assert not dests & {cron.CRON_PATH, cron.SERVICE_PATH, cron.TIMER_PATH}
    assert after.hosts["lb1"].vars["health_cron"] is True  # the other host is untouched
