"""`sipops conns [HOST…]`: thin command over sipops.monitor.conns."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from sipops.cli.options import FORKS, AcceptNewOpt, ForksOpt, InventoryOpt, JsonOpt, bad_input
from sipops.errors import InputError


def conns(
    targets: Annotated[
        list[str] | None, typer.Argument(metavar="HOST...", help="Hosts, groups or 'all' [default: this machine]")
    ] = None,
    inventory: InventoryOpt = None,
    port: Annotated[list[str] | None, typer.Option("--port", "-p", help="Local port (repeat, or a,b)")] = None,
    state: Annotated[list[str] | None, typer.Option("--state", "-s", help="TCP state: estab, syn-recv, …")] = None,
    top: Annotated[str, typer.Option("--top", help="Top remote IPs per port")] = "5",
    as_json: JsonOpt = False,
    limits: Annotated[bool, typer.Option("--limits", help="OpenSIPS fds and tcp_max_connections usage")] = False,
    forks: ForksOpt = FORKS,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """TCP connections per port × state, top remote IPs and owning processes (local, or on HOST over SSH)."""
    from sipops.monitor.conns import conns as run_conns

    try:
        code = run_conns(
            targets, inventory=inventory, ports=port, states=state, top=top, as_json=as_json, show_limits=limits,
            out=sys.stdout, forks=forks, accept_new=accept_new_host_key,
        )  # fmt: skip
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(conns)
