"""Inventory loading: precedence, origins, selection, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sipops.inventory import load_inventory
from tests.conftest import EXAMPLE

GOOD = """
defaults:
  vars:
    log_keep: 10
    udp_workers: 2
groups:
  edge:
    members: [a, b]
    roles: [proxy]
    vars:
      log_keep: 20
      tcp_workers: 6
  late:
    members: [b]
    vars:
      log_keep: 25
hosts:
  a:
    address: 192.0.2.1
    vars:
      log_keep: 30
  b:
    address: "2001:db8::2"
    ssh: {user: deploy, port: 2222, key: keys/id}
"""


def test_precedence_is_role_defaults_then_defaults_then_groups_then_host(write_inventory):
    inv = load_inventory(write_inventory(GOOD))
    a, b = inv.hosts["a"], inv.hosts["b"]
    assert a.vars["log_keep"] == 30 and a.origins["log_keep"].level == "host a"
    assert b.vars["log_keep"] == 25 and b.origins["log_keep"].level == "group late"
    assert a.vars["tcp_workers"] == 6 and a.origins["tcp_workers"].level == "group edge"
    assert a.vars["udp_workers"] == 2 and a.origins["udp_workers"].level == "defaults"
    assert a.vars["sip_port"] == 5060 and a.origins["sip_port"].level == "role common"


def test_origins_name_the_file_and_line(write_inventory):
    path = write_inventory(GOOD)
    inv = load_inventory(path)
    origin = inv.hosts["a"].origins["log_keep"]
    assert origin.file == str(path)
    assert path.read_text().splitlines()[origin.line - 1].strip() == "log_keep: 30"


def test_group_roles_are_added_to_members_and_common_comes_first(write_inventory):
    inv = load_inventory(write_inventory(GOOD))
    assert [r.name for r in inv.hosts["a"].role_objs][:1] == ["common"]
    assert "proxy" in inv.hosts["a"].roles


def test_ipv6_addresses_and_ssh_paths_relative_to_the_inventory(write_inventory, tmp_path):
    inv = load_inventory(write_inventory(GOOD))
    b = inv.hosts["b"]
    assert b.address == "2001:db8::2"
    assert b.ssh.port == 2222 and b.ssh.user == "deploy"
    assert b.ssh.key == tmp_path / "keys" / "id"


def test_ssh_agent_is_used_when_no_key_is_given_or_when_asked_for(write_inventory, tmp_path):
    from sipops.remote.transport import auth_kwargs

    text = "defaults:\n  ssh: {key: id}\nhosts:\n  a: {address: 192.0.2.1}\n  b:\n    address: 192.0.2.2\n"
    text += "    ssh: {agent: true}\n  c:\n    address: 192.0.2.3\n"
    inv = load_inventory(write_inventory(text))
    a, b = auth_kwargs(inv.hosts["a"].ssh), auth_kwargs(inv.hosts["b"].ssh)
    assert (a["allow_agent"], a["key_filename"], a["look_for_keys"]) == (False, [str(tmp_path / "id")], False)
    assert (b["allow_agent"], b["key_filename"]) == (True, [str(tmp_path / "id")])
    bare = load_inventory(write_inventory("hosts:\n  a: {address: 192.0.2.1}\n")).hosts["a"]
    assert auth_kwargs(bare.ssh)["allow_agent"] is True and "key_filename" not in auth_kwargs(bare.ssh)


def test_select_by_host_group_and_all(write_inventory):
    inv = load_inventory(write_inventory(GOOD))
    assert [h.name for h in inv.select(["late"])] == ["b"]
    assert [h.name for h in inv.select(["all"])] == ["a", "b"]
    assert [h.name for h in inv.select(["b", "edge"])] == ["a", "b"]


def test_the_example_inventory_loads():
    inv = load_inventory(EXAMPLE)
    assert set(inv.hosts) == {"edge1", "edge2", "lb1"}
    assert inv.hosts["edge2"].ssh.jump == "bastion.example.net"


def test_inventory_show_prints_each_variable_with_its_origin(cli, write_inventory):
    path = write_inventory(GOOD)
    code, out, _ = cli("inventory", "show", "a", "-i", path)
    assert code == 0
    line = next(x for x in out.splitlines() if x.strip().startswith("log_keep"))
    assert "30" in line and "host a" in line and f"{path}:" in line


def test_inventory_show_json(cli, write_inventory):
    code, out, _ = cli("inventory", "show", "b", "-i", write_inventory(GOOD), "--json")
    data = json.loads(out)
    assert code == 0 and data["vars"]["log_keep"] == {"value": 25, "from": data["vars"]["log_keep"]["from"]}
    assert data["vars"]["log_keep"]["from"].startswith("group late")


# Each bad input: (inventory text, expected line, expected field, words in the message)
BAD = {
    "unknown top-level key": ("hosts:\n  a: {address: 192.0.2.1}\nhostz: {}\n", 3, "hostz", "did you mean 'hosts'"),
    "unknown host key": ("hosts:\n  a:\n    adress: 192.0.2.1\n", 3, "hosts.a.adress", "did you mean 'address'"),
    "unknown variable": (
        "hosts:\n  a:\n    address: 192.0.2.1\n    vars:\n      log_kep: 3\n",
        5,
        "hosts.a.vars.log_kep",
        "did you mean 'log_keep'",
    ),
    "wrong type": (
        "hosts:\n  a:\n    address: 192.0.2.1\n    vars:\n      udp_workers: many\n",
        5,
        "hosts.a.vars.udp_workers",
        "expected an integer",
    ),
    "bad address": ("hosts:\n  a:\n    address: 192.0.2.300\n", 3, "hosts.a.address", "not a valid IP address"),
    "bad ipv6 address": ("hosts:\n  a:\n    address: '2001:db8::g'\n", 3, "hosts.a.address", "not a valid"),
    "bad port": (
        "hosts:\n  a:\n    address: 192.0.2.1\n    ssh: {port: 70000}\n",
        4,
        "hosts.a.ssh.port",
        "out of range",
    ),
    "apt repository not an http(s) URL": (
        "hosts:\n  a:\n    address: 192.0.2.1\n    vars:\n      opensips_apt_url: ftp://mirror.example.net/opensips\n",
        5,
        "hosts.a.vars.opensips_apt_url",
        "is not an http:// or https:// URL",
    ),
    "bad cidr": (
        "defaults:\n  vars:\n    allowlist: [192.0.2.0/24, 10.0.0.1/8]\nhosts:\n  a: {address: 192.0.2.1}\n",
        3,
        "defaults.vars.allowlist[1]",
        "not a valid CIDR",
    ),
    "duplicate host": (
        "hosts:\n  a: {address: 192.0.2.1}\n  a: {address: 192.0.2.2}\n",
        3,
        "hosts.a",
        "duplicate key 'a'",
    ),
    "duplicate address": (
        "hosts:\n  a: {address: 192.0.2.1}\n  b: {address: 192.0.2.1}\n",
        3,
        "hosts.b.address",
        "already host 'a'",
    ),
    "unknown role": (
        "hosts:\n  a:\n    address: 192.0.2.1\n    roles: [proxy, registar]\n",
        4,
        "hosts.a.roles[1]",
        "did you mean 'registrar'",
    ),
    "unknown group member": (
        "groups:\n  g:\n    members: [aa]\nhosts:\n  a: {address: 192.0.2.1}\n",
        3,
        "groups.g.members[0]",
        "did you mean 'a'",
    ),
    "bad enum": (
        "hosts:\n  a:\n    address: 192.0.2.1\n    vars: {opensips_install: apt}\n",
        4,
        "hosts.a.vars.opensips_install",
        "expected one of package, source, existing",
    ),
    "bad ssh agent": (
        "hosts:\n  a:\n    address: 192.0.2.1\n    ssh: {agent: maybe}\n",
        4,
        "hosts.a.ssh.agent",
        "expected",
    ),
    "yaml syntax": ("hosts:\n  a: {address: 192.0.2.1\n", 3, None, "YAML syntax error"),
    "no hosts": ("defaults: {}\n", None, None, "no hosts"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inventory_gives_one_line_with_file_line_and_field_and_exit_2(case, cli, write_inventory, tmp_path):
    text, line, field, words = BAD[case]
    path = write_inventory(text)
    out_dir = tmp_path / "out"
    code, out, err = cli("render", "all", "-i", path, "-o", out_dir)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    msg = lines[0]
    assert "Traceback" not in err
    where = f"{path}:{line}" if line else str(path)
    assert where in msg, msg
    if field:
        assert f": {field}: " in msg, msg
    assert words in msg, msg
    assert not out_dir.exists(), "nothing may be written on bad input"


def test_a_variable_of_a_role_the_host_lacks_is_refused(cli, write_inventory):
    path = write_inventory("hosts:\n  a:\n    address: 192.0.2.1\n    vars:\n      lb_inbound_set: 1\n")
    code, _, err = cli("render", "all", "-i", path, "--list")
    assert code == 2
    assert f"{path}:5: hosts.a.vars.lb_inbound_set: " in err and "role loadbalancer" in err


def test_unknown_host_on_the_command_line_is_bad_input(cli, write_inventory):
    code, _, err = cli("render", "aa", "-i", write_inventory(GOOD), "--list")
    assert code == 2 and "no host or group named 'aa'" in err and "did you mean 'a'" in err


def test_missing_inventory_file_is_bad_input(cli, tmp_path: Path):
    code, _, err = cli("render", "all", "-i", tmp_path / "nope.yaml", "--list")
    assert code == 2 and "nope.yaml: file not found" in err


def test_tuned_values_beside_the_inventory_sit_on_top_with_their_origin(write_inventory, tmp_path):
    path = write_inventory(GOOD)
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned/a.yaml").write_text("# written by tune-tcp\nopen_files_limit: 70000\nsomaxconn: 8192\n")
    inv = load_inventory(path)
    a = inv.hosts["a"]
    assert a.vars["open_files_limit"] == 70000 and a.vars["somaxconn"] == 8192
    assert a.origins["open_files_limit"].level == "tune-tcp" and a.origins["open_files_limit"].line == 2
    assert inv.hosts["b"].vars["open_files_limit"] == 65536  # only the host the file names


def test_a_bad_tuned_file_is_one_line_naming_it(cli, write_inventory, tmp_path):
    path = write_inventory(GOOD)
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned/a.yaml").write_text("open_files_limit: lots\n")
    code, _, err = cli("render", "all", "-i", path, "--list")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "tuned/a.yaml:1: open_files_limit: expected an integer" in err
