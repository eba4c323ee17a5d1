"""tune-tcp on one host: probe (one agent run), calculate, print current -> target, apply the tuned
files through the push engine, then read the live values back and say which did not take."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipops.inventory import Host, Inventory, save_overlay
from sipops.remote.apply import HostResult, PushOptions, push_host
from sipops.remote.plan import plan_files
from sipops.remote.runner import Runner
from sipops.render import HostRender, RenderedFile, render_host
from sipops.tuning.calc import (
    HOST,
    OK,
    SYSCTL,
    Target,
    TuneRequest,
    _better,
    _same,
    calculate,
    relay_sizing,
    template_vars,
)
from sipops.tuning.facts import TuneProbe, gather

# The templates whose files carry tune-tcp's values; everything else of the host is left alone.
TUNED_TEMPLATES = (
    "sysctl/sipops.conf.j2",
    "limits/opensips.conf.j2",
    "systemd/opensips-override.conf.j2",
    "systemd/opensips.service.j2",
    "opensips/opensips.cfg.j2",
    "rtpengine/rtpengine-override.conf.j2",  # a media relay's open files, with --calls
)
_NEEDS_OPENSIPS = ("systemd/opensips.service.j2", "opensips/opensips.cfg.j2")

# read-back verdicts
TOOK, NOT_TAKEN, CONTAINER_HOST, UNCHECKED = "ok", "did not take", "must be set on the container host", "not checked"


@dataclass
class ReadBack:
    key: str
    want: str
    live: str | None
    verdict: str
    note: str = ""


@dataclass
class TuneResult:
    host: str
    max_connections: int
    targets: list[Target] = field(default_factory=list)
    probe: TuneProbe | None = None
    push: HostResult | None = None
    files: list[str] = field(default_factory=list)  # would change (--check)
    handlers: list[str] = field(default_factory=list)  # would run (--check)
    readback: list[ReadBack] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def failed(self) -> bool:
        if self.error or (self.push is not None and self.push.failed):
            return True
        return any(r.verdict == NOT_TAKEN for r in self.readback)


def outbound_tcp(host: Host) -> bool:
    """The host opens TCP/TLS to gateways (so it needs source ports)."""
    return any(str(g.get("transport", "udp")) in ("tcp", "tls") for g in host.vars.get("gateways") or [])


def default_max_connections(host: Host) -> int:
    value = host.vars.get("max_connections")
    return int(value if value is not None else host.vars["tcp_max_connections"])


def tuned_host(host: Host, targets: list[Target]) -> Host:
    """The host with the targets as its template variables (sysctl map, somaxconn, open_files_limit, …)."""
    new = template_vars(targets, dict(host.vars.get("sysctl") or {}))
    return dataclasses.replace(host, vars={**host.vars, **new})


def save_tuned(inv: Inventory, host: Host, targets: list[Target], n: int) -> Path:
    """Keep the applied values beside the inventory, so a later `sipops push` renders them too."""
    return save_overlay(inv.dir, host.name, template_vars(targets, dict(host.vars.get("sysctl") or {})))


def tuned_files(rendered: HostRender, opensips_installed: bool) -> HostRender:
    """Only the files tune-tcp owns values in; without OpenSIPS on the host, none that need it."""
    handlers = dict(rendered.handlers)
    if not opensips_installed:
        handlers = {n: c for n, c in handlers.items() if "opensips" not in c}
    files: list[RenderedFile] = []
    for f in rendered.files:
        if f.src not in TUNED_TEMPLATES or (not opensips_installed and f.src in _NEEDS_OPENSIPS):
            continue
        files.append(dataclasses.replace(f, notify=tuple(n for n in f.notify if n in handlers)))
    return dataclasses.replace(rendered, files=files, handlers=handlers, retired=[])  # the context stays


def _installed(probe: TuneProbe) -> bool:
    push = probe.push
    return bool(push and push.opensips) or probe.unit.get("load") == "loaded"


def tune_host(
    inv: Inventory,
    host: Host,
    runner_factory: Callable[[], Runner],
    *,
    max_connections: int | None,
    allow_lower: bool,
    check: bool,
    opts: PushOptions,
    log: Callable[[str], None],
    calls: int | None = None,
) -> TuneResult:
    n = max_connections if max_connections is not None else default_max_connections(host)
    result = TuneResult(host.name, n)
    relay_calls: dict[str, Any] = {}
    if calls is not None and "mediarelay" in host.roles:
        # A media relay sized for --calls: the rendered rtpengine drop-in carries its open-files limit.
        relay_calls = {"relay_calls": calls}
        host = dataclasses.replace(host, vars={**host.vars, **relay_calls})
        lo, hi = int(host.vars["relay_port_min"]), int(host.vars["relay_port_max"])
        result.notes.append(relay_sizing(calls, lo, hi).line(lo, hi))
    req = TuneRequest(n, allow_lower=allow_lower, outbound_tcp=outbound_tcp(host))
    base = render_host(inv, host)
    try:
        runner = runner_factory()
        try:
            result.probe = probe = gather(runner, base, with_push=True, root=opts.root)
        finally:
            runner.close()
        result.targets = calculate(req, probe.facts)
        installed = _installed(probe)
        tuned = tuned_files(render_host(inv, tuned_host(host, result.targets)), installed)
        if not installed:
            result.notes.append(
                "OpenSIPS is not installed: opensips.cfg parameters and the restart wait for it (`sipops install`)"
            )
        if check:
            assert probe.push is not None
            plan = plan_files(host.name, tuned.files, tuned.handlers, probe.push)
            result.files = [c.dest for c in plan.changes]
            result.handlers = plan.handlers
            result.notes += plan.problems
            return result
        result.push = push_host(tuned, runner_factory, inv=inv, opts=opts, log=log)
        if result.push.failed:
            return result
        if not opts.root:  # tests that push under a fake root keep their inventory folder clean
            save_tuned(inv, host, result.targets, n)
            if relay_calls:
                save_overlay(inv.dir, host.name, relay_calls)
        runner = runner_factory()
        try:
            after = gather(runner, base, with_push=False, root=opts.root)
        finally:
            runner.close()
        result.readback = read_back(result.targets, after, installed)
    except Exception as exc:  # unreachable, auth, agent: this host fails alone
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def read_back(targets: list[Target], after: TuneProbe, installed: bool) -> list[ReadBack]:
    """Each target against the live value after apply; our own keys, never sysctl --system's exit code."""
    f = after.facts
    out: list[ReadBack] = []
    for t in targets:
        if t.action == HOST:
            out.append(ReadBack(t.key, t.target, f.sysctl.get(t.key) if t.kind == SYSCTL else None, CONTAINER_HOST))
            continue
        if t.kind == SYSCTL:
            live = f.sysctl.get(t.key)
            good = live is not None and (_same(live, t.target) or _better(_direction(t), live, t.target))
            verdict = TOOK if good else (CONTAINER_HOST if f.container else NOT_TAKEN)
            note = "rejected inside the container" if verdict == CONTAINER_HOST else ""
            out.append(ReadBack(t.key, t.target, live, verdict, note))
        elif t.key == "nofile":
            out.append(_equal(t, f.user_nofile))
        elif t.key == "LimitNOFILE":
            if after.unit.get("load") != "loaded":
                out.append(
                    ReadBack(t.key, t.target, None, UNCHECKED, f"{after.unit.get('name', 'the unit')} is not installed")
                )
            else:
                out.append(_equal(t, f.limit_nofile))
        elif not installed:
            out.append(ReadBack(t.key, t.target, None, UNCHECKED, "OpenSIPS is not installed"))
        else:
            out.append(_equal(t, f.opensips.get(t.key)))
    proc = after.process
    if proc is not None and installed:
        want = next((int(t.target) for t in targets if t.key == "open_files_limit"), 0)
        soft = proc.get("nofile_soft")
        ok = soft is not None and int(soft) >= want
        note = f"pid {proc['pid']} /proc limits" + ("" if ok else "; restart OpenSIPS for it to take")
        out.append(
            ReadBack(
                "Max open files (running)",
                str(want),
                None if soft is None else str(soft),
                TOOK if ok else NOT_TAKEN,
                note,
            )
        )
    return out


def _direction(t: Target) -> str:
    from sipops.tuning.calc import SPECS

    return next((s.better for s in SPECS if s.key == t.key), "exact")


def _equal(t: Target, live: Any) -> ReadBack:
    text = None if live is None else str(live)
    return ReadBack(t.key, t.target, text, TOOK if _same(text, t.target) else NOT_TAKEN)


def summary(result: TuneResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in result.readback:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    return counts


def changed_keys(targets: list[Target]) -> list[Target]:
    return [t for t in targets if t.action not in (OK,)]
