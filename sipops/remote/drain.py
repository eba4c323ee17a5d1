"""Drain a node behind the fleet's load balancers around an OpenSIPS restart (issue 19).

When a push restarts OpenSIPS on a host that a load balancer of the same inventory lists as a gateway
(dispatcher destination or load_balancer destination), the host is first set inactive there over MI,
then its calls in setup are waited for (bounded: --drain-timeout), then the push runs (restart, health
gate, rollback as always), and the host is put back active in every path: after its gate passed, and
after a failure, a rollback or a lost connection too (it carried calls before; should it not answer, the
balancer's own failover and probing take it out as they would without sipops; dispatcher's MI "probing"
state only takes effect after ds_probing_threshold calls, so it is no state to leave a host in).
One agent run per step and host (sipops/host/drain.py).

A drain that cannot finish in time or a balancer that cannot be reached stops the push of that host
before anything changes on it, and says what it did and what it left in which state.

Pushes of several hosts behind one balancer take its lock in turn: they are drained one at a time,
whatever --forks says (draining all of a set at once would leave its calls nowhere to go).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sipops.host.drain import DRAIN_TIMEOUT
from sipops.inventory import Host, Inventory
from sipops.remote.apply import HostResult
from sipops.remote.facts import health_config
from sipops.remote.plan import HostPlan
from sipops.remote.runner import RemoteError, Runner, call
from sipops.render import HostRender, context, environment

RESTORE_TRIES = 3  # a balancer that does not answer the put-back is asked again, this often
_RESTART = re.compile(r"\bsystemctl\s+(?:--\S+\s+)*restart\s+([^;&|]+)")


@dataclass
class DrainOptions:
    enabled: bool = True
    timeout: float = DRAIN_TIMEOUT


@dataclass(frozen=True)
class Entry:
    """The node as one destination of one balancer."""

    lb: Host
    engine: str  # dispatcher | load_balancer
    url: str  # the balancer's MI, on its own loopback
    set: int
    uri: str


class DrainAborted(Exception):
    """The node was not restarted: the reason, with what was put back."""


ENTRY = "sipops.host.drain:main"  # the host side, run through the one boot path (sipops.remote.ship)


def restarts_opensips(rendered: HostRender, plan: HostPlan) -> bool:
    """A handler of the plan restarts a SIP service. `reload routes` restarts only when OpenSIPS refuses
    the reload (its fallback): a route-only change is not drained."""
    units = {s if "." in s else s + ".service" for r in rendered.host.role_objs for s in r.services}
    for name in plan.handlers:
        cmd = plan.handler_commands[name]
        if "reload_routes" in cmd:
            continue
        for m in _RESTART.finditer(cmd):
            if any((u if "." in u else u + ".service") in units for u in m.group(1).split()):
                return True
    return False


def entries_for(inv: Inventory, node: Host) -> list[Entry]:
    """Every (balancer, set, uri) of the inventory whose gateway is one of the node's SIP sockets."""
    ctx = context(inv, node)
    mine = {(str(s["address"]), int(s["port"]), str(s["proto"])) for s in ctx["sip_sockets"]}
    addresses = {node.address} | {str(s.get("advertise") or "") for s in ctx["sip_sockets"]}
    ports = {(p, proto) for _, p, proto in mine}
    row = environment(inv).get_template("opensips/dbtext/_row.j2").module
    out: list[Entry] = []
    for lb in inv.hosts.values():
        if lb is node or "loadbalancer" not in lb.roles:
            continue
        v = lb.vars
        for gw in v.get("gateways") or []:
            port, proto = int(gw.get("port", 5060)), str(gw.get("transport", "udp"))
            addr = str(gw["address"])
            if (addr, port, proto) in mine or (addr in addresses and (port, proto) in ports):
                out.append(
                    Entry(
                        lb,
                        str(v.get("lb_engine", "dispatcher")),
                        f"http://127.0.0.1:{v['mi_http_port']}/mi",
                        int(gw.get("set", 1)),
                        str(row.gw_uri(gw)),  # type: ignore[attr-defined]
                    )
                )
    return out


@dataclass
class DrainReport:
    """What the drain did, for the host's progress lines and its summary row."""

    lines: list[str] = field(default_factory=list)
    drained: list[Entry] = field(default_factory=list)  # set inactive, to be put back
    left: list[str] = field(default_factory=list)  # what could not be put back
    back: list[str] = field(default_factory=list)  # the states it was put back in
    waited: float | None = None

    def where(self) -> list[str]:
        return list(dict.fromkeys(f"{e.lb.name} set {e.set}" for e in self.drained))

    def summary(self) -> str:
        if not self.drained:
            return ""
        where = ", ".join(self.where())
        waited = f" (waited {self.waited:.1f}s)" if self.waited is not None else ""
        if self.left:
            return f"drained on {where}{waited}; NOT PUT BACK: {'; '.join(self.left)}"
        return f"drained on {where}{waited}, put back {'/'.join(dict.fromkeys(self.back))}"


class Drainer:
    """Shared by the hosts of one push: the inventory, how to reach a balancer, one lock per balancer."""

    def __init__(self, inv: Inventory, runner_for: Callable[[Host], Callable[[], Runner]], opts: DrainOptions) -> None:
        self.inv = inv
        self.runner_for = runner_for
        self.opts = opts
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def around(
        self,
        rendered: HostRender,
        plan: HostPlan,
        runner: Runner,
        apply: Callable[[], HostResult],
        log: Callable[[str], None],
    ) -> HostResult:
        """apply(), drained first when it restarts OpenSIPS behind a balancer; the node is put back after."""
        if not self.opts.enabled or not restarts_opensips(rendered, plan):
            return apply()
        entries = entries_for(self.inv, rendered.host)
        if not entries:
            return apply()
        name = rendered.host.name
        locks = [self._lock(lb) for lb in sorted({e.lb.name for e in entries})]
        report = DrainReport()
        for lock in locks:
            lock.acquire()
        try:
            try:
                active = self._drain(entries, report, log, name)
                if active:
                    self._wait(rendered, runner, report, log, name)
            except DrainAborted as exc:
                result = HostResult(name, "failed", reason=str(exc))
            except RemoteError as exc:  # the wait's connection to the node: nothing was changed on it
                result = HostResult(name, "failed", reason=f"{exc} while waiting for calls in setup: not restarted")
            else:
                try:
                    result = apply()
                except Exception as exc:  # as push_host would say it, with what the drain did
                    reason = str(exc) if isinstance(exc, RemoteError) else f"{type(exc).__name__}: {exc}"
                    result = HostResult(name, "failed", reason=reason)
        finally:
            self._restore(report, log, name)
            for lock in locks:
                lock.release()
        done = report.summary()
        if done:
            result.reason = f"{result.reason}; {done}" if result.reason else done
        if report.left:
            result.status = "failed"
        result.details += report.lines
        return result

    def _lb_call(self, lb: Host, entries: list[Entry], want: str) -> dict[str, Any]:
        items = [{"set": e.set, "uri": e.uri, "want": want} for e in entries]
        first = entries[0]
        req = {"op": "lb_state", "url": first.url, "engine": first.engine, "items": items}
        runner = self.runner_for(lb)()
        try:
            return call(runner, req, timeout=60, entry=ENTRY)
        finally:
            runner.close()

    def _drain(self, entries: list[Entry], report: DrainReport, log: Callable[[str], None], name: str) -> bool:
        """Set the node inactive on each balancer; False when no balancer sends it calls now."""
        by_lb: dict[str, list[Entry]] = {}
        for e in entries:
            by_lb.setdefault(e.lb.name, []).append(e)
        for lb_name, mine in sorted(by_lb.items()):
            try:
                reply = self._lb_call(mine[0].lb, mine, "inactive")
            except RemoteError as exc:
                reply = {"ok": False, "error": str(exc)}
            if not reply.get("ok"):
                raise DrainAborted(
                    f"load balancer {lb_name} unreachable or refused ({reply.get('error')}): {name} not drained, "
                    "not restarted"
                )
            for item in reply["items"]:
                where = f"{lb_name} set {item['set']} {item['uri']}"
                if item.get("skipped"):
                    log(f"{name}: not drained on {where}: {item['skipped']}")
                    report.lines.append(f"drain: {where}: not drained ({item['skipped']})")
                    continue
                # Asked to go inactive: put back afterwards whatever the answer (setting active is harmless).
                report.drained += [e for e in mine if (e.set, e.uri) == (item["set"], item["uri"])]
                if item.get("error") or item.get("after") != "inactive":
                    why = item.get("error") or f"still {item.get('after')} after the MI call"
                    raise DrainAborted(f"{where}: could not set inactive ({why}): {name} not restarted")
                report.lines.append(f"drain: {where}: {item['before']} -> inactive")
                log(f"{name}: drained on {where} (was {item['before']})")
        return bool(report.drained)

    def _wait(
        self, rendered: HostRender, runner: Runner, report: DrainReport, log: Callable[[str], None], name: str
    ) -> None:
        cfg = health_config(rendered) or {}
        url = cfg.get("mi_url") or f"http://127.0.0.1:{rendered.host.vars['mi_http_port']}/mi"
        req = {"op": "wait_idle", "url": url, "timeout": self.opts.timeout, "poll": 0.25}
        t0 = time.monotonic()
        reply = call(runner, req, timeout=self.opts.timeout + 60, entry=ENTRY)
        report.waited = float(reply.get("waited", time.monotonic() - t0))
        if not reply.get("ok"):
            # OpenSIPS does not answer MI on the node: there is nothing to count, and no call to wait for
            # that this restart could still save.
            log(f"{name}: calls in setup not counted ({reply.get('error')}): restarting")
            report.lines.append(f"drain: calls in setup not counted: {reply.get('error')}")
            return
        counts = ", ".join(f"{k} {v}" for k, v in sorted(reply.get("counts", {}).items()))
        if not reply.get("idle"):
            raise DrainAborted(
                f"drain timed out after {report.waited:.1f}s with calls still in setup ({counts}): not restarted"
            )
        log(f"{name}: no call in setup after {report.waited:.1f}s ({counts}): restarting")
        report.lines.append(f"drain: idle after {report.waited:.1f}s ({counts})")

    def _restore(self, report: DrainReport, log: Callable[[str], None], name: str) -> None:
        """Put the node back on every balancer it was drained on, asking again when one does not answer."""
        by_lb: dict[str, list[Entry]] = {}
        for e in report.drained:
            by_lb.setdefault(e.lb.name, []).append(e)
        for lb_name, mine in sorted(by_lb.items()):
            want = "active"
            error = ""
            for attempt in range(RESTORE_TRIES):
                try:
                    reply = self._lb_call(mine[0].lb, mine, want)
                except RemoteError as exc:
                    reply = {"ok": False, "error": str(exc)}
                bad = [i for i in reply.get("items", []) if i.get("error") or i.get("after") != want]
                if reply.get("ok") and not bad:
                    for i in reply["items"]:
                        report.lines.append(f"drain: {lb_name} set {i['set']} {i['uri']}: inactive -> {want}")
                    log(f"{name}: put back {want} on {lb_name}")
                    report.back.append(want)
                    error = ""
                    break
                error = str(
                    reply.get("error") or "; ".join(f"{i['uri']}: {i.get('error') or i.get('after')}" for i in bad)
                )
                time.sleep(1 + attempt)
            if error:
                where = ", ".join(f"set {e.set} {e.uri}" for e in mine)
                what = f"{name} left INACTIVE on {lb_name} ({where}): {error}"
                report.left.append(what)
                log(f"{name}: {what}")
