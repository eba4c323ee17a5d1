"""The plain functions behind `sipops diff`, `push` and `rollback`, and the Target every host command uses.

Hosts run through the fleet executor (sipops.remote.executor): --forks, --serial, one summary table.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from sipops.errors import ExitCode, InputError
from sipops.inventory import Host, Inventory, load_inventory, resolve_inventory_path
from sipops.remote.apply import HostResult, PushOptions, push_host, rollback_host
from sipops.remote.diff import render_plan
from sipops.remote.drain import Drainer, DrainOptions
from sipops.remote.executor import FORKS, HostRun, Preconnect, printer, run_hosts, summarize
from sipops.remote.facts import gather
from sipops.remote.plan import plan_host
from sipops.remote.runner import LocalRunner, Runner, SSHRunner
from sipops.render import HostRender, environment, render_host

PENDING = 3  # `diff --exit-code`: changes are pending (1 stays "a host failed")
# push's own columns in the summary table
PUSH_COLUMNS = (
    ("FILES", lambda r: str(len(r.result.changed))),
    ("HANDLERS", lambda r: ",".join(r.result.handlers) or "-"),
)


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

    def preconnect(self, forks: int) -> Preconnect:
        """Every host's connection opened in the background (see executor.Preconnect)."""
        return Preconnect({h.name: self.runner(h) for h in self.hosts}, forks)


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


def render_tree(patterns: list[str], out: TextIO, *, inventory: str | None, dest: Path | None, list_only: bool) -> int:
    """`sipops render`: every file of each host under DEST/<host>/<path on the host>, or listed; no SSH."""
    from sipops.lint import check_rendered
    from sipops.render import write_tree

    inv = load_inventory(resolve_inventory_path(inventory))
    hosts = inv.select(patterns)
    if not list_only and dest is None:
        raise InputError("give an output directory with -o/--out, or --list", field="--out")
    if dest is not None and (dest.exists() or dest.is_symlink()) and not dest.is_dir():
        raise InputError(f"{dest} exists and is not a directory", field="--out")
    env = environment(inv)
    results = [render_host(inv, h, env) for h in hosts]
    check_rendered(results, dest)  # structural lint of each opensips.cfg; nothing is written if it fails
    for res in results:
        for warning in res.warnings:
            print(f"sipops: warning: {warning}", file=sys.stderr)
        if list_only or dest is None:
            out.write(f"{res.host.name}:\n")
            for f in res.files:
                extra = f"  validate: {f.validate.split()[0]}" if f.validate else ""
                out.write(f"  {f.mode} {f.owner}:{f.group} {f.dest}{extra}\n")
            continue
        try:
            written = write_tree(dest, res)
        except OSError as exc:
            raise InputError(f"cannot write under {dest}: {exc.strerror or exc}", field="--out") from None
        out.write(f"{res.host.name}: {len(written)} files in {dest / res.host.name}\n")
    return ExitCode.OK


def push(
    t: Target,
    out: TextIO,
    *,
    forks: int = FORKS,
    serial: int | None = None,
    opts: PushOptions,
    check: bool = False,
    drain: DrainOptions | None = None,
) -> int:
    if drain is not None and drain.enabled and not t.local:  # --- issue 19 hook: see sipops.remote.drain
        opts.drain = Drainer(t.inv, t.runner, drain)
    pre = t.preconnect(forks)
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
    emit = printer(out)

    def one(name: str) -> HostResult:
        why = _crowdsec_preflight(t, name, list(rendered))  # a LAPI that does not answer: nothing is touched
        if why:
            emit(f"{name}: FAILED: {why}")
            return HostResult(name, "failed", reason=why)
        res = push_host(rendered[name], pre.reach(name), inv=t.inv, opts=opts, check=check, log=emit)
        if res.status == "changed":
            ran = f"; ran {', '.join(res.handlers)}" if res.handlers else "; no handler"
            backup = f"; backup {res.stamp}" if res.stamp else " (what OpenSIPS ran differed from its files)"
            emit(f"{name}: changed {len(res.changed)} file(s){ran}{backup} ({res.seconds:.1f}s)")
        elif res.failed:
            emit(f"{name}: {res.status.upper()}: {res.reason}")
            for line in res.details:
                emit(f"{name}:   | {line}")
        return res

    runs = run_hosts(list(rendered), one, forks=forks, serial=serial, verdict=_verdict, emit=emit)
    code = summarize(runs, emit, PUSH_COLUMNS)
    # Fleet-wide bans: every pushed host's CrowdSec credentials, once its files (and the LAPI's) are live.
    joined = [r.host for r in runs if not r.failed]
    if not check and not _crowdsec_register(t, joined, emit):
        return ExitCode.FAILURE
    if not code and not any(r.status == "changed" for r in runs):
        emit("no changes on any host; no handler ran")
    return code


def _verdict(res: HostResult) -> tuple[str, str]:
    return res.status, res.reason


def diff(t: Target, out: TextIO, *, forks: int = FORKS, color: bool, exit_code: bool, root: str = "") -> int:
    pre = t.preconnect(forks)
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

    def one(name: str) -> HostResult:
        r = rendered[name]
        runner = pre.reach(name)()  # Unreachable: the executor's
        try:
            plan = plan_host(r, gather(runner, r, content=True, root=root))
        finally:
            runner.close()
        blocks[name] = render_plan(plan, color=color)
        if plan.problems:
            return HostResult(name, "failed", reason="; ".join(plan.problems))
        return HostResult(name, "would change" if plan.pending else "unchanged")

    runs = run_hosts(list(rendered), one, forks=forks, verdict=_verdict)
    emit = printer(out)
    for run in runs:
        for line in blocks.get(run.host) or [f"{run.host}: {run.status.upper()}: {run.reason}"]:
            emit(line)
    if summarize(runs, emit):
        return ExitCode.FAILURE
    if exit_code and any(r.status == "would change" for r in runs):
        return PENDING
    return ExitCode.OK


def rollback(
    t: Target,
    out: TextIO,
    *,
    to: str | None,
    list_only: bool,
    opts: PushOptions,
    forks: int = FORKS,
    serial: int | None = None,
) -> int:
    from sipops.remote.apply import list_backups
    from sipops.remote.executor import reach

    emit = printer(out)
    by_name = {h.name: h for h in t.hosts}
    if list_only:

        def listing(name: str) -> list[str]:
            runner = reach(t.runner(by_name[name]))()
            try:
                backups = list_backups(runner, opts.root)
            finally:
                runner.close()
            lines = []
            for b in backups:
                paths = ", ".join(f["path"] for f in b["files"])
                lines.append(f"{name}  {b['stamp']}  {b.get('time', '')}  {b.get('kind', '')}: {paths}")
            return lines

        listed = run_hosts(list(by_name), listing, forks=forks)
        for run in listed:
            lines = run.result if run.result is not None else [f"{run.host}: {run.status.upper()}: {run.reason}"]
            for line in lines:
                emit(line)
        return summarize(listed, emit)

    def one(name: str) -> HostResult:
        res = rollback_host(reach(t.runner(by_name[name])), name, to=to, opts=opts)
        emit(f"{name}: {res.status}: {res.reason}")
        for line in res.details:
            emit(f"{name}:   | {line}")
        return res

    runs: list[HostRun[HostResult]] = run_hosts(
        list(by_name), one, forks=forks, serial=serial, verdict=_verdict, emit=emit
    )
    return summarize(runs, emit, PUSH_COLUMNS)


def _crowdsec_preflight(t: Target, name: str, in_run: list[str]) -> str:
    from sipops.crowdsec_setup import preflight

    return preflight(t.inv, name, in_run, t.runner)


def _crowdsec_register(t: Target, names: list[str], emit: Callable[[str], None]) -> bool:
    from sipops.crowdsec_setup import register_and_report

    return register_and_report(t.inv, names, t.runner, emit)
