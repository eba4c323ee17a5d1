"""Shipping the checks to bare hosts (the one boot path and the zipapp), the CLI, and cron install/remove."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from sipops.health import bundle, cron
from sipops.health.remote import ENTRY, host_config, parse_reply
from sipops.health.run import check_hosts
from sipops.host.health.config import HealthConfig, Socket
from sipops.inventory import load_inventory
from sipops.remote import ship
from sipops.remote.apply import PushOptions, list_backups
from sipops.remote.facts import gather
from sipops.remote.plan import CREATE, REMOVE, UNCHANGED, plan_host
from sipops.remote.runner import LocalRunner, call
from sipops.render import render_host
from tests.conftest import Cli

STDLIB = set(sys.stdlib_module_names)
ZIPAPP = "/usr/local/lib/sipops/sipops-health.pyz"  # health_zipapp's default (roles/common.yaml)


def _config(tmp_path: Path) -> dict[str, Any]:
    log = tmp_path / "opensips.log"
    log.write_text("boot\n")
    cfg = HealthConfig(host="bare", log_file=str(log), state_dir=str(tmp_path / "state"), checks=("log_errors", "disk"))
    return cfg.as_dict()


def test_the_checks_run_through_the_boot_path_and_answer_a_report(tmp_path: Path) -> None:
    payload = {"config": _config(tmp_path), "state_name": "remote"}
    report = parse_reply("bare", call(LocalRunner(), payload, timeout=60, entry=ENTRY))
    assert [c.name for c in report.checks] == ["log_errors", "disk"]
    assert (tmp_path / "state" / "remote.json").is_file()


def test_the_zipapp_is_the_same_bundle_as_files() -> None:
    import io
    import zipfile

    pyz = bundle.zipapp_bytes()
    names = zipfile.ZipFile(io.BytesIO(pyz[pyz.index(b"PK") :])).namelist()
    shipped = ship.bundle(ENTRY).modules
    assert sorted(n for n in names if n != "__main__.py") == sorted(
        "/".join(m.split(".")) + ("/__init__.py" if ship.module_file(m)[1] else ".py") for m in shipped
    )


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
    report = parse_reply("h1", {"ok": False})
    assert report.status.name == "UNKNOWN" and report.checks[0].name == "ssh"
    bad = parse_reply("h1", {"report": {}, "error": "health.json: bad field"})
    assert "bad field" in bad.checks[0].message


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


def _local(tmp_path: Path) -> tuple[Path, Any, PushOptions]:
    """The push agent on this machine, every host path under a temporary root (as `push --local --root`)."""
    root = tmp_path / "root"
    root.mkdir()
    return root, lambda: LocalRunner("sip1"), PushOptions(root=str(root))


def test_cron_install_puts_the_zipapp_and_the_entry_through_the_push_agent(
    write_inventory: Any, tmp_path: Path
) -> None:
    inv = load_inventory(write_inventory(INVENTORY))
    root, runner, opts = _local(tmp_path)
    res = cron.install(
        runner, inv, inv.hosts["sip1"], timer=False, alert_cmd="mail -s sipops ops@example.net", opts=opts
    )
    assert res.ok, res.error
    assert sorted(res.changed) == sorted([cron.CONFIG_PATH, cron.CRON_PATH, ZIPAPP])
    entry = (root / cron.CRON_PATH.lstrip("/")).read_text()
    # python3 as the agent found it on the host
    assert re.search(rf"\* \* \* \* \* root /\S+/python3 {ZIPAPP} --local --quiet --state-name cron", entry), entry
    assert "--textfile /var/lib/prometheus/node-exporter" in entry
    config = json.loads((root / cron.CONFIG_PATH.lstrip("/")).read_text())
    assert config["alert_cmd"] == "mail -s sipops ops@example.net"
    pyz = root / ZIPAPP.lstrip("/")
    assert pyz.read_bytes() == bundle.zipapp_bytes() and pyz.stat().st_mode & 0o777 == 0o755
    # The push agent wrote them: one backup (of nothing: all three were new) a rollback can go back to.
    [backup] = list_backups(LocalRunner(), str(root))
    assert sorted(f["path"] for f in backup["files"]) == sorted(res.changed)
    again = cron.install(runner, inv, inv.hosts["sip1"], timer=False, alert_cmd="mail -s sipops ops@example.net",
                         opts=opts)  # fmt: skip
    assert again.ok and again.changed == []


def test_cron_install_and_push_are_one_engine_so_neither_undoes_the_other(write_inventory: Any, tmp_path: Path) -> None:
    """cron install pushes the common role's own health templates with the choices it keeps in
    tuned/<host>.yaml: the push engine's plan of the whole host finds them as they are, and switching
    to the timer retires the cron.d entry (the checks would run twice) through the same plan."""
    path = write_inventory(INVENTORY)
    inv = load_inventory(path)
    root, runner, opts = _local(tmp_path)
    installed = root / "opt/sipops/bin/sipops"  # sipops on the host: the schedule runs it, no zipapp
    installed.parent.mkdir(parents=True)
    installed.write_text("#!/bin/sh\n")
    installed.chmod(0o755)
    assert cron.install(runner, inv, inv.hosts["sip1"], timer=False, alert_cmd="logger sipops", opts=opts).ok
    entry = (root / cron.CRON_PATH.lstrip("/")).read_text()
    assert "* * * * * root /opt/sipops/bin/sipops health --local --quiet --state-name cron" in entry
    assert not (root / ZIPAPP.lstrip("/")).exists()

    again = load_inventory(path)
    host = again.hosts["sip1"]
    assert host.origins["health_alert_cmd"].level == "cron install"
    whole = plan_host(render_host(again, host), gather(LocalRunner(), render_host(again, host), root=str(root)))
    actions = {c.dest: c.action for c in whole.files}
    assert actions[cron.CONFIG_PATH] == actions[cron.CRON_PATH] == UNCHANGED
    assert cron.SERVICE_PATH not in actions and cron.TIMER_PATH not in actions

    timer = cron.schedule(again, host, cron.schedule_vars(timer=True, alert_cmd=None, command=None))
    plan = plan_host(timer, gather(LocalRunner(), timer, root=str(root)))
    assert {c.dest: c.action for c in plan.changes} == {
        cron.SERVICE_PATH: CREATE,
        cron.TIMER_PATH: CREATE,
        cron.CRON_PATH: REMOVE,
    }
    assert plan.handlers == ["daemon-reload", "start health timer"]


def test_cron_remove_retires_the_entry_and_the_zipapp_and_push_keeps_them_away(
    write_inventory: Any, tmp_path: Path
) -> None:
    path = write_inventory(INVENTORY)
    inv = load_inventory(path)
    root, runner, opts = _local(tmp_path)
    assert cron.install(runner, inv, inv.hosts["sip1"], timer=False, alert_cmd=None, opts=opts).ok
    res = cron.remove(runner, load_inventory(path), inv.hosts["sip1"], opts=opts)
    assert res.ok, res.error
    assert res.changed == [f"removed {cron.CRON_PATH}", f"removed {ZIPAPP}"]
    assert not (root / cron.CRON_PATH.lstrip("/")).exists() and not (root / ZIPAPP.lstrip("/")).exists()
    assert (root / cron.CONFIG_PATH.lstrip("/")).is_file()  # thresholds and state stay
    after = load_inventory(path)
    dests = {f.dest for f in render_host(after, after.hosts["sip1"]).files}
    assert not dests & {cron.CRON_PATH, cron.SERVICE_PATH, cron.TIMER_PATH, ZIPAPP}
    assert after.hosts["lb1"].vars["health_cron"] is True  # the other host is untouched


def test_unreachable_host_is_unknown_with_the_reason(write_inventory: Any) -> None:
    inv = load_inventory(write_inventory(INVENTORY))

    def refuse(host: Any) -> Any:
        raise OSError(f"connect to {host.address} refused")

    runs = check_hosts(list(inv.hosts.values()), lambda h: host_config(inv, h), refuse)
    assert [(r.status, r.result.status.name if r.result else None) for r in runs] == [("unreachable", "UNKNOWN")] * 2
    assert runs[1].result is not None and "198.18.0.12 refused" in runs[1].result.checks[0].message


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
