"""`sipops render`: the file tree, determinism, overrides beside the inventory, template errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, ROOT

SMALL = """
hosts:
  a:
    address: 192.0.2.1
    roles: [proxy]
"""


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_render_writes_every_file_under_host_and_absolute_path(cli, write_inventory, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = cli("render", "all", "-i", write_inventory(SMALL), "-o", out)
    assert code == 0, err
    files = _tree(out)
    for path in (
        "a/etc/opensips/opensips.cfg",
        "a/etc/rsyslog.d/10-opensips.conf",
        "a/etc/logrotate.d/opensips",
        "a/etc/sysctl.d/60-sipops.conf",
        "a/etc/security/limits.d/60-opensips.conf",
        "a/etc/systemd/system/opensips.service.d/sipops.conf",
        "a/etc/sipops/firewall.nft",
        "a/etc/cron.d/sipops-health",
    ):
        assert path in files, sorted(files)
    assert "a: " in stdout


def test_render_of_the_example_inventory_is_byte_for_byte_deterministic(cli, tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    assert cli("render", "all", "-i", EXAMPLE, "-o", first)[0] == 0
    assert cli("render", "all", "-i", EXAMPLE, "-o", second)[0] == 0
    one, two = _tree(first), _tree(second)
    assert one == two
    assert {p.split("/")[0] for p in one} == {"edge1", "edge2", "lb1"}


def test_source_installs_get_our_unit_and_package_installs_a_drop_in_only(cli, tmp_path):
    out = tmp_path / "out"
    assert cli("render", "all", "-i", EXAMPLE, "-o", out)[0] == 0
    assert (out / "lb1/etc/systemd/system/opensips.service").is_file()
    assert "/usr/local/opensips/sbin/opensips" in (out / "lb1/etc/systemd/system/opensips.service").read_text()
    assert (out / "lb1/usr/local/opensips/etc/opensips/opensips.cfg").is_file()
    assert not (out / "edge1/etc/systemd/system/opensips.service").exists()
    drop_in = (out / "edge1/etc/systemd/system/opensips.service.d/sipops.conf").read_text()
    assert "LimitNOFILE=65536" in drop_in and "-m 256 -M 32" in drop_in


def test_logging_facility_matches_the_rsyslog_rule(cli, write_inventory, tmp_path):
    inv = write_inventory(SMALL + "    vars: {log_facility: LOG_LOCAL3, log_file: /var/log/sip/opensips.log}\n")
    out = tmp_path / "out"
    assert cli("render", "all", "-i", inv, "-o", out)[0] == 0
    cfg = (out / "a/etc/opensips/opensips.cfg").read_text()
    assert "syslog_facility = LOG_LOCAL3" in cfg
    rule = (out / "a/etc/rsyslog.d/10-opensips.conf").read_text()
    assert "local3.*    -/var/log/sip/opensips.log" in rule and "& stop" in rule
    rotate = (out / "a/etc/logrotate.d/opensips").read_text()
    assert rotate.startswith("# Managed by sipops.\n/var/log/sip/opensips.log {") and "postrotate" in rotate


def test_list_prints_files_and_writes_nothing(cli, write_inventory, tmp_path):
    code, out, _ = cli("render", "a", "-i", write_inventory(SMALL), "--list")
    assert code == 0
    assert "0640 root:opensips /etc/opensips/opensips.cfg  validate: /usr/sbin/opensips" in out
    assert not (tmp_path / "a").exists()


def test_a_template_beside_the_inventory_overrides_the_packaged_one(cli, write_inventory, tmp_path):
    inv = write_inventory(SMALL)
    (tmp_path / "templates/rsyslog").mkdir(parents=True)
    (tmp_path / "templates/rsyslog/opensips.conf.j2").write_text("# ours for {{ inventory_hostname }}\n")
    out = tmp_path / "out"
    assert cli("render", "all", "-i", inv, "-o", out)[0] == 0
    assert (out / "a/etc/rsyslog.d/10-opensips.conf").read_text() == "# ours for a\n"
    # the other templates still come from the package
    assert "table inet sipops" in (out / "a/etc/sipops/firewall.nft").read_text()


def test_a_role_beside_the_inventory_overrides_the_packaged_one(cli, write_inventory, tmp_path):
    inv = write_inventory(SMALL)
    (tmp_path / "roles").mkdir()
    packaged = (ROOT / "roles/proxy.yaml").read_text()
    assert packaged.count("\ntemplates:\n") == 1  # the proxy role's own files: its media relay table
    (tmp_path / "roles/proxy.yaml").write_text(
        packaged.replace("\nvars:\n", "\nvars:\n  motd: {type: str, default: hello}\n", 1).replace(
            "\ntemplates:\n", "\ntemplates:\n  - {src: motd.j2, dest: /etc/motd}\n", 1
        )
    )
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates/motd.j2").write_text("{{ motd }} from {{ roles | join(',') }}\n")
    out = tmp_path / "out"
    code, _, err = cli("render", "all", "-i", inv, "-o", out)
    assert code == 0, err
    assert (out / "a/etc/motd").read_text() == "hello from common,proxy\n"


def test_an_undefined_template_variable_names_template_line_and_variable(cli, write_inventory, tmp_path):
    inv = write_inventory(SMALL)
    (tmp_path / "templates/rsyslog").mkdir(parents=True)
    (tmp_path / "templates/rsyslog/opensips.conf.j2").write_text("# line 1\n{{ log_file }}\n{{ no_such_var }}\n")
    out = tmp_path / "out"
    code, _, err = cli("render", "all", "-i", inv, "-o", out)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "templates/rsyslog/opensips.conf.j2:3: no_such_var: undefined variable" in err and "host a" in err
    assert not out.exists()


def test_a_template_syntax_error_names_template_and_line(cli, write_inventory, tmp_path):
    inv = write_inventory(SMALL)
    (tmp_path / "templates/cron").mkdir(parents=True)
    (tmp_path / "templates/cron/sipops-health.j2").write_text("ok\n{% if %}\n")
    code, _, err = cli("render", "all", "-i", inv, "--list")
    assert code == 2 and "templates/cron/sipops-health.j2:2: template syntax error" in err


def test_a_bad_role_file_is_one_line_with_its_own_file_and_line(cli, write_inventory, tmp_path):
    inv = write_inventory(SMALL)
    (tmp_path / "roles").mkdir()
    (tmp_path / "roles/proxy.yaml").write_text("vars:\n  x: {type: str}\ntemplatez: []\n")
    code, _, err = cli("render", "all", "-i", inv, "--list")
    assert code == 2
    assert "roles/proxy.yaml:3: templatez: unknown key 'templatez'; did you mean 'templates'?" in err


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{src: motd.j2, dest: /etc/motd, when: 'true', retire: [x]}", "expected the command to run before removing"),
        ("{src: motd.j2, dest: /etc/motd, retire: ''}", "retire needs a 'when'"),
    ],
)
def test_a_bad_retire_is_one_line_naming_the_role_file_line_and_field(cli, write_inventory, tmp_path, entry, message):
    inv = write_inventory(SMALL)
    (tmp_path / "roles").mkdir()
    packaged = (ROOT / "roles/proxy.yaml").read_text()
    (tmp_path / "roles/proxy.yaml").write_text(packaged.replace("\ntemplates:\n", f"\ntemplates:\n  - {entry}\n", 1))
    code, _, err = cli("render", "all", "-i", inv, "--list")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "roles/proxy.yaml:" in err and "retire" in err and message in err, err


def test_version_help_and_completion(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("sipops ")
    code, out, _ = cli("--help")
    assert code == 0 and "render" in out and "--install-completion" in out


def test_a_package_install_cfg_names_the_packages_module_directory(cli, write_inventory, tmp_path):
    # OpenSIPS has no compiled-in module path: without mpath, `loadmodule "tm.so"` fails on a package install.
    out = tmp_path / "out"
    assert cli("render", "all", "-i", write_inventory(SMALL), "-o", out)[0] == 0
    cfg = (out / "a/etc/opensips/opensips.cfg").read_text()
    assert 'mpath = "/usr/lib/x86_64-linux-gnu/opensips/modules/"' in cfg
