"""The watcher's thresholds are declared once, as the common role's variables: rendered to watch.json (the
service reads it with --config), the CLI's defaults are the role's, flags override single keys, and a bad
watch.json is one line naming the file and the key, exit 2."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sipops.host.monitor import watchconf
from sipops.host.monitor.rules import Thresholds
from sipops.inventory import load_inventory
from sipops.monitor.watchdefaults import role_defaults, role_settings
from sipops.render import render_host
from sipops.roles import RoleLibrary
from tests.conftest import Cli

ROOT = Path(__file__).resolve().parents[1]
SIPOPS = str(Path(sys.executable).with_name("sipops"))


def _rendered(host: str = "edge1") -> dict[str, Any]:
    inv = load_inventory(ROOT / "inventory.example.yaml")
    res = render_host(inv, inv.hosts[host])
    return {f.dest: f for f in res.files}


def test_watch_json_holds_every_setting_under_its_role_variable_and_loads(tmp_path: Path) -> None:
    files = _rendered()
    data = json.loads(files["/etc/sipops/watch.json"].content)
    assert set(data) == set(watchconf.VARS)
    inv = load_inventory(ROOT / "inventory.example.yaml")
    vars_ = inv.hosts["edge1"].vars
    path = tmp_path / "watch.json"
    path.write_bytes(files["/etc/sipops/watch.json"].content)
    s = watchconf.load(path)
    assert s.thresholds.max_conns_per_ip == vars_["flood_max_conns_per_ip"] == 100  # the inventory's, not the role's
    assert s.thresholds.new_per_sec == vars_["flood_syn_per_sec"]
    assert s.ports == [5060] and s.sip_log == vars_["log_file"]
    assert "192.0.2.0/26" in s.allow  # the allowlist, with gateways and fleet members


def test_the_unit_reads_watch_json_and_passes_no_threshold_flag() -> None:
    unit = _rendered()["/etc/systemd/system/sipops-watch.service"].content.decode()
    (exec_start,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    assert exec_start == "ExecStart=/opt/sipops/bin/sipops watch --ban --config /etc/sipops/watch.json"


def test_no_threshold_has_a_second_default_the_role_is_the_one_declaration() -> None:
    ratios = {"port_alert_ratio", "source_alert_ratio"}  # not role variables: fixed shares of the limits
    for f in dataclasses.fields(Thresholds):
        assert (f.default is dataclasses.MISSING) is (f.name not in ratios), f.name
    common = RoleLibrary(None).load("common").vars
    assert set(watchconf.VARS) <= set(common)
    assert role_settings().thresholds.max_conns_per_ip == common["flood_max_conns_per_ip"].default
    import inspect

    from sipops.cli.ban import watch_command

    options = inspect.signature(watch_command).parameters
    for name in ("max_conns", "new_per_sec", "flood_per_sec", "syn_recv", "ban_for", "tcp_max_connections"):
        assert options[name].default is None, name  # the value comes from watch.json or the role


def test_the_push_validator_accepts_the_rendered_file_and_refuses_a_bad_one(tmp_path: Path) -> None:
    f = _rendered()["/etc/sipops/watch.json"]
    assert f.validate is not None
    command = f.validate.replace("/opt/sipops/bin/sipops", SIPOPS)
    good = tmp_path / "good.json"
    good.write_bytes(f.content)
    ok = subprocess.run(["sh", "-c", command.replace("{path}", str(good))], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "100 connections per source (burst)" in ok.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(f.content.decode().replace('"flood_syn_per_sec": 100', '"flood_syn_per_sec": "fast"'))
    no = subprocess.run(["sh", "-c", command.replace("{path}", str(bad))], capture_output=True, text=True)
    assert no.returncode == 2
    assert no.stderr.strip().splitlines() == [
        f"sipops: error: {bad}: flood_syn_per_sec: 'fast' is not a number above 0"
    ]


def _good(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_rendered()["/etc/sipops/watch.json"].content)
    return data


BAD: list[tuple[str, Any, str]] = [
    ("not JSON", "{", "not valid JSON"),
    ("bytes", b"\xff\xfe{}", "not UTF-8"),
    ("a list", [1, 2], "not a JSON object"),
    ("a key missing", {"drop": "ban_timeout"}, "ban_timeout is missing"),
    ("an unknown key", {"set": ("flood_max_conn", 5)}, "unknown key 'flood_max_conn'"),
    ("a zero count", {"set": ("flood_max_conns_per_ip", 0)}, "flood_max_conns_per_ip: 0 is not a whole number"),
    ("a bad duration", {"set": ("ban_timeout", "soon")}, "ban_timeout: not a duration"),
    ("a port out of range", {"set": ("watch_ports", [0])}, "watch_ports:"),
    ("the flood line under the rate", {"set": ("flood_line_syn_per_sec", 50)}, "must be above flood_syn_per_sec"),
    ("more per source than in all", {"set": ("tcp_max_connections", 10)}, "above tcp_max_connections"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_a_bad_watch_json_is_one_line_naming_the_file_and_exit_2(
    cli: Cli, tmp_path: Path, case: tuple[str, Any, str]
) -> None:
    _, content, expected = case
    path = tmp_path / "watch.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, list):
        path.write_text(json.dumps(content))
    else:
        data = _good(tmp_path)
        if "drop" in content:
            del data[content["drop"]]
        else:
            key, value = content["set"]
            data[key] = value
        path.write_text(json.dumps(data))
    code, out, err = cli("watch", "--once", "--config", path)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (out, err)
    assert str(path) in lines[0] and expected in lines[0], lines[0]
    assert out == ""


def test_a_directory_or_a_missing_file_as_config_is_one_line(cli: Cli, tmp_path: Path) -> None:
    for path, why in ((tmp_path, "is a directory, not a file"), (tmp_path / "nope.json", "no such file")):
        code, _, err = cli("watch", "--once", "--config", path)
        assert code == 2 and err.strip() == f"sipops: error: {path}: {why}"


def test_flags_override_one_key_of_watch_json_and_a_bad_flag_is_named(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "watch.json"
    path.write_text(json.dumps(_good(tmp_path)))
    code, out, _ = cli("watch", "--check-config", "--config", path, "--max-conns", "7", "--new-per-sec", "3")
    assert code == 0 and "7 connections per source (burst), 3/s after it, flood line 1000/s (burst 21)" in out
    code, _, err = cli("watch", "--check-config", "--config", path, "--flood-per-sec", "2")
    assert (
        code == 2
        and err.strip()
        == "sipops: error: --flood-per-sec: flood_line_syn_per_sec must be above flood_syn_per_sec (100)"
    )


def test_without_a_config_the_role_defaults_are_the_settings(cli: Cli) -> None:
    code, out, _ = cli("watch", "--check-config")
    d = role_defaults()
    assert code == 0
    assert out.strip() == (
        f"defaults: OK: {d['flood_max_conns_per_ip']} connections per source (burst), {d['flood_syn_per_sec']}/s "
        f"after it, flood line {d['flood_line_syn_per_sec']}/s (burst {3 * d['flood_max_conns_per_ip']}), ports all"
    )
