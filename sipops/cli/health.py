"""`sipops health` and `sipops cron install|remove`: thin commands over sipops.health.run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from sipops.cli.options import (
    FORKS,
    AcceptNewOpt,
    ForksOpt,
    HostsArg,
    InventoryOpt,
    OptionalHostsArg,
    SerialOpt,
    bad_input,
)
from sipops.errors import InputError

cron_app = typer.Typer(
    help="Run the health checks every minute on hosts (cron or a systemd timer).", rich_markup_mode=None
)


def health(
    targets: OptionalHostsArg = None,
    inventory: InventoryOpt = None,
    local: Annotated[bool, typer.Option("--local", help="Check this machine (what cron on the host runs)")] = False,
    fmt: Annotated[str, typer.Option("--format", help="text | json | nagios | prometheus")] = "text",
    textfile: Annotated[Path | None, typer.Option("--textfile", help="Also write DIR/sipops.prom (atomically)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; exit code only")] = False,
    check: Annotated[list[str] | None, typer.Option("--check", help="Run only this check (repeat)")] = None,
    alert_cmd: Annotated[str | None, typer.Option("--alert-cmd", help="Run on status changes (--local)")] = None,
    state_name: Annotated[str | None, typer.Option("--state-name", help="State kept between runs")] = None,
    state_dir: Annotated[str | None, typer.Option("--state-dir", help="Where state is kept (--local)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="health.json (--local)")] = None,
    forks: ForksOpt = FORKS,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Health checks; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios)."""
    from sipops.health.run import health as run_health

    try:
        code = run_health(
            sys.stdout, targets=targets, inventory=inventory, local=local, fmt=fmt, textfile=textfile, quiet=quiet,
            state_name=state_name, alert_cmd=alert_cmd, checks=check, config=config, state_dir=state_dir,
            forks=forks, accept_new=accept_new_host_key,
        )  # fmt: skip
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


@cron_app.command("install")
def cron_install(
    targets: HostsArg,
    inventory: InventoryOpt = None,
    timer: Annotated[bool, typer.Option("--timer", help="A systemd timer instead of /etc/cron.d")] = False,
    alert_cmd: Annotated[str | None, typer.Option("--alert-cmd", help="Run when a check changes status")] = None,
    forks: ForksOpt = FORKS,
    serial: SerialOpt = None,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Check every minute, write the Prometheus textfile, alert only on status changes."""
    from sipops.health.run import cron

    try:
        code = cron(sys.stdout, "install", targets=targets, inventory=inventory, timer=timer, alert_cmd=alert_cmd,
                    forks=forks, serial=serial, accept_new=accept_new_host_key)  # fmt: skip
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


@cron_app.command("remove")
def cron_remove(
    targets: HostsArg,
    inventory: InventoryOpt = None,
    forks: ForksOpt = FORKS,
    serial: SerialOpt = None,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Remove the every-minute checks (cron entry, timer, agent); health.json and state stay."""
    from sipops.health.run import cron

    try:
        code = cron(sys.stdout, "remove", targets=targets, inventory=inventory, forks=forks, serial=serial,
                    accept_new=accept_new_host_key)  # fmt: skip
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(health)
    app.add_typer(cron_app, name="cron")
