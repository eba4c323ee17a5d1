"""`sipops service ACTION HOST…` and `sipops logs HOST`: thin commands over sipops.provision.control."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from sipops.cli.options import FORKS, AcceptNewOpt, ForksOpt, HostArg, HostsArg, InventoryOpt, SerialOpt, bad_input
from sipops.errors import InputError


def service(
    action: Annotated[str, typer.Argument(metavar="ACTION", help="start | stop | restart | reload | status")],
    targets: HostsArg,
    inventory: InventoryOpt = None,
    forks: ForksOpt = FORKS,
    serial: SerialOpt = None,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Start, stop, restart, reload or show the OpenSIPS service on hosts (in parallel, or --serial N at a time)."""
    from sipops.provision.control import run_service

    try:
        code = run_service(
            action, targets, sys.stdout, inventory=inventory, forks=forks, serial=serial, accept_new=accept_new_host_key
        )
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


def logs(
    host: HostArg,
    inventory: InventoryOpt = None,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines (Ctrl-C stops)")] = False,
    lines: Annotated[int, typer.Option("-n", "--lines", min=1, max=1_000_000, help="Lines to show")] = 50,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Show the OpenSIPS log of HOST (its log_file, /var/log/opensips.log by default)."""
    from sipops.provision.control import run_logs

    try:
        code = run_logs(host, inventory=inventory, lines=lines, follow=follow, accept_new=accept_new_host_key)
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(service)
    app.command()(logs)
