"""`sipops users add|passwd|remove|list HOST... -u USER` (thin Typer commands over sipops.users.run).

Passwords come from a hidden prompt (asked twice), --password-file (its first line) or --password-stdin
(the first line of stdin); they are never an argument, never printed, and never leave this machine:
the hosts get HA1s. Everything is checked (inventory, hosts, user, password) before a host is touched.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sipops.cli.main import AcceptNewOpt, ForksOpt, InventoryOpt, bad_input
from sipops.errors import InputError

if TYPE_CHECKING:
    from sipops.remote.fleet import Target
    from sipops.users.model import Registrar

users_app: typer.Typer = typer.Typer(
    help="Digest accounts on registrars, stored as HA1 in the registrar's database (never the password).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

HostsArg = Annotated[list[str], typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)]
UserOpt = Annotated[str, typer.Option("-u", "--user", help="SIP user name", show_default=False)]
UsersOpt = Annotated[list[str], typer.Option("-u", "--user", help="SIP user name (repeat)", show_default=False)]
PasswordFileOpt = Annotated[
    Path | None, typer.Option("--password-file", help="Read the password from the first line of this file")
]
PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin")
]


def read_password(password_file: Path | None, password_stdin: bool) -> str:
    """The password from a file, stdin or a hidden prompt asked twice; errors never show it."""
    from sipops.users.model import check_password

    if password_file is not None and password_stdin:
        raise InputError("give --password-file or --password-stdin, not both", field="--password-stdin")
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise InputError(f"cannot read: {why}", file=password_file, field="--password-file") from None
        return check_password(_first_line(text), "--password-file")
    if password_stdin:
        return check_password(_first_line(sys.stdin.readline()), "--password-stdin")
    entered = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return check_password(str(entered), "password")


def _first_line(text: str) -> str:
    """The first line without its line break (spaces are the password's own)."""
    return text.split("\n", 1)[0].removesuffix("\r")


def _select(
    inventory: str | None, targets: list[str], accept_new: bool, *, writing: bool
) -> tuple[Target, list[Registrar]]:
    from sipops.remote.fleet import load_targets
    from sipops.users.model import registrars

    t = load_targets(inventory, targets, local=False, accept_new=accept_new)
    return t, registrars(t.inv, targets, writing=writing)


def _write(action: str, targets: list[str], inventory: str | None, user: str, password_file: Path | None,
           password_stdin: bool, forks: int, accept_new: bool) -> None:  # fmt: skip
    from sipops.users.model import account_request, check_user
    from sipops.users.run import report, run_all

    try:
        name = check_user(user)
        t, regs = _select(inventory, targets, accept_new, writing=True)
        password = read_password(password_file, password_stdin)
    except InputError as exc:
        bad_input(exc)
    outcomes = run_all(t, regs, lambda r: account_request(r, action, [(name, password)]), forks=forks)
    raise typer.Exit(report(outcomes, regs, sys.stdout))


@users_app.command("add")
def add(
    targets: HostsArg,
    user: UserOpt,
    inventory: InventoryOpt = None,
    password_file: PasswordFileOpt = None,
    password_stdin: PasswordStdinOpt = False,
    forks: ForksOpt = 10,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Create an account (a user already there with another password is refused: see passwd)."""
    _write("add", targets, inventory, user, password_file, password_stdin, forks, accept_new_host_key)


@users_app.command("passwd")
def passwd(
    targets: HostsArg,
    user: UserOpt,
    inventory: InventoryOpt = None,
    password_file: PasswordFileOpt = None,
    password_stdin: PasswordStdinOpt = False,
    forks: ForksOpt = 10,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Give an existing account a new password."""
    _write("passwd", targets, inventory, user, password_file, password_stdin, forks, accept_new_host_key)


@users_app.command("remove")
def remove(
    targets: HostsArg,
    users: UsersOpt,
    inventory: InventoryOpt = None,
    forks: ForksOpt = 10,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Remove accounts (users not there are reported, not an error); works with registrar_auth off too."""
    from sipops.users.model import check_user, remove_request
    from sipops.users.run import report, run_all

    try:
        names = [check_user(u) for u in users]
        t, regs = _select(inventory, targets, accept_new_host_key, writing=False)
    except InputError as exc:
        bad_input(exc)
    outcomes = run_all(t, regs, lambda r: remove_request(r, names), forks=forks)
    raise typer.Exit(report(outcomes, regs, sys.stdout))


@users_app.command("list")
def list_users(
    targets: HostsArg,
    inventory: InventoryOpt = None,
    forks: ForksOpt = 10,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """User and realm of each account (never a password or hash)."""
    from sipops.users.model import list_request
    from sipops.users.run import list_table, run_all

    try:
        t, regs = _select(inventory, targets, accept_new_host_key, writing=False)
    except InputError as exc:
        bad_input(exc)
    outcomes = run_all(t, regs, list_request, forks=forks)
    raise typer.Exit(list_table(outcomes, sys.stdout))
