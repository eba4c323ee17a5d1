"""`sipops tune-tcp`: the table, --check, apply through the push engine and the read-back verdicts.

The CLI is patched only where it reaches a host (the probe and push_host); the probe itself runs for
real on this machine (read-only) in the last tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sipops.cli.main import app
from sipops.host.tuneprobe import tune_user_nofile
from sipops.inventory import load_inventory
from sipops.remote.apply import HostResult
from sipops.remote.facts import HostFacts
from sipops.remote.runner import LocalRunner
from sipops.render import render_host
from sipops.tuning import run as tune_run
from sipops.tuning.calc import TuneFacts
from sipops.tuning.facts import TuneProbe, gather

SYSCTL = {
    "fs.file-max": "9223372036854775807",
    "fs.nr_open": "1048576",
    "net.core.somaxconn": "4096",
    "net.ipv4.tcp_max_syn_backlog": "512",
    "net.ipv4.tcp_syncookies": "1",
    "net.core.netdev_max_backlog": None,
    "net.ipv4.tcp_fin_timeout": "60",
    "net.ipv4.tcp_tw_reuse": "2",
    "net.ipv4.tcp_keepalive_time": "7200",
    "net.ipv4.tcp_keepalive_intvl": "75",
    "net.ipv4.tcp_keepalive_probes": "9",
}


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text("hosts:\n  sip1:\n    address: 192.0.2.10\n    roles: [registrar]\n")
    return path


def _probe(sysctl: dict[str, str | None], *, limit: int | None = 1024, opensips: bool = False) -> TuneProbe:
    facts = TuneFacts(mem_mb=2048, cpus=2, container="systemd-nspawn", sysctl=sysctl, limit_nofile=limit)
    push = HostFacts(os={}, init="systemd", files={}, opensips={"bin": "/usr/sbin/opensips"} if opensips else None)
    unit = {"name": "opensips.service", "load": "loaded" if opensips else "not-found", "nofile": limit}
    return TuneProbe(facts, unit, None, push)


class FakeHost:
    """Stands in for the host's answers: the probe before, push_host, the probe after."""

    def __init__(self, before: TuneProbe, after: TuneProbe) -> None:
        self.probes = [before, after]
        self.pushed: list[Any] = []

    def gather(self, runner: Any, rendered: Any, *, with_push: bool = True, root: str = "") -> TuneProbe:
        return self.probes.pop(0)

    def push_host(self, rendered: Any, factory: Any, **kw: Any) -> HostResult:
        self.pushed.append(rendered)
        return HostResult(rendered.host.name, "changed", [f.dest for f in rendered.files], ["apply sysctl"], stamp="s1")


def _cli(monkeypatch: pytest.MonkeyPatch, fake: FakeHost, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(tune_run, "gather", fake.gather)
    monkeypatch.setattr(tune_run, "push_host", fake.push_host)
    res = CliRunner().invoke(app, ["tune-tcp", *args])
    return res.exit_code, res.stdout + res.stderr


def _after(**changes: str | None) -> dict[str, str | None]:
    live = dict(SYSCTL, **{"net.ipv4.tcp_max_syn_backlog": "8192", "net.ipv4.tcp_fin_timeout": "30"})
    live.update({"net.ipv4.tcp_tw_reuse": "1", "net.ipv4.tcp_keepalive_time": "600"})
    live.update({"net.ipv4.tcp_keepalive_intvl": "30", "net.ipv4.tcp_keepalive_probes": "5"})
    live.update(changes)
    return live


@pytest.mark.parametrize(
    ("value", "words"), [("0", "positive"), ("-3", "positive"), ("50000000", "more than one host")]
)
def test_a_bad_connection_count_is_one_line_and_exit_2(inventory: Path, value: str, words: str) -> None:
    res = CliRunner().invoke(app, ["tune-tcp", "sip1", "-i", str(inventory), "--max-connections", value])
    assert res.exit_code == 2
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_check_prints_current_to_target_and_changes_nothing(monkeypatch: pytest.MonkeyPatch, inventory: Path) -> None:
    fake = FakeHost(_probe(SYSCTL), _probe(SYSCTL))
    code, out = _cli(monkeypatch, fake, "sip1", "-i", str(inventory), "--local", "--max-connections", "2000", "--check")
    assert code == 0, out
    assert "sip1: 2000 connections; 2 cores, 2048 MB RAM, container systemd-nspawn" in out
    assert "LimitNOFILE                    1024" in out and "3072" in out
    assert "must be set on the container host (systemd-nspawn)" in out
    assert "files that would change: /etc/security/limits.d/60-opensips.conf" in out
    assert fake.pushed == []


def test_apply_goes_through_the_push_engine_with_only_the_tuned_files(
    monkeypatch: pytest.MonkeyPatch, inventory: Path
) -> None:
    after = _probe(_after(), limit=3072)
    after = TuneProbe(after.facts.__class__(**{**after.facts.__dict__, "user_nofile": 3072}), after.unit, None, None)
    fake = FakeHost(_probe(SYSCTL), after)
    code, out = _cli(monkeypatch, fake, "sip1", "-i", str(inventory), "--local", "--max-connections", "2000")
    assert code == 0, out
    [rendered] = fake.pushed
    dests = sorted(f.dest for f in rendered.files)
    # OpenSIPS is not installed there: its cfg waits, and nothing restarts it
    assert dests == [
        "/etc/security/limits.d/60-opensips.conf",
        "/etc/sysctl.d/60-sipops.conf",
        "/etc/systemd/system/opensips.service.d/sipops.conf",
    ]
    assert not any("restart opensips" in f.notify for f in rendered.files)
    sysctl = next(f for f in rendered.files if f.dest.startswith("/etc/sysctl.d/")).content.decode()
    assert "net.ipv4.tcp_fin_timeout = 30" in sysctl and "fs." not in sysctl and "netdev_max_backlog" not in sysctl
    limits = next(f for f in rendered.files if "limits.d" in f.dest).content.decode()
    assert "opensips    hard    nofile    3072" in limits
    assert "read back:" in out and "did not take" not in out


def test_a_key_that_did_not_take_fails_the_host(monkeypatch: pytest.MonkeyPatch, inventory: Path) -> None:
    after = _probe(_after(**{"net.ipv4.tcp_fin_timeout": "60"}), limit=3072)
    fake = FakeHost(_probe(SYSCTL), after)
    code, out = _cli(monkeypatch, fake, "sip1", "-i", str(inventory), "--local", "--max-connections", "2000")
    assert code == 1, out
    # in a container a rejected key is the container host's job, not a failure; outside one it fails
    assert "must be set on the container host: net.ipv4.tcp_fin_timeout is 60, wanted 30" in out


def test_outside_a_container_a_key_that_did_not_take_is_a_failure(
    monkeypatch: pytest.MonkeyPatch, inventory: Path
) -> None:
    def vm(p: TuneProbe) -> TuneProbe:
        return TuneProbe(p.facts.__class__(**{**p.facts.__dict__, "container": None}), p.unit, None, p.push)

    fake = FakeHost(vm(_probe(SYSCTL)), vm(_probe(_after(**{"net.ipv4.tcp_fin_timeout": "60"}), limit=3072)))
    code, out = _cli(monkeypatch, fake, "sip1", "-i", str(inventory), "--local", "--max-connections", "2000")
    assert code == 1
    assert "did not take: net.ipv4.tcp_fin_timeout is 60, wanted 30" in out


def test_with_opensips_installed_its_cfg_is_tuned_and_restarted(inventory: Path) -> None:
    inv = load_inventory(inventory)
    rendered = render_host(inv, inv.hosts["sip1"])
    with_os = tune_run.tuned_files(rendered, opensips_installed=True)
    cfg = next(f for f in with_os.files if f.dest.endswith("opensips.cfg"))
    assert "restart opensips" in cfg.notify
    without = tune_run.tuned_files(rendered, opensips_installed=False)
    assert not any(f.dest.endswith("opensips.cfg") for f in without.files)


def test_the_user_nofile_comes_from_limits_d_with_the_users_own_line_winning(tmp_path: Path) -> None:
    d = tmp_path / "etc/security/limits.d"
    d.mkdir(parents=True)
    (tmp_path / "etc/security/limits.conf").write_text("*  soft nofile 2048\n*  hard nofile 4096\n")
    assert tune_user_nofile(str(tmp_path), "opensips") == 2048
    (d / "60-opensips.conf").write_text("# sipops\nopensips soft nofile 3072\nopensips hard nofile 3072\n")
    assert tune_user_nofile(str(tmp_path), "opensips") == 3072
    assert tune_user_nofile(str(tmp_path / "none"), "opensips") is None


def test_the_probe_reads_this_machine_in_one_run_with_the_push_facts(inventory: Path) -> None:
    inv = load_inventory(inventory)
    probe = gather(LocalRunner(), render_host(inv, inv.hosts["sip1"]))  # read-only
    with open("/proc/sys/net/core/somaxconn") as fh:
        assert probe.facts.sysctl["net.core.somaxconn"] == fh.read().strip()
    assert probe.facts.cpus == len(os.sched_getaffinity(0)) and probe.facts.mem_mb > 0
    assert probe.push is not None and "/etc/sysctl.d/60-sipops.conf" in probe.push.files
