"""`sipops tune-tcp [HOST…] [--max-connections N] [--check] [--local] [--allow-lower]`: a thin command over
sipops.tuning.command (hosts in parallel, current -> target per host, the push engine, the read-back)."""

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
    InventoryOpt,
    LockTimeoutOpt,
    OptionalHostsArg,
    SerialOpt,
    bad_input,
)
from sipops.errors import InputError


def tune_tcp_command(
    targets: OptionalHostsArg = None,
    inventory: InventoryOpt = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            help="Concurrent inbound TCP/TLS connections to hold [default: the host's max_connections, "
            "else tcp_max_connections]",
            show_default=False,
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Show current -> target and the files; change nothing")
    ] = False,
    calls: Annotated[
        int | None,
        typer.Option(
            "--calls",
            min=1,
            max=1_000_000,
            help="Media relay hosts (mediarelay role): concurrent calls to carry; checks the RTP port range "
            "and sizes rtpengine's open files",
            show_default=False,
        ),
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="This machine, without SSH")] = False,
    allow_lower: Annotated[
        bool, typer.Option("--allow-lower", help="Lower values that are already higher than needed")
    ] = False,
    forks: ForksOpt = FORKS,
    serial: SerialOpt = None,
    lock_timeout: LockTimeoutOpt = LOCK_TIMEOUT,
    gate_timeout: GateTimeoutOpt = GATE_TIMEOUT,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Compute TCP and file-descriptor limits for N connections, show current -> target, apply, read back."""
    from sipops.remote.apply import PushOptions
    from sipops.tuning.command import select, tune_tcp

    try:
        t = select(
            targets or [], inventory=inventory, local=local, accept_new=accept_new_host_key,
            max_connections=max_connections, calls=calls,
        )  # fmt: skip
    except InputError as exc:
        bad_input(exc)
    opts = PushOptions(lock_timeout=lock_timeout, gate_timeout=gate_timeout)
    code = tune_tcp(
        t, sys.stdout, max_connections=max_connections, allow_lower=allow_lower, check=check, opts=opts,
        forks=forks, serial=serial, calls=calls,
    )  # fmt: skip
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add tune-tcp to the sipops CLI."""
    app.command("tune-tcp")(tune_tcp_command)
