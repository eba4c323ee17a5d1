"""`sipops users add|passwd|remove|list HOST... -u USER` (thin Typer commands over sipops.users.run).

Passwords come from a hidden prompt (asked twice), --password-file (its first line) or --password-stdin
(the first line of stdin); they are never an argument, never printed, and never leave this machine:
the hosts get HA1s. Everything is checked (inventory, hosts, user, password) before a host is touched.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from sipops.cli.options import FORKS, AcceptNewOpt, ForksOpt, HostsArg, InventoryOpt, SerialOpt, bad_input
from sipops.errors import InputError

users_app: typer.Typer = typer.Typer(
    help="Digest accounts on registrars, stored as HA1 in the registrar's database (never the password).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

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


def _password(password_file: Path | None, password_stdin: bool) -> Callable[[], str]:
    return lambda: read_password(password_file, password_stdin)


@users_app.command("add")
def add(
    targets: HostsArg,
    user: UserOpt,
    inventory: InventoryOpt = None,
    password_file: PasswordFileOpt = None,
    password_stdin: PasswordStdinOpt = False,
    forks: ForksOpt = FORKS,
    serial: SerialOpt = None,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Create an account (a user already there with another password is refused: see passwd)."""
    from sipops.users.run import write

    try:
        code = write(
            "add", targets, sys.stdout, inventory=inventory, user=user,
            password=_password(password_file, password_stdin), forks=forks, serial=serial,
            accept_new=accept_new_host_key,
        )  # fmt: skip
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


@users_app.command("passwd")
def passwd(
    targets: HostsArg,
    user: UserOpt,
    inventory: InventoryOpt = None,
    password_file: PasswordFileOpt = None,
    password_stdin: PasswordStdinOpt = False,
    forks: ForksOpt = FORKS,
    serial: SerialOpt = None,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Give an existing account a new password."""
    from sipops.users.run import write

    try:
        code = write(
            "passwd", targets, sys.stdout, inventory=inventory, user=user,
            password=_password(password_file, password_stdin), forks=forks, serial=serial,
            accept_new=accept_new_host_key,
        )  # fmt: skip
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


@users_app.command("remove")
def remove(
    targets: HostsArg,
    users: UsersOpt,
    inventory: InventoryOpt = None,
    forks: ForksOpt = FORKS,
    serial: SerialOpt = None,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Remove accounts (users not there are reported, not an error); works with registrar_auth off too."""
    from sipops.users.run import remove as run_remove

    try:
        code = run_remove(targets, sys.stdout, inventory=inventory, users=users, forks=forks, serial=serial,
                          accept_new=accept_new_host_key)  # fmt: skip
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


@users_app.command("list")
def list_users(
    targets: HostsArg,
    inventory: InventoryOpt = None,
    forks: ForksOpt = FORKS,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """User and realm of each account (never a password or hash)."""
    from sipops.users.run import list_accounts

    try:
        code = list_accounts(targets, sys.stdout, inventory=inventory, forks=forks, accept_new=accept_new_host_key)
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)
