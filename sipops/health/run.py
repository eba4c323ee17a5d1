"""Plain functions behind `sipops health` and `sipops cron` (sipops/cli/main.py only parses arguments)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from sipops.errors import ExitCode, InputError
from sipops.host.health.config import CHECKS, DEFAULT_CONFIG, ConfigError, load_config
from sipops.host.health.formats import FORMATS, render, write_textfile
from sipops.host.health.model import worst
from sipops.inventory import Host, load_inventory, resolve_inventory_path


def _runner(host: Host) -> Any:
    """The push engine's runner: one raw SSH channel per call, sudo when the SSH user is not root."""
    from sipops.remote.runner import SSHRunner

    return SSHRunner(host)


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
    runner: Callable[[Host], Any] = _runner,
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
        from sipops.health.remote import host_config, run_hosts

        if alert_cmd is not None:
            raise InputError("--alert-cmd runs on the host: use it with --local or `sipops cron install`",
                             field="--alert-cmd")  # fmt: skip
        inv = load_inventory(resolve_inventory_path(inventory))
        hosts = inv.select(targets or [])
        reports = run_hosts(
            hosts, lambda h: host_config(inv, h), runner, only=checks, state_name=state_name or "remote"
        )
        text = render(fmt, reports)
        if textfile is not None:
            write_textfile(textfile, render("prometheus", reports))
    if not quiet:
        out.write(text)
    return int(worst([r.status for r in reports]))


def _each(hosts: list[Host], fn: Callable[[Host], str]) -> list[tuple[str, bool, str]]:
    def one(host: Host) -> tuple[str, bool, str]:
        try:
            return host.name, True, fn(host)
        except Exception as exc:
            return host.name, False, f"{type(exc).__name__}: {exc}".splitlines()[0]

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts)))) as pool:
        return list(pool.map(one, hosts))


def cron(
    out: TextIO,
    action: str,
    *,
    targets: list[str],
    inventory: str | None,
    timer: bool = False,
    alert_cmd: str | None = None,
    connect: Callable[[Host], Any] = _runner,
) -> int:
    """Install or remove the every-minute checks on HOST…; exit 1 when some host failed."""
    from sipops.health import cron as cronmod

    _check_alert_cmd(alert_cmd)  # it goes to tuned/<host>.yaml as health_alert_cmd: the same rule now

    inv = load_inventory(resolve_inventory_path(inventory))
    hosts = inv.select(targets)

    def do(host: Host) -> str:
        # Through the push engine (one agent, its backups and retire): connect(host) opens a Runner.
        if action == "install":
            res = cronmod.install(lambda: connect(host), inv, host, timer=timer, alert_cmd=alert_cmd)
        else:
            res = cronmod.remove(lambda: connect(host), inv, host)
        if not res.ok:
            raise RuntimeError(res.error)
        return ", ".join(res.changed) if res.changed else "no change"

    failed = 0
    for name, ok, text in _each(hosts, do):
        out.write(f"{name}: {text if ok else 'FAILED: ' + text}\n")
        failed += not ok
    return int(ExitCode.FAILURE if failed else ExitCode.OK)
