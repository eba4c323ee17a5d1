"""Plain functions behind `sipops health` and `sipops cron` (sipops/cli/main.py only parses arguments)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from sipops.errors import InputError
from sipops.host.health.config import CHECKS, DEFAULT_CONFIG, ConfigError, HealthConfig, load_config
from sipops.host.health.formats import FORMATS, render, write_textfile
from sipops.host.health.model import CheckResult, Report, Status, worst
from sipops.inventory import Host, load_inventory, resolve_inventory_path
from sipops.remote.executor import FORKS, HostRun, printer, reach, run_hosts, summarize

if TYPE_CHECKING:
    from sipops.remote.runner import Runner


def check_options(fmt: str, checks: list[str] | None) -> None:
    if fmt not in FORMATS:
        raise InputError(f"unknown format '{fmt}'; one of {', '.join(FORMATS)}", field="--format")
    for name in checks or []:
        if name not in CHECKS:
            raise InputError(f"unknown check '{name}'; one of {', '.join(CHECKS)}", field="--check")


def _check_alert_cmd(alert_cmd: str | None) -> None:
    from sipops.kinds import check_command
    from sipops.types import BadValue

    if alert_cmd is not None:
        try:
            check_command(alert_cmd)
        except BadValue as exc:
            raise InputError(exc.message, field="--alert-cmd") from None


def health(
    out: TextIO,
    *,
    targets: list[str] | None,
    inventory: str | None,
    local: bool,
    fmt: str = "text",
    textfile: Path | None = None,
    quiet: bool = False,
    state_name: str | None = None,
    alert_cmd: str | None = None,
    checks: list[str] | None = None,
    config: Path | None = None,
    state_dir: str | None = None,
    forks: int = FORKS,
    accept_new: bool = False,
    runner: Callable[[Host], Runner] | None = None,
) -> int:
    """Run the checks here (--local) or on HOST… over SSH; returns the Nagios exit code of the worst status."""
    check_options(fmt, checks)
    _check_alert_cmd(alert_cmd)
    if state_dir is not None and not state_dir.startswith("/"):
        raise InputError(f"'{state_dir}' is not an absolute path", field="--state-dir")
    if local == bool(targets):
        raise InputError("give --local or HOST…, not both and not neither", field="HOST")
    if local:
        from sipops.host.health.main import run_local

        try:
            cfg = load_config(config or DEFAULT_CONFIG)
        except ConfigError as exc:
            raise InputError(str(exc), field="--config") from None
        cfg = replace(cfg, state_dir=state_dir) if state_dir else cfg
        report, text = run_local(
            cfg, fmt=fmt, textfile=textfile, state_name=state_name or "default", alert_cmd=alert_cmd, only=checks
        )
        reports = [report]
    else:
        from sipops.health.remote import host_config
        from sipops.remote.runner import SSHRunner

        if alert_cmd is not None:
            raise InputError("--alert-cmd runs on the host: use it with --local or `sipops cron install`",
                             field="--alert-cmd")  # fmt: skip
        inv = load_inventory(resolve_inventory_path(inventory))
        hosts = inv.select(targets or [])
        runs = check_hosts(
            hosts, lambda h: host_config(inv, h), runner or (lambda h: SSHRunner(h, accept_new_host_key=accept_new)),
            only=checks, state_name=state_name or "remote", forks=forks,
        )  # fmt: skip
        reports = [run.result for run in runs if run.result is not None]
        text = render(fmt, reports)
        if textfile is not None:
            write_textfile(textfile, render("prometheus", reports))
        if not quiet:  # the summary table: after the text, else on stderr (stdout stays machine-readable)
            out.write(text)
            summarize(runs, printer(out if fmt == "text" else sys.stderr))
        return int(worst([r.status for r in reports]))
    if not quiet:
        out.write(text)
    return int(worst([r.status for r in reports]))


def _unknown(host: str, message: str) -> Report:
    return Report(host, [CheckResult("ssh", Status.UNKNOWN, message)])


def check_hosts(
    hosts: list[Host],
    config_for: Callable[[Host], HealthConfig],
    connect: Callable[[Host], Runner],
    *,
    only: list[str] | None = None,
    state_name: str = "remote",
    forks: int = FORKS,
) -> list[HostRun[Report]]:
    """The checks on every host through the fleet executor; a host not reached is UNKNOWN with the reason."""
    from sipops.health.remote import run_remote

    by_name = {h.name: h for h in hosts}

    def one(name: str) -> Report:
        host = by_name[name]
        try:
            cfg = config_for(host)
        except ConfigError as exc:
            return _unknown(name, str(exc))
        runner = reach(lambda: connect(host))()
        try:
            return run_remote(runner, cfg, state_name=state_name, only=only)
        finally:
            runner.close()

    def verdict(report: Report) -> tuple[str, str]:
        bad = [f"{c.name}: {c.message}" for c in report.checks if c.status == report.status]
        return report.status.name.lower(), "" if report.status == Status.OK else (bad[0] if bad else "")

    runs = run_hosts(list(by_name), one, forks=forks, verdict=verdict)
    for run in runs:  # unreachable: the report says so (UNKNOWN, as monitoring expects)
        if run.result is None:
            run.result = _unknown(run.host, run.reason)
    return runs


def cron(
    out: TextIO,
    action: str,
    *,
    targets: list[str],
    inventory: str | None,
    timer: bool = False,
    alert_cmd: str | None = None,
    forks: int = FORKS,
    serial: int | None = None,
    accept_new: bool = False,
) -> int:
    """Install or remove the every-minute checks on HOST… (through the push engine); exit 1 when a host failed."""
    from sipops.health import cron as cronmod
    from sipops.remote.runner import SSHRunner

    _check_alert_cmd(alert_cmd)  # it goes to tuned/<host>.yaml as health_alert_cmd: the same rule now

    inv = load_inventory(resolve_inventory_path(inventory))
    hosts = {h.name: h for h in inv.select(targets)}
    emit = printer(out)

    def do(name: str) -> cronmod.CronResult:
        host = hosts[name]
        make = reach(lambda: SSHRunner(host, accept_new_host_key=accept_new))
        if action == "install":
            res = cronmod.install(make, inv, host, timer=timer, alert_cmd=alert_cmd)
        else:
            res = cronmod.remove(make, inv, host)
        emit(f"{name}: {', '.join(res.changed) or 'no change'}" if res.ok else f"{name}: FAILED: {res.error}")
        return res

    def verdict(res: cronmod.CronResult) -> tuple[str, str]:
        if not res.ok:
            return "failed", res.error
        return ("changed" if res.changed else "unchanged"), ""

    return summarize(run_hosts(list(hosts), do, forks=forks, serial=serial, verdict=verdict, emit=emit), emit)
