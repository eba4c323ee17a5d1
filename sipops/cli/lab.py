"""`sipops lab`: thin Typer commands over sipops.lab.lifecycle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from sipops.cli.options import bad_input
from sipops.errors import ExitCode, InputError
from sipops.lab.proc import LabError

if TYPE_CHECKING:
    from sipops.lab.state import LabState

# sipops.lab.lifecycle (and what it imports) is loaded by the lab commands alone: every other
# command (`sipops push`, run from cron and CI) starts faster without it.

app = typer.Typer(
    help="Throwaway Debian hosts on this machine (systemd-nspawn + netns + sshd) to rehearse on.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: see sipops.cli.main
)

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="Lab folder (state, keys, inventory). Default: $SIPOPS_LAB_DIR or ./lab."),
]


def _fail(exc: Exception) -> NoReturn:
    """Bad input: the one error line, exit 2; anything else (a boot that failed): exit 1."""
    if isinstance(exc, InputError):
        bad_input(exc)
    print(f"sipops lab: {exc}", file=sys.stderr)
    raise typer.Exit(int(ExitCode.FAILURE))


def _state(directory: Path) -> LabState:
    from sipops.lab.state import LabState

    state = LabState.load(directory)
    if state is None or not state.members:
        raise InputError(f"no lab in {directory}; start one with `sipops lab up`")
    return state


def _err(message: str) -> None:
    print(message, file=sys.stderr)


@app.command()
def up(
    hosts: Annotated[int, typer.Option("--hosts", help="Debian hosts to boot (h1, h2, ...).")] = 3,
    attackers: Annotated[
        int, typer.Option("--attackers", help="Bare network namespaces (a1, ...) for traffic generators.")
    ] = 0,
    release: Annotated[str, typer.Option("--release", help="Debian release of the hosts.")] = "bookworm",
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild the cached base filesystem.")] = False,
    opensips_prefix: Annotated[
        Path | None,
        typer.Option("--opensips-prefix", help="Copy this local OpenSIPS install into every host at the same path."),
    ] = None,
    opensips_source: Annotated[
        Path | None,
        typer.Option(
            "--opensips-source",
            help="An OpenSIPS release tarball (the official download): `sipops install` builds it on the hosts.",
        ),
    ] = None,
    directory: DirOption = None,
) -> None:
    """Boot the lab and write its inventory (the path is printed on stdout)."""
    from sipops.lab import lifecycle

    try:
        opts = lifecycle.UpOptions(
            hosts=hosts,
            attackers=attackers,
            release=release,
            rebuild=rebuild,
            opensips_prefix=opensips_prefix,
            opensips_source=opensips_source,
        )
        result = lifecycle.up(lifecycle.lab_dir(directory), opts, log=_err)
    except (InputError, LabError) as exc:
        _fail(exc)
    _err(f"lab up: {hosts} host(s), {attackers} attacker(s) in {result.seconds:.1f}s")
    print(result.inventory)


@app.command()
def down(directory: DirOption = None) -> None:
    """Stop the hosts and remove every namespace, link, bridge, route and layer the lab made (keeps the cache)."""
    from sipops.lab import lifecycle

    try:
        lifecycle.down(lifecycle.lab_dir(directory), log=_err)
    except (InputError, LabError) as exc:
        _fail(exc)


@app.command()
def destroy(directory: DirOption = None) -> None:
    """`down`, then remove the cached base filesystems."""
    from sipops.lab import lifecycle

    try:
        lifecycle.destroy(lifecycle.lab_dir(directory), log=_err)
    except (InputError, LabError) as exc:
        _fail(exc)


@app.command()
def status(directory: DirOption = None) -> None:
    """Hosts and attackers, their addresses, whether they run and whether SSH (strict host keys) works."""
    from sipops.lab import lifecycle

    path = lifecycle.lab_dir(directory)
    try:
        rows = lifecycle.status(path)
    except (InputError, LabError) as exc:
        _fail(exc)
    lifecycle.print_status(rows, path, sys.stdout)
    if any(not r.running or r.ssh is False for r in rows):
        raise typer.Exit(int(ExitCode.FAILURE))


@app.command()
def restart(
    name: Annotated[
        str, typer.Argument(metavar="HOST", help="Host to reboot (power off, boot again on the same layer).")
    ],
    directory: DirOption = None,
) -> None:
    """Reboot a lab host: what is enabled at boot comes back, what is not stays down."""
    from sipops.lab import lifecycle

    try:
        seconds = lifecycle.restart(lifecycle.lab_dir(directory), name)
    except (InputError, LabError) as exc:
        _fail(exc)
    _err(f"{name} rebooted; SSH answers after {seconds:.1f}s")


@app.command()
def shell(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Host (root shell over SSH) or attacker (shell in its namespace).")
    ],
    directory: DirOption = None,
) -> None:
    """Open an interactive root shell on a lab host or attacker."""
    from sipops.lab import lifecycle
    from sipops.lab.access import shell_argv

    try:
        state = _state(lifecycle.lab_dir(directory))
        argv = shell_argv(state, state.member(name))
    except (InputError, LabError) as exc:
        _fail(exc)
    raise typer.Exit(subprocess.call(argv))


@app.command(name="exec")
def exec_(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Attacker (runs in its namespace) or host (runs over SSH).")
    ],
    command: Annotated[list[str], typer.Argument(metavar="COMMAND...", help="Command and arguments, after `--`.")],
    directory: DirOption = None,
) -> None:
    """Run a command in an attacker's namespace or on a host; exits with the command's exit code."""
    from sipops.lab import lifecycle
    from sipops.lab.access import exec_argv

    try:
        state = _state(lifecycle.lab_dir(directory))
        argv = exec_argv(state, state.member(name), command)
    except (InputError, LabError) as exc:
        _fail(exc)
    raise typer.Exit(subprocess.call(argv))


if __name__ == "__main__":
    app()
