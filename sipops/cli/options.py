"""Options every command shares, declared once, and the one bad-input exit.

Command modules import these; this module imports nothing of theirs (no cycles). Defaults that are
numbers live with what uses them (FORKS with the fleet executor) and are read from there.
"""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

from sipops.errors import ExitCode, InputError
from sipops.remote.executor import FORKS as FORKS  # the default of every --forks
from sipops.remote.executor import MAX_FORKS

HostsArg = Annotated[list[str], typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)]
OptionalHostsArg = Annotated[
    list[str] | None, typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)
]
HostArg = Annotated[str, typer.Argument(metavar="HOST", help="Host name")]
InventoryOpt = Annotated[
    str | None,
    typer.Option("-i", "--inventory", help="Inventory file [default: $SIPOPS_INVENTORY, else ./inventory.yaml]"),
]
ForksOpt = Annotated[int, typer.Option("--forks", min=1, max=MAX_FORKS, help="Hosts worked on in parallel")]
SerialOpt = Annotated[
    int | None, typer.Option("--serial", min=1, max=10_000, help="N hosts at a time; stop after a batch that failed")
]
AcceptNewOpt = Annotated[
    bool, typer.Option("--accept-new-host-key", help="Record unknown host keys (changed keys are still refused)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output")]
LocalOpt = Annotated[bool, typer.Option("--local", help="This machine, without SSH (name the one host to render)")]
RootOpt = Annotated[str, typer.Option("--root", hidden=True, help="Tests: host paths live under this directory")]


def finite(value: float | None) -> float | None:
    """FloatRange lets nan through (every comparison with it is false): refuse it, and inf, by name."""
    if value is not None and (value != value or value in (float("inf"), float("-inf"))):
        raise typer.BadParameter(f"{value} is not a number of seconds")
    return value


LockTimeoutOpt = Annotated[
    float,
    typer.Option("--lock-timeout", min=0, max=3600, callback=finite, help="Seconds to wait for a running push"),
]
GateTimeoutOpt = Annotated[
    float,
    typer.Option("--gate-timeout", min=1, max=3600, callback=finite, help="Seconds services get to pass the gate"),
]
LOCK_TIMEOUT: float = 60  # seconds; shown as 60 in --help
GATE_TIMEOUT: float = 20


def bad_input(exc: InputError | str, field: str | None = None) -> NoReturn:
    """`sipops: error: ...` on stderr, exit 2: bad input, nothing was changed."""
    if isinstance(exc, str):
        exc = InputError(exc, field=field)
    typer.echo(f"sipops: error: {exc}", err=True)
    raise typer.Exit(ExitCode.BAD_INPUT)
