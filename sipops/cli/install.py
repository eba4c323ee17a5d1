"""`sipops install HOST…`: thin command over sipops.provision.run."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from sipops.cli.options import (
    FORKS,
    GATE_TIMEOUT,
    LOCK_TIMEOUT,
    AcceptNewOpt,
    ForksOpt,
    GateTimeoutOpt,
    HostsArg,
    InventoryOpt,
    LocalOpt,
    LockTimeoutOpt,
    SerialOpt,
    bad_input,
)
from sipops.errors import InputError


def install(
    targets: HostsArg,
    inventory: InventoryOpt = None,
    check: Annotated[bool, typer.Option("--check", help="Say what each phase would do; change nothing")] = False,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            "--skip",
            help="Skip a phase (repeatable): dependencies, opensips, sipops agent, database, "
            "firewall, logging, service, verify. Skipping opensips also skips database, service, verify.",
        ),
    ] = None,
    forks: ForksOpt = FORKS,
    serial: SerialOpt = None,
    lock_timeout: LockTimeoutOpt = LOCK_TIMEOUT,
    gate_timeout: GateTimeoutOpt = GATE_TIMEOUT,
    local: LocalOpt = False,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Take hosts from bare Linux to a running, tuned, logging, firewalled OpenSIPS; a second run changes nothing."""
    from sipops.provision.run import install_command

    try:
        code = install_command(
            targets, sys.stdout, inventory=inventory, check=check, skip=skip or [], forks=forks, serial=serial,
            lock_timeout=lock_timeout, gate_timeout=gate_timeout, local=local, accept_new=accept_new_host_key,
        )  # fmt: skip
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(install)
