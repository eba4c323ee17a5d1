"""The plain function behind `sipops install HOST…` (cli.py stays thin): hosts in parallel, a summary."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

from sipops.errors import ExitCode
from sipops.inventory import Host
from sipops.provision import install as inst
from sipops.provision.progress import Board
from sipops.provision.runner import ShellRunner
from sipops.provision.steps import StepResult
from sipops.remote.apply import PushOptions, push_host
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


def install(t: Target, out: TextIO, *, forks: int, check: bool, skip: set[str], opts: PushOptions) -> int:
    # Long steps (a package download, a source build) show live on a terminal, as plain lines elsewhere.
    with Board(out, live=out.isatty()) as board:
        return _install(t, board, forks=forks, check=check, skip=skip, opts=opts)


def _install(t: Target, board: Board, *, forks: int, check: bool, skip: set[str], opts: PushOptions) -> int:
    emit = board.print

    skipped = set(skip)
    if "opensips" in skipped:
        skipped.update(_NEEDS_OPENSIPS)

    def one(host: Host) -> inst.InstallReport:
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

        try:
            runner = t.runner(host)()
        except Exception as exc:  # unreachable, host key: this host fails alone
            report = inst.InstallReport(host.name, [inst.PhaseReport("connect", error=f"{type(exc).__name__}: {exc}")])
            emit(inst.format_phase(host.name, report.phases[0]))
            return report
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
                ShellRunner(runner),
                check=check,
                push_files=push_files,
                skip=skipped,
                log=emit,
                watch=lambda phase: board.watch(host.name, phase),
            )
        finally:
            runner.close()

    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(t.hosts)))) as pool:
        reports = list(pool.map(one, t.hosts))
    width = max(len(r.host) for r in reports)
    emit("")
    for r in reports:
        state = (
            "FAILED"
            if not r.ok
            else ("would change" if check and r.changed else "changed" if r.changed else "no changes")
        )
        emit(f"{r.host:<{width}}  {state}{'  ' + r.reason if r.reason else ''}")
    # Fleet-wide bans: CrowdSec credentials of every installed host, once the LAPI host is installed too.
    from sipops.crowdsec_setup import register_and_report

    registered = check or register_and_report(t.inv, [r.host for r in reports if r.ok], t.runner, emit)
    return ExitCode.OK if all(r.ok for r in reports) and registered else ExitCode.FAILURE
