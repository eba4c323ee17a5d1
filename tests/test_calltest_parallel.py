"""calltest checks hosts at once (the fleet executor), one host's checks in turn, gateway checks one at a time,
results in the hosts' order whatever order they finish in."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from sipops.calltest import run
from sipops.calltest.report import CheckResult


class FakeTarget:
    def __init__(self, name: str, roles: list[str]) -> None:
        self.name = name
        self.roles = roles
        self.vars: dict[str, Any] = {}
        self.transports = ("udp", "tcp")
        self.host = SimpleNamespace(roles=roles)

    def has(self, role: str) -> bool:
        return role in self.roles


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.hosts_at_once = 0
        self.gateway_at_once = 0
        self.gateway_now = 0
        self.per_host_at_once = 0

    def check(self, name: str, delay: float) -> Any:
        def fn(session: Any, t: FakeTarget, transport: str) -> CheckResult:
            with self.lock:
                self.running[t.name] = self.running.get(t.name, 0) + 1
                self.per_host_at_once = max(self.per_host_at_once, self.running[t.name])
                self.hosts_at_once = max(self.hosts_at_once, sum(1 for v in self.running.values() if v))
                if name in run.GATEWAY_CHECKS:
                    self.gateway_now += 1
                    self.gateway_at_once = max(self.gateway_at_once, self.gateway_now)
            time.sleep(delay)
            with self.lock:
                self.running[t.name] -= 1
                if name in run.GATEWAY_CHECKS:
                    self.gateway_now -= 1
            return CheckResult(t.name, name, transport, "ok", "")

        return fn


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    r = Recorder()
    names = ["register", "call", "cancel", "unknown-user", "gateways", "failover"]
    # h1 is slowest: its results still come first.
    monkeypatch.setattr(run, "CHECKS", {n: r.check(n, 0.02) for n in names})
    return r


def _prepared(targets: list[FakeTarget]) -> Any:
    opts = SimpleNamespace(transports=("udp", "tcp"), callees=[])
    return SimpleNamespace(targets=targets, opts=opts)


def test_hosts_run_at_once_their_own_checks_in_turn_and_results_keep_the_hosts_order(rec: Recorder) -> None:
    targets = [
        FakeTarget("h1", ["registrar", "proxy"]),
        FakeTarget("h2", ["registrar", "proxy"]),
        FakeTarget("h3", ["loadbalancer"]),
        FakeTarget("h4", ["loadbalancer"]),
    ]
    session = SimpleNamespace(gateways=threading.Lock())
    emitted: list[CheckResult] = []
    results = run.run_checks(_prepared(targets), session, emitted.append)  # type: ignore[arg-type]
    assert rec.hosts_at_once >= 2  # not one host after the other
    assert rec.per_host_at_once == 1  # a host's checks never overlap
    assert rec.gateway_at_once == 1  # two balancers' gateway callees would share addresses and ports
    hosts = [r.host for r in results]
    assert hosts == sorted(hosts)  # h1's results, then h2's...
    assert [(r.check, r.transport) for r in results if r.host == "h1"] == [
        (c, t) for t in ("udp", "tcp") for c in ("register", "call", "cancel", "unknown-user")
    ]
    assert sorted(map(id, emitted)) == sorted(map(id, results))


def test_forks_1_checks_one_host_at_a_time(rec: Recorder) -> None:
    targets = [FakeTarget("h1", ["registrar", "proxy"]), FakeTarget("h2", ["registrar", "proxy"])]
    session = SimpleNamespace(gateways=threading.Lock())
    run.run_checks(_prepared(targets), session, lambda r: None, forks=1)  # type: ignore[arg-type]
    assert rec.hosts_at_once == 1


def test_a_host_whose_checks_crash_fails_alone(rec: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(session: Any, t: FakeTarget, transport: str) -> CheckResult:
        raise ValueError("a bug")

    monkeypatch.setitem(run.CHECKS, "gateways", boom)
    targets = [FakeTarget("h1", ["registrar", "proxy"]), FakeTarget("h3", ["loadbalancer"])]
    session = SimpleNamespace(gateways=threading.Lock())
    results = run.run_checks(_prepared(targets), session, lambda r: None)  # type: ignore[arg-type]
    assert [r.status for r in results if r.host == "h1"] == ["ok"] * 8
    h3 = [r for r in results if r.host == "h3"]
    assert len(h3) == 1 and h3[0].status == "FAILED" and "ValueError: a bug" in h3[0].detail
