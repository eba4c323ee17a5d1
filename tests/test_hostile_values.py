"""Hostile values in every string variable: refused at the inventory field, or placed so that every
rendered file still parses (nft -c, systemd-analyze verify, cron and db_text syntax, JSON, the lint,
and opensips -C with the builds of $SIPOPS_OPENSIPS_PREFIX) and means what the inventory said.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipops.roles import RoleLibrary
from sipops.types import TypeSpec
from tests import opensips_builds

HOSTILE = {
    "dquote": 'a"b',
    "squote": "it's",
    "newline": "a\nb",
    "dollar": "$(echo PWNED)",
    "hash": "a#b",
    "semicolon": "a;b",
    "backslash": "a\\b",
    "nul": "a\x00b",
    "percent": "50%n",
    "colon": "a:b",
    "jinja": "{{ 7*7 }}",
    "long": "x" * 5000,
}
STRING_KINDS = {"str", "text", "token", "host", "hostnet", "sipuri", "regex", "duration", "logsize", "dburl"}
STRING_KINDS |= {"path", "url", "urlpath", "command", "resources"}
# `nft -c` needs CAP_NET_ADMIN (it asks the kernel); CI and the e2e machines run the tests as root.
NFT_CHECKS = shutil.which("nft") is not None and os.geteuid() == 0
GATEWAY = {"name": "gw1", "address": "192.0.2.21", "port": 5080, "description": "media one"}
BASE_VARS: dict[str, Any] = {"registrar_auth": True, "auth_realm": "sip.example.net", "gateways": [GATEWAY]}


def _fields() -> list[tuple[str, Any]]:
    """(id, how to set it) for every string a role variable can hold."""
    out: list[tuple[str, Any]] = []
    for name, (_, spec) in sorted(RoleLibrary(None).all_var_specs().items()):
        t: TypeSpec = spec.type
        if t.kind in STRING_KINDS:
            out.append((name, name))
        elif t.kind == "list" and t.items is not None and t.items.kind in STRING_KINDS:
            out.append((f"{name}[0]", (name, "list")))
        elif t.kind == "list" and t.items is not None and t.items.kind == "record":
            for fname, fspec in t.items.fields.items():
                if fspec.type.kind in STRING_KINDS:
                    out.append((f"{name}[0].{fname}", (name, "record", fname)))
        elif t.kind == "sysctl":
            out += [(f"{name}.key", (name, "key")), (f"{name}.value", (name, "value"))]
    return out


FIELDS = _fields()


def _vars_with(how: Any, value: str) -> dict[str, Any]:
    hvars = json.loads(json.dumps(BASE_VARS))
    if isinstance(how, str):
        hvars[how] = value
    elif how[1] == "list":
        hvars[how[0]] = [value]
    elif how[1] == "record":
        hvars[how[0]] = [{**GATEWAY, how[2]: value}]
    elif how[1] == "key":
        hvars[how[0]] = {value: 1}
    else:
        hvars[how[0]] = {"net.core.netdev_max_backlog": value}
    return hvars


def _inventory(path: Path, hvars: dict[str, Any], common: dict[str, Any] | None = None) -> Path:
    doc = {
        "defaults": {"vars": common or {}},
        "hosts": {"h1": {"address": "127.0.0.1", "roles": ["registrar", "proxy", "loadbalancer"], "vars": hvars}},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=10**6))
    return path


# ---- what each target means: parsers written from the targets' own rules ----


def _cfg_literals(text: str) -> list[str]:
    """Every double-quoted string of an opensips.cfg, unescaped as cfg.lex does."""
    out = []
    for m in re.finditer(r'"((?:[^"\\\n]|\\.)*)"', text):
        s = re.sub(r"\\([\\\"ntra])", lambda e: {"n": "\n", "t": "\t", "r": "\r", "a": "\a"}.get(e[1], e[1]), m[1])
        out.append(s)
    return out


def _dbtext_rows(text: str) -> list[list[str]]:
    """Rows of a db_text table (dbt_file.c: ':' separates, '\\' escapes \\ : n r t 0)."""
    rows = []
    for line in text.splitlines()[1:]:
        cols, cur, i = [], "", 0
        while i < len(line):
            c = line[i]
            if c == "\\":
                nxt = line[i + 1]
                assert nxt in "\\:nrt0", f"db_text cannot read the escape \\{nxt}: {line!r}"
                cur += {"n": "\n", "r": "\r", "t": "\t", "0": "\0"}.get(nxt, nxt)
                i += 2
                continue
            if c == ":":
                cols.append(cur)
                cur = ""
            else:
                cur += c
            i += 1
        rows.append([*cols, cur])
    return rows


def _cron_argv(line: str) -> list[str]:
    """The argv cron's /bin/sh gives the command of a cron.d line (unescaped % is a newline to cron)."""
    command = line.split(None, 6)[6]
    assert not re.search(r"(?<!\\)%", command), f"unescaped % in a cron line: {line}"
    command = command.replace("\\%", "%")
    script = f'set -- {command.split(" >/dev/null")[0]}; for a in "$@"; do printf "%s\\0" "$a"; done'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10, check=True).stdout
    return out.split("\0")[:-1]


def _check_files(out: Path, field: str, how: Any, value: str) -> None:
    host = out / "h1"
    nft = host / "etc/sipops/firewall.nft"
    if NFT_CHECKS:
        result = subprocess.run(["nft", "-c", "-f", str(nft)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{field}={value!r}: nft -c: {result.stderr}"
    units = [p for p in (host / "etc/systemd/system").glob("*.*") if p.suffix in (".service", ".timer")]
    if shutil.which("systemd-analyze"):
        for unit in units:
            res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
            complaints = [ln for ln in res.stderr.splitlines() if "is not executable" not in ln and ln.strip()]
            assert not complaints, f"{field}={value!r}: {unit.name}: {complaints}"
    for cron in (host / "etc/cron.d").glob("*"):
        for line in cron.read_text().splitlines():
            if line and not line.startswith("#") and not re.match(r"[A-Z]+=", line):
                assert len(line.split(None, 6)) == 7, line
                if field == "health_command" and "health" in cron.name:
                    argv = _cron_argv(line)
                    assert argv[: len(shlex.split(value))] == shlex.split(value), (line, argv)
    health = json.loads((host / "etc/sipops/health.json").read_text())
    if field == "health_alert_cmd":
        assert health["alert_cmd"] == value
    tables = list(host.rglob("dbtext/dispatcher"))
    assert tables
    table = tables[0].read_text()
    rows = _dbtext_rows(table)
    assert all(len(r) == len(table.splitlines()[0].split()) for r in rows), rows
    if field == "gateways[0].description":
        assert rows[0][-1] == value
    cfg = next(host.rglob("opensips.cfg")).read_text()
    literals = _cfg_literals(cfg)
    if field == "proxy_scanner_agents[0]":
        assert f"({value})" in literals
    if field == "lb_failover_codes":
        assert value in literals


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize(("field", "how"), FIELDS, ids=[f for f, _ in FIELDS])
def test_a_hostile_value_is_refused_at_its_field_or_placed_safely(cli, tmp_path, field, how, kind):
    value = HOSTILE[kind]
    inv = _inventory(tmp_path / "inventory.yaml", _vars_with(how, value))
    code, _, err = cli("render", "all", "-i", inv, "-o", tmp_path / "out")
    if code == 2:
        assert len(err.splitlines()) == 1, err
        var = how if isinstance(how, str) else how[0]
        assert re.search(rf"inventory\.yaml:\d+: hosts\.h1\.vars\.{re.escape(var)}", err), err
        assert not (tmp_path / "out").exists()
        return
    assert code == 0, err
    _check_files(tmp_path / "out", field, how, value)


def test_the_table_reaches_each_kind_of_string():
    kinds = {how if isinstance(how, str) else how[0] for _, how in FIELDS}
    assert {"auth_realm", "gateways", "health_command", "proxy_scanner_agents", "db_url", "sysctl"} <= kinds


# The fields whose values land in opensips.cfg (strings, modparams, comments).
CFG_FIELDS = [
    (f, how)
    for f, how in FIELDS
    if f in {"proxy_scanner_agents[0]", "lb_failover_codes", "auth_realm", "db_url", "proxy_outbound", "lb_resource"}
    or f in {"sip_domains[0]", "gateways[0].description", "gateways[0].name"}
]


@pytest.mark.parametrize(("field", "how"), CFG_FIELDS, ids=[f for f, _ in CFG_FIELDS])
def test_opensips_accepts_the_cfg_hostile_values_render_to(tmp_path, field, how, opensips_prefix):
    from sipops.errors import InputError
    from sipops.inventory import load_inventory
    from sipops.render import render_host

    for kind, value in sorted(HOSTILE.items()):
        work = tmp_path / kind
        work.mkdir()
        common = {
            "opensips_version": opensips_builds.line(opensips_prefix),
            "opensips_install": "existing",
            "opensips_prefix": str(opensips_prefix),
            "lb_dbtext_dir": str(work / "dbtext"),
        }
        if field != "db_url":
            common["db_url"] = f"sqlite://{work}/opensips.sqlite"
        try:
            inv = load_inventory(_inventory(work / "inventory.yaml", _vars_with(how, value), common))
            rendered = render_host(inv, inv.hosts["h1"])
        except InputError:
            continue  # refused at its field: the test above checks the line
        (work / "dbtext").mkdir()
        (work / "opensips.sqlite").touch()
        cfg = work / "opensips.cfg"
        for f in rendered.files:
            if f.dest.endswith("opensips.cfg"):
                cfg.write_bytes(f.content)
            elif "/dbtext/" in f.dest:
                Path(f.dest).write_bytes(f.content)
        argv = [str(opensips_prefix / "sbin/opensips"), "-C", "-f", str(cfg)]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        output = res.stdout + res.stderr
        assert res.returncode == 0 and "config file ok" in output, f"{field}={value!r}: {output}"


@pytest.mark.parametrize(
    ("ssh", "field"),
    [
        ({"user": "-oProxyCommand=touch /tmp/x"}, "ssh.user"),
        ({"user": "a b"}, "ssh.user"),
        ({"jump": "-oProxyCommand=x"}, "ssh.jump"),
        ({"jump": "ops@bastion:99999"}, "ssh.jump"),
        ({"jump": "a b@bastion"}, "ssh.jump"),
    ],
)
def test_ssh_settings_that_could_become_options_are_refused_at_their_field(cli, tmp_path, ssh, field):
    inv = tmp_path / "inventory.yaml"
    inv.write_text(yaml.safe_dump({"hosts": {"h1": {"address": "127.0.0.1", "ssh": ssh}}}))
    code, _, err = cli("render", "all", "-i", inv, "--list")
    assert code == 2 and len(err.splitlines()) == 1 and f"hosts.h1.{field}" in err, err


def test_a_role_file_whose_name_could_not_sit_in_the_cfg_is_not_a_role(cli, tmp_path):
    (tmp_path / "roles").mkdir()
    (tmp_path / "roles" / 'evil"$x.yaml').write_text("description: x\n")
    inv = tmp_path / "inventory.yaml"
    inv.write_text(yaml.safe_dump({"hosts": {"h1": {"address": "127.0.0.1", "roles": ['evil"$x']}}}))
    code, _, err = cli("render", "all", "-i", inv, "--list")
    assert code == 2 and len(err.splitlines()) == 1 and "unknown role" in err, err
