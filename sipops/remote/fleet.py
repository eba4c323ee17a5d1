"""Hosts in parallel (--forks) or in rolling batches (--serial), progress lines and a summary table.

Also the plain functions behind `sipops diff`, `push` and `rollback` (cli.py stays thin).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TextIO

from sipops.errors import ExitCode, InputError
from sipops.inventory import Host, Inventory, load_inventory, resolve_inventory_path
from sipops.remote.apply import HostResult, PushOptions, push_host, rollback_host
from sipops.remote.diff import render_plan
from sipops.remote.drain import Drainer, DrainOptions
from sipops.remote.facts import gather
from sipops.remote.plan import plan_host
from sipops.remote.runner import LocalRunner, RemoteError, Runner, SSHRunner
from sipops.render import HostRender, environment, render_host

PENDING = 3  # `diff --exit-code`: changes are pending (1 stays "a host failed")


@dataclass
class Target:
    """What the commands need: the inventory and how to reach each host."""

    inv: Inventory
    hosts: list[Host]
    local: bool = False
    accept_new_host_key: bool = False

    def runner(self, host: Host) -> Callable[[], Runner]:
        if self.local:
            return lambda: LocalRunner(host.name)
        return lambda: SSHRunner(host, accept_new_host_key=self.accept_new_host_key)


class Preconnect:
    """Connections opened in the background while the controller renders (hidden behind the CPU work).

    Each host's first runner is the pre-opened one; later calls (a reconnect) open a fresh one.
    """

    def __init__(self, t: Target, forks: int) -> None:
        self.t = t
        self.pool = ThreadPoolExecutor(max_workers=max(1, forks))
        self.futures: dict[str, Future[Runner]] = {h.name: self.pool.submit(self._open, h) for h in t.hosts}
        self.by_name = {h.name: h for h in t.hosts}

    def _open(self, host: Host) -> Runner:
        runner = self.t.runner(host)()
        if isinstance(runner, SSHRunner):
            runner.conn.open()
        return runner

    def factory(self, name: str) -> Callable[[], Runner]:
        def make() -> Runner:
            fut = self.futures.pop(name, None)
            return fut.result() if fut is not None else self.t.runner(self.by_name[name])()

        return make

    def close(self) -> None:
        """Close what nobody used (bad input after connecting, or a host that was never started)."""
        for fut in self.futures.values():
            with contextlib.suppress(Exception):
                fut.result().close()
        self.pool.shutdown(wait=False)


def load_targets(inventory: str | None, patterns: list[str], *, local: bool, accept_new: bool) -> Target:
    """Inventory and selection; InputError (exit 2) before any host is touched."""
    inv = load_inventory(resolve_inventory_path(inventory))
    hosts = inv.select(patterns)
    if local and len(hosts) != 1:
        raise InputError("--local applies one host's files to this machine: name exactly one host", field="HOST")
    return Target(inv, hosts, local, accept_new)


def render_all(t: Target) -> list[HostRender]:
    from sipops.lint import check_rendered

    env = environment(t.inv)
    rendered = [render_host(t.inv, h, env) for h in t.hosts]
    check_rendered(rendered, None)
    for r in rendered:
        for w in r.warnings:
            print(f"sipops: warning: {w}", file=sys.stderr)
    return rendered


def run_parallel(
    names: list[str], work: Callable[[str], HostResult], *, forks: int, serial: int | None
) -> list[HostResult]:
    """Every host once; with serial=N, N at a time, stopping after a batch with a failure."""
    batches = [names[i : i + serial] for i in range(0, len(names), serial)] if serial else [names]
    results: dict[str, HostResult] = {}
    for i, batch in enumerate(batches):
        with ThreadPoolExecutor(max_workers=max(1, min(forks, len(batch)))) as pool:
            for name, res in zip(batch, pool.map(work, batch), strict=True):
                results[name] = res
        if serial and any(results[n].failed for n in batch):
            for rest in batches[i + 1 :]:
                for n in rest:
                    results[n] = HostResult(n, "skipped", reason="not started: --serial stops at the first failure")
            break
    return [results[n] for n in names]


def summary_table(results: list[HostResult]) -> list[str]:
    rows = [("HOST", "STATUS", "FILES", "HANDLERS", "TIME", "REASON")]
    for r in results:
        handlers = ",".join(r.handlers) or "-"
        rows.append((r.host, r.status, str(len(r.changed)), handlers, f"{r.seconds:.1f}s", r.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return ["  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5] for row in rows]


def _printer(out: TextIO) -> Callable[[str], None]:
    lock = threading.Lock()

    def emit(text: str) -> None:
        with lock:
            out.write(text.rstrip("\n") + "\n")
            out.flush()

    return emit


def push(
    t: Target,
    out: TextIO,
    *,
    forks: int,
    serial: int | None,
    opts: PushOptions,
    check: bool = False,
    drain: DrainOptions | None = None,
) -> int:
    if drain is not None and drain.enabled and not t.local:  # --- issue 19 hook: see sipops.remote.drain
        opts.drain = Drainer(t.inv, t.runner, drain)
    pre = Preconnect(t, forks)
    try:
        rendered = {r.host.name: r for r in render_all(t)}
        return _push(t, pre, rendered, out, forks=forks, serial=serial, opts=opts, check=check)
    finally:
        pre.close()


def _push(
    t: Target,
    pre: Preconnect,
    rendered: dict[str, HostRender],
    out: TextIO,
    *,
    forks: int,
    serial: int | None,
    opts: PushOptions,
    check: bool,
) -> int:
    emit = _printer(out)

    def one(name: str) -> HostResult:
        why = _crowdsec_preflight(t, name, list(rendered))  # a LAPI that does not answer: nothing is touched
        if why:
            emit(f"{name}: FAILED: {why}")
            return HostResult(name, "failed", reason=why)
        res = push_host(rendered[name], pre.factory(name), inv=t.inv, opts=opts, check=check, log=emit)
        if res.status == "changed":
            ran = f"; ran {', '.join(res.handlers)}" if res.handlers else "; no handler"
            backup = f"; backup {res.stamp}" if res.stamp else " (what OpenSIPS ran differed from its files)"
            emit(f"{name}: changed {len(res.changed)} file(s){ran}{backup} ({res.seconds:.1f}s)")
        elif res.failed or res.status == "skipped":
            emit(f"{name}: {res.status.upper()}: {res.reason}")
            for line in res.details:
                emit(f"{name}:   | {line}")
        return res

    results = run_parallel(list(rendered), one, forks=forks, serial=serial)
    for line in summary_table(results):
        emit(line)
    # Fleet-wide bans: every pushed host's CrowdSec credentials, once its files (and the LAPI's) are live.
    joined = [r.host for r in results if not r.failed and r.status != "skipped"]
    if not check and not _crowdsec_register(t, joined, emit):
        return ExitCode.FAILURE
    changed = sum(r.status == "changed" for r in results)
    failed = sum(r.failed or r.status == "skipped" for r in results)
    if not changed and not failed:
        emit("no changes on any host; no handler ran")
    return ExitCode.FAILURE if failed else ExitCode.OK


def diff(t: Target, out: TextIO, *, forks: int, color: bool, exit_code: bool, root: str = "") -> int:
    pre = Preconnect(t, forks)
    try:
        rendered = {r.host.name: r for r in render_all(t)}
        return _diff(pre, rendered, out, forks=forks, color=color, exit_code=exit_code, root=root)
    finally:
        pre.close()


def _diff(
    pre: Preconnect,
    rendered: dict[str, HostRender],
    out: TextIO,
    *,
    forks: int,
    color: bool,
    exit_code: bool,
    root: str,
) -> int:
    blocks: dict[str, list[str]] = {}
    status: dict[str, str] = {}

    def one(name: str) -> HostResult:
        r = rendered[name]
        runner: Runner | None = None
        try:
            runner = pre.factory(name)()
            plan = plan_host(r, gather(runner, r, content=True, root=root))
        except (RemoteError, Exception) as exc:
            reason = str(exc) if isinstance(exc, RemoteError) else f"{type(exc).__name__}: {exc}"
            blocks[name] = [f"{name}: FAILED: {reason}"]
            return HostResult(name, "failed", reason=reason)
        finally:
            if runner is not None:
                runner.close()
        blocks[name] = render_plan(plan, color=color)
        status[name] = "pending" if plan.pending else "clean"
        return HostResult(name, "failed" if plan.problems else "ok", reason="; ".join(plan.problems))

    results = run_parallel(list(rendered), one, forks=forks, serial=None)
    for name in rendered:
        for line in blocks[name]:
            out.write(line + "\n")
    if any(r.status == "failed" for r in results):
        return ExitCode.FAILURE
    if exit_code and any(s == "pending" for s in status.values()):
        return PENDING
    return ExitCode.OK


def rollback(t: Target, out: TextIO, *, to: str | None, list_only: bool, opts: PushOptions, forks: int = 10) -> int:
    from sipops.remote.apply import list_backups

    emit = _printer(out)
    if list_only:
        code = ExitCode.OK
        for h in t.hosts:
            runner = None
            try:
                runner = t.runner(h)()
                for b in list_backups(runner, opts.root):
                    paths = ", ".join(f["path"] for f in b["files"])
                    emit(f"{h.name}  {b['stamp']}  {b.get('time', '')}  {b.get('kind', '')}: {paths}")
            except Exception as exc:
                emit(f"{h.name}: FAILED: {exc}")
                code = ExitCode.FAILURE
            finally:
                if runner is not None:
                    runner.close()
        return code
    by_name = {h.name: h for h in t.hosts}

    def one(name: str) -> HostResult:
        res = rollback_host(t.runner(by_name[name]), name, to=to, opts=opts)
        emit(f"{name}: {res.status}: {res.reason}")
        for line in res.details:
            emit(f"{name}:   | {line}")
        return res

    results = run_parallel(list(by_name), one, forks=forks, serial=None)
    for line in summary_table(results):
        emit(line)
    return ExitCode.FAILURE if any(r.failed for r in results) else ExitCode.OK


def _crowdsec_preflight(t: Target, name: str, in_run: list[str]) -> str:
    from sipops.crowdsec_setup import preflight

    return preflight(t.inv, name, in_run, t.runner)


def _crowdsec_register(t: Target, names: list[str], emit: Callable[[str], None]) -> bool:
    from sipops.crowdsec_setup import register_and_report

    return register_and_report(t.inv, names, t.runner, emit)
