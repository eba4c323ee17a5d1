"""sipops push against lab hosts over SSH: idempotence, validation on the host, health-gated rollback,
kill -9 mid-transfer, host-key refusal. A stand-in role (data/push_e2e) replaces the base role, since
lab hosts have no OpenSIPS: real rsyslog/logrotate/nft validators, a STAND-IN SIP service for the gate."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sipops.host.sip import options_ping
from tests.e2e.conftest import Lab

DATA = Path(__file__).parent.parent / "data" / "push_e2e"
SIPOPS = [sys.executable, "-c", "from sipops.cli.main import run; run()"]
FILES = [
    "/etc/rsyslog.d/20-sipops-test.conf",
    "/etc/logrotate.d/sipops-test",
    "/etc/sipops-test/test.nft",
    "/etc/sipops-test/standin.conf",
    "/etc/systemd/system/sipops-standin-sip.service",
    "/usr/local/lib/sipops-test/standin_sip.py",
]
BIG = "/var/lib/sipops-test/big.dat"


class Site:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab = lab
        self.dir = tmp / "site"
        shutil.copytree(DATA, self.dir)
        self.inventory = self.dir / "inventory.yaml"
        self.names = sorted(lab.hosts)[:2]
        self.known_hosts = lab.dir / "ssh" / "known_hosts"
        self.vars()

    def vars(self, known_hosts: Path | None = None, **values: object) -> None:
        ssh = {"user": "root", "key": str(self.lab.dir / "ssh" / "id_ed25519")}
        ssh["known_hosts"] = str(known_hosts or self.known_hosts)
        hosts = {n: {"address": self.lab.hosts[n], "vars": values} for n in self.names}
        self.inventory.write_text(json.dumps({"defaults": {"ssh": ssh}, "hosts": hosts}))

    def sipops(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [*SIPOPS, args[0], *self.names, "-i", str(self.inventory), *args[1:]]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def hashes(self, name: str, paths: list[str]) -> dict[str, str]:
        out = self.lab.exec(name, "sha256sum", *paths).stdout
        return {line.split()[1]: line.split()[0] for line in out.splitlines()}


@pytest.fixture(scope="module")
def site(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(lab, tmp_path_factory.mktemp("push"))


def test_first_push_changes_files_and_the_second_reports_no_changes(site: Site) -> None:
    first = site.sipops("push")
    assert first.returncode == 0, first.stdout + first.stderr
    for n in site.names:
        assert (
            f"{n}: changed 7 file(s); ran daemon-reload, restart rsyslog, load test table, restart standin"
            in first.stdout
        )
        assert options_ping("udp", site.lab.hosts[n], 5060, timeout=2).alive
    second = site.sipops("push")
    assert second.returncode == 0
    assert "no changes on any host; no handler ran" in second.stdout
    diff = site.sipops("diff", "--exit-code")
    assert diff.returncode == 0, diff.stdout


@pytest.mark.parametrize(
    ("var", "value", "path"),
    [
        ("rsyslog_extra", "this is { not rsyslog", "/etc/rsyslog.d/20-sipops-test.conf"),
        ("nft_extra", "tcp dport 5060 frobnicate", "/etc/sipops-test/test.nft"),
    ],
)
def test_an_invalid_file_is_refused_on_the_host_and_live_hashes_stay(
    site: Site, var: str, value: str, path: str
) -> None:
    site.vars()
    assert site.sipops("push").returncode == 0
    before = {n: site.hashes(n, FILES) for n in site.names}
    site.vars(**{var: value})
    res = site.sipops("push")
    assert res.returncode == 1
    assert f"(live {path} unchanged)" in res.stdout
    assert {n: site.hashes(n, FILES) for n in site.names} == before


def test_a_restart_that_fails_the_health_gate_is_rolled_back_and_the_old_config_serves(site: Site) -> None:
    site.vars(standin_banner="good")
    assert site.sipops("push").returncode == 0
    before = {n: site.hashes(n, FILES) for n in site.names}
    site.vars(standin_banner="bad", standin_crash=True)
    res = site.sipops("push", "--gate-timeout", "3")
    assert res.returncode == 1
    assert "ROLLED BACK: health gate:" in res.stdout, res.stdout
    assert "previous config restored" in res.stdout and "FAILED too" not in res.stdout
    assert "refusing to start (crash = yes)" in res.stdout  # journalctl lines of the unit
    assert {n: site.hashes(n, FILES) for n in site.names} == before
    for n in site.names:
        probe = options_ping("udp", site.lab.hosts[n], 5060, timeout=2)
        assert probe.alive, probe.describe()


def test_killing_the_push_mid_transfer_leaves_every_file_old_or_new(site: Site) -> None:
    site.vars()
    assert site.sipops("push").returncode == 0
    paths = [*FILES, BIG]
    for i, delay in enumerate([0.4, 0.7, 1.0, 1.4]):
        old = {n: site.hashes(n, paths) for n in site.names}
        site.vars(standin_banner=f"round{i}", big_kb=40000)
        argv = [*SIPOPS, "push", *site.names, "-i", str(site.inventory)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The render of this round gives the only acceptable "new" content.
        rendered = site.dir / "out"
        shutil.rmtree(rendered, ignore_errors=True)
        subprocess.run([*SIPOPS, "render", "all", "-i", str(site.inventory), "-o", str(rendered)], check=True)
        for n in site.names:
            _wait_idle(site, n)
            now = site.hashes(n, paths)
            for p in paths:
                new = subprocess.run(["sha256sum", str(rendered / n / p.lstrip("/"))], capture_output=True, text=True)
                assert now[p] in (old[n][p], new.stdout.split()[0]), f"{n}:{p} is neither old nor new"
            left = site.lab.exec(n, "sh", "-c", "find /etc /usr/local/lib /var/lib/sipops-test -name '*.sipops-new'")
            assert left.stdout.strip() == ""


def _wait_idle(site: Site, name: str) -> None:
    """The host finishes a detached apply on its own: wait for the lock to be free."""
    res = site.lab.exec(name, "flock", "-w", "60", "/var/lib/sipops/lock", "true")
    assert res.returncode == 0, res.stderr


def test_a_changed_host_key_refuses_the_connection_clearly(site: Site, tmp_path: Path) -> None:
    lines = site.known_hosts.read_text().splitlines()
    a, b = site.lab.hosts[site.names[0]], site.lab.hosts[site.names[1]]
    key_of_b = next(line.split(" ", 1)[1] for line in lines if line.startswith(b + " "))
    wrong = [line for line in lines if not line.startswith(a + " ")] + [f"{a} {key_of_b}"]
    bad = tmp_path / "known_hosts"
    bad.write_text("\n".join(wrong) + "\n")
    site.vars(known_hosts=bad)
    res = site.sipops("push")
    assert res.returncode == 1
    assert f"host key of {site.names[0]} ({a}) differs from the one in {bad}: refusing to connect" in res.stdout
    other = next(line for line in res.stdout.splitlines() if line.startswith(site.names[1] + " "))
    assert other.split()[1] in ("unchanged", "changed")  # the other host is pushed as usual


def test_a_host_behind_a_jump_host_is_reached_through_it(site: Site, tmp_path: Path) -> None:
    """ssh.jump: the push engine's connection goes through the jump host (its sshd sees the jump host
    as the client), with strict host keys on both hops."""
    first, second = site.names
    via, target = site.lab.hosts[first], site.lab.hosts[second]
    ssh = {"user": "root", "key": str(site.lab.dir / "ssh" / "id_ed25519"), "known_hosts": str(site.known_hosts)}
    inventory = site.dir / "jump.yaml"
    hosts = {second: {"address": target, "ssh": {"jump": f"root@{via}"}}}
    inventory.write_text(json.dumps({"defaults": {"ssh": ssh}, "hosts": hosts}))
    since = site.lab.exec(second, "date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    time.sleep(1)
    res = subprocess.run([*SIPOPS, "push", second, "-i", str(inventory)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    log = site.lab.exec(second, "journalctl", "-u", "ssh", "--since", since, "--no-pager", "-q").stdout
    assert f"Accepted publickey for root from {via} " in log, log

    # The jump host's key is checked as strictly as the target's.
    lines = site.known_hosts.read_text().splitlines()
    key_of_target = next(line.split(" ", 1)[1] for line in lines if line.startswith(target + " "))
    bad = tmp_path / "known_hosts"
    bad.write_text("\n".join([ln for ln in lines if not ln.startswith(via + " ")] + [f"{via} {key_of_target}"]) + "\n")
    ssh["known_hosts"] = str(bad)
    inventory.write_text(json.dumps({"defaults": {"ssh": ssh}, "hosts": hosts}))
    res = subprocess.run([*SIPOPS, "push", second, "-i", str(inventory)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert f"host key of root@{via} ({via}) differs from the one in {bad}: refusing to connect" in res.stdout


def test_the_ssh_agent_authenticates_when_the_inventory_names_no_key(site: Site, tmp_path: Path) -> None:
    name = site.names[0]
    inventory = site.dir / "agent.yaml"
    ssh = {"user": "root", "known_hosts": str(site.known_hosts)}
    inventory.write_text(json.dumps({"defaults": {"ssh": ssh}, "hosts": {name: {"address": site.lab.hosts[name]}}}))
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {"PATH": "/usr/bin:/bin", "SSH_AUTH_SOCK": str(sock), "HOME": str(tmp_path)}
        add = subprocess.run(["ssh-add", str(site.lab.dir / "ssh" / "id_ed25519")], env=env, capture_output=True)
        assert add.returncode == 0, add.stderr
        argv = [*SIPOPS, "push", name, "-i", str(inventory)]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        assert res.returncode == 0, res.stdout + res.stderr

        env.pop("SSH_AUTH_SOCK")  # no key, no agent: the host fails with the reason
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        assert res.returncode == 1
        assert "no SSH key" in res.stdout, res.stdout
    finally:
        agent.terminate()
        agent.wait(10)


def test_a_non_root_ssh_user_pushes_through_sudo_and_without_sudo_rights_fails_clearly(site: Site) -> None:
    """ssh.user other than root: every agent run goes through `sudo -n` (never a password prompt)."""
    name = site.names[0]
    pub = (site.lab.dir / "ssh" / "id_ed25519.pub").read_text().strip()
    setup = (
        "command -v sudo >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo >/dev/null 2>&1; "
        "for u in deploy nosudo; do id $u >/dev/null 2>&1 || useradd -m -s /bin/sh $u; "
        "mkdir -p /home/$u/.ssh && printf '%s\\n' \"$KEY\" > /home/$u/.ssh/authorized_keys && "
        "chown -R $u:$u /home/$u/.ssh && chmod 700 /home/$u/.ssh && chmod 600 /home/$u/.ssh/authorized_keys; done; "
        "echo 'deploy ALL=(root) NOPASSWD: ALL' > /etc/sudoers.d/deploy && chmod 0440 /etc/sudoers.d/deploy; "
        "command -v sudo"
    )
    res = site.lab.exec(name, "env", f"KEY={pub}", "sh", "-c", setup, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    ssh = {"key": str(site.lab.dir / "ssh" / "id_ed25519"), "known_hosts": str(site.known_hosts)}
    inventory = site.dir / "sudo.yaml"
    for user, code in (("deploy", 0), ("nosudo", 1)):
        hosts = {name: {"address": site.lab.hosts[name], "ssh": {"user": user}}}
        inventory.write_text(json.dumps({"defaults": {"ssh": ssh}, "hosts": hosts}))
        out = subprocess.run([*SIPOPS, "push", name, "-i", str(inventory)], capture_output=True, text=True, timeout=120)
        assert out.returncode == code, out.stdout + out.stderr
        if code:
            assert "sudo" in out.stdout and "password" in out.stdout, out.stdout
    owners = site.lab.exec(name, "stat", "-c", "%U", *FILES).stdout.split()
    assert set(owners) == {"root"}, owners  # written by root through sudo, not by deploy
