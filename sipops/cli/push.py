"""`sipops render`, `diff`, `push`, `rollback`: thin commands over sipops.render and sipops.remote.fleet."""

from __future__ import annotations

import sys
from pathlib import Path
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
    OptionalHostsArg,
    RootOpt,
    SerialOpt,
    bad_input,
    finite,
)
from sipops.errors import InputError

KeepOpt = Annotated[int, typer.Option("--keep", min=1, max=1000, help="Backups kept per host")]


def render(
    targets: OptionalHostsArg = None,
    inventory: InventoryOpt = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output directory")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="List the files per host; write nothing")] = False,
) -> None:
    """Render every file of each host to OUT/<host>/<absolute path on the host>. No SSH."""
    from sipops.remote.fleet import render_tree

    try:
        code = render_tree(targets or ["all"], sys.stdout, inventory=inventory, dest=out, list_only=list_only)
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


def diff(
    targets: HostsArg,
    inventory: InventoryOpt = None,
    exit_code: Annotated[bool, typer.Option("--exit-code", help="Exit 3 when changes are pending")] = False,
    color: Annotated[bool | None, typer.Option("--color/--no-color", help="Colour [default: on a terminal]")] = None,
    forks: ForksOpt = FORKS,
    local: LocalOpt = False,
    root: RootOpt = "",
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Preview what push would change: unified diffs, secrets masked; nothing is changed."""
    from sipops.remote import fleet

    try:
        t = fleet.load_targets(inventory, targets, local=local, accept_new=accept_new_host_key)
        use_color = sys.stdout.isatty() if color is None else color
        code = fleet.diff(t, sys.stdout, forks=forks, color=use_color, exit_code=exit_code, root=root)
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


def push(
    targets: HostsArg,
    inventory: InventoryOpt = None,
    forks: ForksOpt = FORKS,
    serial: SerialOpt = None,
    check: Annotated[bool, typer.Option("--check", help="Say what would change; change nothing")] = False,
    lock_timeout: LockTimeoutOpt = LOCK_TIMEOUT,
    gate_timeout: GateTimeoutOpt = GATE_TIMEOUT,
    keep: KeepOpt = 10,
    local: LocalOpt = False,
    root: RootOpt = "",
    accept_new_host_key: AcceptNewOpt = False,
    drain: Annotated[
        bool,
        typer.Option(
            "--drain/--no-drain",
            help="Before restarting OpenSIPS on a load balancer's gateway, set it inactive there and wait for "
            "its calls in setup; put it back after",
        ),
    ] = True,
    drain_timeout: Annotated[
        float | None,
        typer.Option(
            "--drain-timeout",
            min=0,
            max=3600,
            callback=finite,
            # The default is sipops.host.drain.DRAIN_TIMEOUT: importing it here would cost every start 30 ms.
            help="Seconds to wait for a drained host's calls in setup; then it is put back, not restarted "
            "[default: 30]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Apply config changes: validated on the host, backed up, swapped atomically, health-gated, rolled back."""
    from sipops.remote import fleet
    from sipops.remote.apply import PushOptions
    from sipops.remote.drain import DrainOptions

    opts = PushOptions(lock_timeout=lock_timeout, gate_timeout=gate_timeout, keep=keep, root=root)
    try:
        t = fleet.load_targets(inventory, targets, local=local, accept_new=accept_new_host_key)
        draining = DrainOptions(enabled=drain) if drain_timeout is None else DrainOptions(drain, drain_timeout)
        code = fleet.push(t, sys.stdout, forks=forks, serial=serial, opts=opts, check=check, drain=draining)
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


def _stamp(value: str | None) -> str | None:
    """A backup stamp as push makes them (sipops.remote.apply.new_stamp): it becomes a path on the host."""
    import re

    if value is not None and not re.fullmatch(r"[0-9]{8}T[0-9]{6}(\.[0-9]{3}Z-[0-9a-f]{4})?", value):
        raise typer.BadParameter(f"'{value[:60]}' is not a backup stamp (see rollback --list)")
    return value


def rollback(
    targets: HostsArg,
    inventory: InventoryOpt = None,
    to: Annotated[str | None, typer.Option("--to", callback=_stamp, help="Backup stamp [default: the latest]")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="List the backups on each host")] = False,
    lock_timeout: LockTimeoutOpt = LOCK_TIMEOUT,
    gate_timeout: GateTimeoutOpt = GATE_TIMEOUT,
    forks: ForksOpt = FORKS,
    serial: SerialOpt = None,
    local: LocalOpt = False,
    root: RootOpt = "",
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Restore the files of a backup taken by push (the current ones are backed up first), then its handlers."""
    from sipops.remote import fleet
    from sipops.remote.apply import PushOptions

    opts = PushOptions(lock_timeout=lock_timeout, gate_timeout=gate_timeout, root=root)
    try:
        t = fleet.load_targets(inventory, targets, local=local, accept_new=accept_new_host_key)
        code = fleet.rollback(t, sys.stdout, to=to, list_only=list_only, opts=opts, forks=forks, serial=serial)
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    for command in (render, diff, push, rollback):
        app.command()(command)
