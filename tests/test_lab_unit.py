"""Lab logic that needs no root: naming, state file, inventory and known_hosts, argument checks."""

from __future__ import annotations

import json
import os
import re
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sipops.cli.lab import app
from sipops.errors import InputError
from sipops.lab import lifecycle
from sipops.lab.access import exec_argv, ssh_argv
from sipops.lab.invfile import inventory_text, known_hosts_text, write_files
from sipops.lab.lifecycle import UpOptions, _plan
from sipops.lab.rootfs import debian_mirror
from sipops.lab.state import IFNAMSIZ, MAX_ATTACKERS, MAX_HOSTS, LabState, Naming, check_counts
from sipops.remote.transport import HostKeyError, parse_jump


def _state(tmp_path: Path, hosts: int = 3, attackers: int = 2, **kw: object) -> LabState:
    opts = UpOptions(hosts=hosts, attackers=attackers, **kw)  # type: ignore[arg-type]
    return _plan(tmp_path, opts, Naming(opts.prefix, opts.network))


def test_names_carry_the_prefix_and_fit_in_an_interface_name(tmp_path: Path) -> None:
    state = _state(tmp_path, MAX_HOSTS, MAX_ATTACKERS, prefix="abcde")
    names = [state.naming.bridge] + [n for m in state.members for n in (m.netns, m.veth)]
    assert all(n.startswith("abcde-") and len(n) <= IFNAMSIZ for n in names)
    assert len(set(names)) == len(names)


def test_hosts_start_at_dot_two_and_attackers_at_one_dot_one(tmp_path: Path) -> None:
    state = _state(tmp_path)
    assert [(m.name, m.address, m.netns, m.veth) for m in state.members] == [
        ("h1", "198.18.0.2", "sipl-h1", "sipl-h1-v"),
        ("h2", "198.18.0.3", "sipl-h2", "sipl-h2-v"),
        ("h3", "198.18.0.4", "sipl-h3", "sipl-h3-v"),
        ("a1", "198.18.1.1", "sipl-a1", "sipl-a1-v"),
        ("a2", "198.18.1.2", "sipl-a2", "sipl-a2-v"),
    ]
    assert str(state.naming.bridge_address) == "198.18.0.1"


def test_a_network_outside_the_guarded_range_is_refused() -> None:
    with pytest.raises(InputError, match=re.escape("inside 198.18.0.0/15")):
        Naming("sipl", IPv4Network("10.0.0.0/16"))
    with pytest.raises(InputError, match="/16 to /23"):
        Naming("sipl", IPv4Network("198.18.0.0/24"))


@pytest.mark.parametrize(
    ("hosts", "attackers", "field"), [(0, 0, "--hosts"), (MAX_HOSTS + 1, 0, "--hosts"), (1, -1, "--attackers")]
)
def test_counts_out_of_range_name_the_option(hosts: int, attackers: int, field: str) -> None:
    with pytest.raises(InputError) as info:
        check_counts(hosts, attackers)
    assert info.value.field == field


def test_state_file_round_trips(tmp_path: Path) -> None:
    state = _state(tmp_path, opensips_prefix=Path("/opt/opensips"))
    state.base = "/var/cache/sipops/lab/bookworm-base"
    state.route_added = True
    state.members[0].pid, state.members[0].pid_started, state.members[0].mounted = 4242, 1700000000.5, True
    state.save()
    loaded = LabState.load(tmp_path)
    assert loaded == state
    assert sorted(os.listdir(tmp_path)) == ["state.json"]  # no temp file left behind


def test_no_state_file_means_no_lab(tmp_path: Path) -> None:
    assert LabState.load(tmp_path) is None


def test_a_broken_state_file_is_bad_input_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{\n  oops")
    with pytest.raises(InputError) as info:
        LabState.load(tmp_path)
    assert info.value.file == str(tmp_path / "state.json") and info.value.line == 2


def test_unknown_member_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="known: h1, a1"):
        _state(tmp_path, 1, 1).member("h9")


def test_inventory_is_yaml_in_the_sipops_format(tmp_path: Path) -> None:
    data = yaml.safe_load(inventory_text(_state(tmp_path)))
    assert data["defaults"]["ssh"] == {
        "user": "root",
        "port": 22,
        "key": "ssh/id_ed25519",
        "known_hosts": "ssh/known_hosts",
    }
    gateway = {"port": 5060, "set": 1, "kind": "media"}
    assert data["hosts"] == {
        "h1": {"address": "198.18.0.2", "roles": ["registrar", "proxy"]},
        "h2": {"address": "198.18.0.3", "roles": ["registrar", "proxy"]},
        "h3": {
            "address": "198.18.0.4",
            "roles": ["loadbalancer"],
            "vars": {
                "gateways": [
                    {"name": "h1", "address": "198.18.0.2", **gateway},
                    {"name": "h2", "address": "198.18.0.3", **gateway},
                ]
            },
        },
    }
    # this machine (the bridge) is the operator: allowlisted on every host
    assert data["defaults"]["vars"]["allowlist"] == ["198.18.0.1/32"]


def test_opensips_prefix_becomes_an_existing_install_in_the_inventory(tmp_path: Path) -> None:
    data = yaml.safe_load(inventory_text(_state(tmp_path, opensips_prefix=Path("/opt/opensips"))))
    assert data["defaults"]["vars"]["opensips_install"] == "existing"
    assert data["defaults"]["vars"]["opensips_prefix"] == "/opt/opensips"


def test_open_files_limit_follows_what_the_lab_can_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 20000))
    assert yaml.safe_load(inventory_text(_state(tmp_path)))["defaults"]["vars"]["open_files_limit"] == 20000
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1048576))
    assert "open_files_limit" not in yaml.safe_load(inventory_text(_state(tmp_path)))["defaults"]["vars"]


def test_written_inventory_loads_with_the_inventory_module(tmp_path: Path) -> None:
    inventory = pytest.importorskip("sipops.inventory")
    state = _state(tmp_path)
    path = write_files(state, {"198.18.0.2": "ssh-ed25519 AAAA"})
    inv = inventory.load_inventory(path)
    h1 = inv.hosts["h1"]
    assert (h1.address, h1.ssh.user, h1.ssh.port) == ("198.18.0.2", "root", 22)
    assert h1.ssh.key == tmp_path / "ssh" / "id_ed25519"
    assert h1.ssh.known_hosts == tmp_path / "ssh" / "known_hosts"


def test_known_hosts_lines_are_address_type_key() -> None:
    text = known_hosts_text({"198.18.0.3": "ssh-ed25519 BBBB", "198.18.0.2": "ssh-ed25519 AAAA"})
    assert text == "198.18.0.2 ssh-ed25519 AAAA\n198.18.0.3 ssh-ed25519 BBBB\n"


def test_host_commands_are_quoted_for_the_remote_shell_and_checked_strictly(tmp_path: Path) -> None:
    state = _state(tmp_path)
    argv = exec_argv(state, state.member("h1"), ["echo", "a b; rm -rf /"])
    assert argv[-2:] == ["--", "echo 'a b; rm -rf /'"]
    assert "StrictHostKeyChecking=yes" in argv and f"UserKnownHostsFile={tmp_path.resolve()}/ssh/known_hosts" in argv
    assert "root@198.18.0.2" in ssh_argv(state, state.member("h1"))


def test_attacker_commands_run_in_its_namespace(tmp_path: Path) -> None:
    state = _state(tmp_path)
    assert exec_argv(state, state.member("a2"), ["sipp", "-sn", "uac"]) == [
        "ip", "netns", "exec", "sipl-a2", "sipp", "-sn", "uac",
    ]  # fmt: skip


def test_debian_mirror_comes_from_the_apt_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIPOPS_LAB_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    assert debian_mirror(tmp_path / "nowhere") == "http://deb.debian.org/debian"


def test_host_key_error_names_the_host_and_the_known_hosts_file() -> None:
    message = str(HostKeyError("h1", "198.18.0.2", Path("/lab/ssh/known_hosts"), changed=True))
    assert "h1 (198.18.0.2)" in message and "/lab/ssh/known_hosts" in message and "differs" in message


def test_jump_spec_is_user_host_port(tmp_path: Path) -> None:
    from sipops.lab.access import lab_host

    state = _state(tmp_path)
    via = lab_host(state, state.member("h1"))
    jump = parse_jump("ops@bastion.example:2222", via)
    assert (jump.address, jump.ssh.user, jump.ssh.port, jump.ssh.known_hosts) == (
        "bastion.example", "ops", 2222, via.ssh.known_hosts,
    )  # fmt: skip
    assert parse_jump("bastion", via).ssh.user == "root"


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.stderr


def test_a_bad_hosts_value_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, err = _run(["up", "--hosts", "0", "--dir", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1 and "--hosts" in err


def test_without_root_up_says_so_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, err = _run(["up", "--dir", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1 and "needs root" in err


def test_missing_tools_are_named_with_their_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(lifecycle.shutil, "which", lambda tool: None if tool != "ip" else "/usr/bin/ip")
    code, err = _run(["up", "--dir", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1
    assert "systemd-nspawn (Debian package systemd-container)" in err and "debootstrap" in err


def test_down_without_a_lab_is_fine(tmp_path: Path) -> None:
    code, _ = _run(["down", "--dir", str(tmp_path)])
    assert code == 0


def test_exec_without_a_lab_is_bad_input(tmp_path: Path) -> None:
    code, err = _run(["exec", "a1", "--dir", str(tmp_path), "--", "true"])
    assert code == 2 and "no lab in" in err


def test_state_json_is_plain_json(tmp_path: Path) -> None:
    state = _state(tmp_path, 1, 0)
    state.save()
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["version"] == 1 and data["members"][0]["netns"] == "sipl-h1"


def test_the_lab_dir_is_absolute_so_mounts_match_proc_mounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `lab down` from the default ./lab left overlays mounted: mount options held relative paths
    # that never matched /proc/mounts, so the layers were not unmounted before their removal.
    from sipops.lab.lifecycle import lab_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIPOPS_LAB_DIR", raising=False)
    assert lab_dir(None) == tmp_path / "lab"
    assert lab_dir(Path("x")) == tmp_path / "x"


def test_hosts_boot_in_waves_of_four_per_core(tmp_path: Path) -> None:
    from sipops.lab.hosts import wave_size, waves

    state = _state(tmp_path, hosts=10)
    assert wave_size(2) == 8
    assert [[m.name for m in w] for w in waves(state.hosts(), 4)] == [
        ["h1", "h2", "h3", "h4"], ["h5", "h6", "h7", "h8"], ["h9", "h10"]]  # fmt: skip


# --- lab up --opensips-source: the hosts build a release tarball (opensips_install: source) ---


def _tarball(path: Path, top: str) -> Path:
    import tarfile

    src = path.parent / "src"
    (src / top).mkdir(parents=True)
    (src / top / "Makefile").write_text("all:\n")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / top, arcname=top)
    return path


def test_opensips_source_becomes_a_source_install_of_that_tarball_in_the_inventory(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.opensips_source, state.opensips_release, state.opensips_version = (
        "/srv/opensips-3.4.18.tar.gz",
        "3.4.18",
        "3.4",
    )
    data = yaml.safe_load(inventory_text(state))["defaults"]["vars"]
    assert (data["opensips_install"], data["opensips_source_url"]) == ("source", "/srv/opensips-3.4.18.tar.gz")
    assert (data["opensips_version"], data["opensips_release"]) == ("3.4", "3.4.18")


def test_the_release_of_a_source_tarball_is_its_top_folder(tmp_path: Path) -> None:
    assert lifecycle.opensips_source_release(_tarball(tmp_path / "x.tar.gz", "opensips-3.6.8")) == "3.6.8"


@pytest.mark.parametrize(
    ("top", "why"), [("linux-6.1", "not an OpenSIPS release tarball"), ("opensips-4.0.1", "OpenSIPS 4.0")]
)
def test_lab_up_refuses_a_tarball_that_is_no_opensips_it_runs(tmp_path: Path, top: str, why: str) -> None:
    (tmp_path / "t").mkdir()
    tarball = _tarball(tmp_path / "t" / "x.tar.gz", top)
    code, err = _run(["up", "--opensips-source", str(tarball), "--dir", str(tmp_path / "lab")])
    assert code == 2 and err.count("\n") == 1 and "--opensips-source" in err and why in err, err


def test_lab_up_takes_a_prefix_or_a_tarball_not_both(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path / "x.tar.gz", "opensips-3.6.8")
    code, err = _run(["up", "--opensips-prefix", str(tmp_path), "--opensips-source", str(tarball)])
    assert code == 2 and "not both" in err, err
