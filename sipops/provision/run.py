"""The plain function behind `sipops install HOST…` (cli.py stays thin): hosts in parallel, a summary."""

from __future__ import annotations

import dataclasses
from typing import TextIO

from sipops.errors import ExitCode, InputError
from sipops.provision import install as inst
from sipops.provision.progress import Board
from sipops.provision.steps import StepResult
from sipops.remote.apply import PushOptions, push_host
from sipops.remote.executor import FORKS, reach, run_hosts, summarize
from sipops.remote.fleet import Target
from sipops.render import HostRender, RenderedFile

# Phases a user may skip; skipping `opensips` (rehearsing on a host that cannot get OpenSIPS) also
# skips what needs its install: its user's directories, the database (schema files), the service, the check.
SKIPPABLE = ("dependencies", "opensips", "sipops agent", "database", "firewall", "logging", "service", "verify")
_NEEDS_OPENSIPS = ("directories", "database", "service", "verify")


def without_opensips(rendered: HostRender) -> HostRender:
    """The host's files minus those only OpenSIPS can validate or use, and no OpenSIPS handler."""
    cfg_dir = rendered.layout.cfg_dir
    handlers = {n: c for n, c in rendered.handlers.items() if "opensips" not in c and "_reload" not in c}
    files: list[RenderedFile] = []
    for f in rendered.files:
        if (f.validate and "opensips" in f.validate.split()[0]) or "/opensips/dbtext/" in f.dest:
            continue
        if f.dest.startswith(cfg_dir) or f.dest == "/etc/systemd/system/opensips.service":
            continue
        files.append(dataclasses.replace(f, notify=tuple(n for n in f.notify if n in handlers)))
    retired = [dataclasses.replace(r, notify=tuple(n for n in r.notify if n in handlers)) for r in rendered.retired]
    return dataclasses.replace(rendered, files=files, handlers=handlers, retired=retired)


def install_command(
    targets: list[str],
    out: TextIO,
    *,
    inventory: str | None,
    check: bool,
    skip: list[str],
    forks: int = FORKS,
    serial: int | None = None,
    lock_timeout: float,
    gate_timeout: float,
    local: bool = False,
    accept_new: bool = False,
) -> int:
    """`sipops install`: arguments, inventory and every template checked (InputError) before a host is touched."""
    from sipops.remote.fleet import load_targets, render_all
    from sipops.types import suggest

    for name in skip:
        if name not in SKIPPABLE:
            raise InputError(f"unknown phase '{name}'{suggest(name, list(SKIPPABLE))}", field="--skip")
    t = load_targets(inventory, targets, local=local, accept_new=accept_new)
    render_all(t)  # every template renders and lints before any host is touched
    opts = PushOptions(lock_timeout=lock_timeout, gate_timeout=gate_timeout)
    return install(t, out, forks=forks, serial=serial, check=check, skip=set(skip), opts=opts)


def install(
    t: Target, out: TextIO, *, forks: int = FORKS, serial: int | None = None, check: bool, skip: set[str],
    opts: PushOptions,
) -> int:  # fmt: skip
    # Long steps (a package download, a source build) show live on a terminal, as plain lines elsewhere.
    with Board(out, live=out.isatty()) as board:
        return _install(t, board, forks=forks, serial=serial, check=check, skip=skip, opts=opts)


def _install(
    t: Target, board: Board, *, forks: int, serial: int | None, check: bool, skip: set[str], opts: PushOptions
) -> int:
    emit = board.print

    skipped = set(skip)
    if "opensips" in skipped:
        skipped.update(_NEEDS_OPENSIPS)

    by_name = {h.name: h for h in t.hosts}

    def one(name: str) -> inst.InstallReport:
        def push_files(rendered: HostRender, dry: bool, opensips_pending: bool) -> inst.PhaseReport:
            later = ""
            if "opensips" in skipped or opensips_pending:
                # In --check before OpenSIPS exists, its own files cannot be validated yet: say so.
                full = len(rendered.files)
                rendered = without_opensips(rendered)
                if opensips_pending:
                    later = f"; {full - len(rendered.files)} OpenSIPS files checked once it is installed"
            lent = inst.lent(runner, t.runner(host))  # install's connection: one per host
            res = push_host(rendered, lent, inv=t.inv, opts=opts, check=dry, log=lambda _: None)
            results = [StepResult(d, "would" if dry else "changed") for d in res.changed]
            results += [StepResult(f"handler {n}", "changed") for n in res.handlers]
            if res.failed:
                detail = "\n".join(res.details)
                results.append(StepResult(res.reason or res.status, "failed", detail))
            note = f"{len(rendered.files)} files, validated on the host, swapped atomically{later}"
            return inst.PhaseReport("files", results, note)

        host = by_name[name]
        runner = reach(t.runner(host))()  # unreachable, host key: Unreachable, the executor's line and row
        from sipops.crowdsec_setup import preflight  # a LAPI that does not answer: nothing is touched

        why = "" if check else preflight(t.inv, host.name, [h.name for h in t.hosts], t.runner)
        if why:
            runner.close()
            report = inst.InstallReport(host.name, [inst.PhaseReport("crowdsec", error=why)])
            emit(inst.format_phase(host.name, report.phases[0]))
            return report
        try:
            return inst.install_host(
                t.inv,
                host,
                runner,
                check=check,
                push_files=push_files,
                skip=skipped,
                log=emit,
                watch=lambda phase: board.watch(host.name, phase),
            )
        finally:
            runner.close()

    def verdict(r: inst.InstallReport) -> tuple[str, str]:
        if not r.ok:
            return "failed", r.reason
        return ("would change" if check else "changed") if r.changed else "unchanged", ""

    runs = run_hosts(list(by_name), one, forks=forks, serial=serial, verdict=verdict, emit=emit)
    emit("")
    code = summarize(runs, emit)
    # Fleet-wide bans: CrowdSec credentials of every installed host, once the LAPI host is installed too.
    from sipops.crowdsec_setup import register_and_report

    registered = check or register_and_report(t.inv, [r.host for r in runs if not r.failed], t.runner, emit)
    return ExitCode.FAILURE if code or not registered else ExitCode.OK
