"""allowlist, ssh_allow, watch_allow: a wide entry is refused unless allowlist_wide_ok names it; overlaps warn."""

from __future__ import annotations

import pytest

INV = """
hosts:
  h1:
    address: 192.0.2.1
    vars:
      {var}: [{entries}]
{extra}"""


@pytest.mark.parametrize("var", ["allowlist", "ssh_allow", "watch_allow"])
@pytest.mark.parametrize("entry", ["0.0.0.0/0", "10.0.0.0/7", "::/0", "2000::/15"])
def test_a_wide_entry_is_refused_at_its_line(cli, write_inventory, tmp_path, var, entry):
    path = write_inventory(INV.format(var=var, entries=f"192.0.2.0/24, '{entry}'", extra=""))
    code, _, err = cli("render", "all", "-i", path, "-o", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1
    assert f"inventory.yaml:5: hosts.h1.vars.{var}[1]: {entry} is wider than" in err
    assert "allowlist_wide_ok" in err
    assert not (tmp_path / "out").exists()


def test_a_wide_entry_listed_in_allowlist_wide_ok_is_accepted(cli, write_inventory, tmp_path):
    extra = "defaults:\n  vars:\n    allowlist_wide_ok: [10.0.0.0/7]\n"
    path = write_inventory(INV.format(var="allowlist", entries="10.0.0.0/7", extra=extra))
    code, _, err = cli("render", "all", "-i", path, "-o", tmp_path / "out")
    assert code == 0, err
    assert "10.0.0.0/7" in (tmp_path / "out/h1/etc/sipops/firewall.nft").read_text()


def test_the_boundary_prefixes_are_not_wide(cli, write_inventory, tmp_path):
    path = write_inventory(INV.format(var="allowlist", entries="10.0.0.0/8, '2001::/16'", extra=""))
    code, _, err = cli("render", "all", "-i", path, "--list")
    assert code == 0, err


def test_overlapping_entries_are_a_warning_not_an_error(cli, write_inventory, tmp_path):
    entries = "192.0.2.0/24, 192.0.2.128/25, 198.51.100.7/32, 198.51.100.7/32"
    path = write_inventory(INV.format(var="allowlist", entries=entries, extra=""))
    code, _, err = cli("render", "all", "-i", path, "-o", tmp_path / "out")
    assert code == 0
    assert err.splitlines() == [
        "sipops: warning: host h1: allowlist[1] 192.0.2.128/25 is inside allowlist[0] 192.0.2.0/24",
        "sipops: warning: host h1: allowlist[3] 198.51.100.7/32 repeats allowlist[2] 198.51.100.7/32",
    ]


@pytest.mark.parametrize("name", ["../../etc", "a b", "-rf", "h1;reboot", "x" * 70, "$(id)"])
def test_a_host_name_that_cannot_be_a_file_name_is_refused(cli, write_inventory, tmp_path, name):
    path = write_inventory(f'hosts:\n  "{name}":\n    address: 192.0.2.1\n')
    code, _, err = cli("render", "all", "-i", path, "-o", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1 and "inventory.yaml:2: hosts." in err
    assert "is not a valid name" in err
