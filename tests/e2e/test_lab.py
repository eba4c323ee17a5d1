"""`sipops lab` against real nspawn hosts: boot, strict host keys, isolation, attackers, teardown."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from sipops.cli.lab import app
from sipops.lab import hosts as lab_hosts
from sipops.lab import lifecycle, net
from sipops.lab.lifecycle import UpOptions, down, up
from sipops.lab.state import LabState
from sipops.remote.transport import HostKeyError, connect

from .conftest import SCRATCH_NETWORK, SCRATCH_PREFIX, Lab, lab_skip_reason

pytestmark = pytest.mark.e2e

BANNER = "import socket,sys; s=socket.create_connection((sys.argv[1],22),3); print(s.recv(64).decode().strip())"


def _needs_lab() -> None:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)


# The scratch-lab tests come first: they need no session lab, so they run before it exists.


def _leftovers(state: LabState, root_parent: Path) -> list[str]:
    """Everything of this lab still on the machine: namespaces, links, mounts, processes, folders."""
    found: list[str] = []
    prefix = f"{state.prefix}-"
    found += [f"netns {n}" for n in os.listdir(net.NETNS_DIR) if n.startswith(prefix)] if net.NETNS_DIR.is_dir() else []
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout)
    found += [f"link {link['ifname']}" for link in links if link["ifname"].startswith(prefix)]
    found += [f"address {a}" for a in net.addresses_in(state.naming.network)]
    with open("/proc/self/mountinfo") as info:
        found += [f"mount {line.split()[4]}" for line in info if str(root_parent) in line.split()[4]]
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] != psutil.STATUS_ZOMBIE and (str(root_parent) in cmd or f" {prefix}h" in cmd):
            found.append(f"process {proc.pid} {cmd}")
    for member in state.hosts():
        found += [f"cgroup {d}" for d in lab_hosts.cgroup_dirs(member) if d.exists()]
    propagate = lab_hosts.PROPAGATE_DIR
    if propagate.is_dir():
        found += [f"folder {propagate / n}" for n in os.listdir(propagate) if n.startswith(prefix)]
    return found


def _scratch_options() -> UpOptions:
    return UpOptions(hosts=1, attackers=1, prefix=SCRATCH_PREFIX, network=SCRATCH_NETWORK)


def test_down_leaves_no_namespace_link_bridge_route_or_process(tmp_path: Path) -> None:
    _needs_lab()
    route_before = net.guard_route_present()
    result = up(tmp_path, _scratch_options(), log=lambda _: None)
    state = result.state
    pids = [m.pid for m in state.hosts() if m.pid is not None]
    assert pids and all(lab_hosts.is_running(m) for m in state.hosts())
    assert net.guard_route_present()
    assert _leftovers(state, tmp_path), "the lab should exist before down"

    assert down(tmp_path, log=lambda _: None) is True

    assert _leftovers(state, tmp_path) == []
    assert net.guard_route_present() == route_before  # removed only if this lab added it
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (tmp_path / "state.json").exists()
    assert down(tmp_path, log=lambda _: None) is False  # idempotent


def test_down_after_a_crashed_up_still_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_lab()
    route_before = net.guard_route_present()

    def crash(*_: object, **__: object) -> None:
        raise KeyboardInterrupt  # as if `lab up` died while the hosts were booting

    monkeypatch.setattr(lab_hosts, "wait_ssh", crash)
    monkeypatch.setattr(lifecycle, "down", lambda *_, **__: True)  # and never got to roll back
    with pytest.raises(KeyboardInterrupt):
        up(tmp_path, _scratch_options(), log=lambda _: None)
    monkeypatch.undo()
    state = LabState.load(tmp_path)
    assert state is not None and _leftovers(state, tmp_path)

    assert down(tmp_path, log=lambda _: None) is True

    assert _leftovers(state, tmp_path) == []
    assert net.guard_route_present() == route_before


# Session lab from here on.


def test_hosts_boot_debian_with_systemd_running(lab: Lab) -> None:
    for name in lab.hosts:
        with connect(lab.host(name)) as conn:
            state = conn.run("systemctl is-system-running --wait", hide=True, warn=True).stdout.strip()
            hostname = conn.run("hostname", hide=True).stdout.strip()
        assert (name, state) == (name, "running")
        assert hostname == name


def test_fabric_connects_with_strict_host_key_checking(lab: Lab) -> None:
    with connect(lab.host("h1")) as conn:
        assert conn.run("cat /etc/debian_version", hide=True).ok
        policy = conn.client._policy
    assert type(policy).__name__ == "RejectPolicy"


def test_unknown_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    host = lab.host("h1")
    stranger = dataclasses.replace(host, ssh=dataclasses.replace(host.ssh, known_hosts=empty))
    with pytest.raises(HostKeyError, match=f"h1 .*not in {empty}"), connect(stranger) as conn:
        conn.run("true", hide=True)


def test_changed_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    lines = (lab.dir / "ssh" / "known_hosts").read_text().splitlines()
    h2_key = next(line.split(" ", 1)[1] for line in lines if line.startswith(lab.hosts["h2"] + " "))
    forged = tmp_path / "known_hosts"
    forged.write_text(f"{lab.hosts['h1']} {h2_key}\n")  # h1's address with another host's key
    host = lab.host("h1")
    imposter = dataclasses.replace(host, ssh=dataclasses.replace(host.ssh, known_hosts=forged))
    with pytest.raises(HostKeyError, match="differs"), connect(imposter) as conn:
        conn.run("true", hide=True)


def test_accept_new_records_an_unknown_key_then_connects_strictly(lab: Lab, tmp_path: Path) -> None:
    fresh = tmp_path / "known_hosts"
    host = lab.host("h3")
    host = dataclasses.replace(host, ssh=dataclasses.replace(host.ssh, known_hosts=fresh))
    with connect(host, accept_new_host_key=True) as conn:
        conn.run("true", hide=True)
    assert fresh.read_text().startswith(f"{lab.hosts['h3']} ssh-ed25519 ")
    with connect(host) as conn:
        assert conn.run("true", hide=True).ok


def test_a_file_written_on_one_host_is_not_visible_on_another(lab: Lab) -> None:
    marker = f"/root/sipops-e2e-{uuid.uuid4().hex}"
    with connect(lab.host("h1")) as conn:
        conn.run(f"echo h1 > {marker}", hide=True)
        assert conn.run(f"cat {marker}", hide=True).stdout.strip() == "h1"
    with connect(lab.host("h2")) as conn:
        assert conn.run(f"test -e {marker}", hide=True, warn=True).failed
    assert not Path(lab.state.base, marker.lstrip("/")).exists()  # the shared base is never written


def test_hosts_have_their_own_host_keys_and_machine_ids(lab: Lab) -> None:
    ids = set()
    for name in lab.hosts:
        with connect(lab.host(name)) as conn:
            ids.add(conn.run("cat /etc/machine-id", hide=True).stdout.strip())
    keys = {line.split()[2] for line in (lab.dir / "ssh" / "known_hosts").read_text().splitlines()}
    assert len(ids) == len(keys) == len(lab.hosts)


def test_an_attacker_reaches_a_host(lab: Lab) -> None:
    result = lab.exec("a1", sys.executable, "-c", BANNER, lab.hosts["h1"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SSH-2.0-OpenSSH")


def test_hosts_have_no_route_off_the_lab_network(lab: Lab) -> None:
    with connect(lab.host("h1")) as conn:
        routes = conn.run("ip -4 route show", hide=True).stdout.strip().splitlines()
    assert len(routes) == 1 and routes[0].startswith(str(lab.state.naming.network))
    assert net.guard_route_present()


def test_sysctl_net_keys_are_writable_per_host(lab: Lab) -> None:
    machine = Path("/proc/sys/net/ipv4/tcp_fin_timeout").read_text()
    with connect(lab.host("h2")) as conn:
        conn.run("sysctl -qw net.ipv4.tcp_fin_timeout=17", hide=True)
        assert conn.run("sysctl -n net.ipv4.tcp_fin_timeout", hide=True).stdout.strip() == "17"
    assert Path("/proc/sys/net/ipv4/tcp_fin_timeout").read_text() == machine


def test_status_shows_every_host_reachable(lab: Lab) -> None:
    result = CliRunner().invoke(app, ["status", "--dir", str(lab.dir)])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[1:]]
    assert {r[0]: r[3:] for r in rows} == {
        **{h: ["yes", "yes"] for h in lab.hosts},
        **{a: ["yes", "-"] for a in lab.attackers},
    }


def test_exec_runs_on_a_host_over_ssh_and_returns_its_exit_code(lab: Lab) -> None:
    assert lab.exec("h3", "sh", "-c", "exit 7").returncode == 7
    assert lab.exec("h3", "echo", "a b; c").stdout == "a b; c\n"  # quoted for the remote shell


def test_the_inventory_is_valid_for_the_rest_of_sipops(lab: Lab) -> None:
    inventory = pytest.importorskip("sipops.inventory")
    inv = inventory.load_inventory(lab.inventory)
    assert {h.name: h.address for h in inv.hosts.values()} == lab.hosts
    host = inv.hosts["h1"]
    with connect(host) as conn:  # the inventory's own ssh settings reach the host strictly
        assert conn.run("hostname", hide=True).stdout.strip() == "h1"
