"""The `sipops` command line: the app, its one-line usage errors, and the command modules it registers.

Each module in sipops/cli/ holds thin Typer commands (options from sipops.cli.options) that hand off to
one plain function each; this module imports them to register, they never import it.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer vendors click
from typer.core import TyperGroup

from sipops import __version__
from sipops.cli import ban, calltest, conns, health, install, inventory, lab, push, service, tune, users
from sipops.errors import ExitCode, InputError

# rich_markup_mode=None on every Typer app: plain help and usage errors. Rich's panels cost 0.1 s of
# every --help and of every bad-argument exit (typer marks required arguments {LIKE...} in plain usage).


class _OneLineUsageErrors(TyperGroup):
    """Bad arguments are bad input like any other: one line naming the option, exit 2 (click prints the
    usage, a hint and the error on three lines). Subcommands and sub-apps parse inside invoke()."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise _one_line(exc) from None


class _OneLineError(UsageError):
    def show(self, file: Any = None) -> None:
        typer.echo(f"sipops: error: {self.format_message()}", err=True)


def _one_line(exc: UsageError) -> UsageError:
    if isinstance(exc, (NoArgsIsHelpError, _OneLineError)):
        return exc  # `sipops lab` alone prints the help, as it should
    return _OneLineError(" ".join(exc.format_message().split()), exc.ctx)


app = typer.Typer(
    name="sipops",
    help="Take an OpenSIPS fleet from bare Linux hosts to tuned, monitored, protected production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    cls=_OneLineUsageErrors,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sipops {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """sipops: OpenSIPS fleet provisioning, tuning, monitoring and protection."""


# The order of `sipops --help`.
push.register(app)  # render, diff, push, rollback
inventory.register(app)  # inventory show
install.register(app)  # install
service.register(app)  # service, logs
conns.register(app)  # conns
health.register(app)  # health, cron install|remove
ban.register(app)  # watch, ban, unban, bans
tune.register(app)  # tune-tcp
app.add_typer(lab.app, name="lab")
calltest.register(app)  # calltest
app.add_typer(users.users_app, name="users")


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except InputError as exc:  # a command that forgot to catch: still one line, exit 2
        typer.echo(f"sipops: error: {exc}", err=True)
        sys.exit(ExitCode.BAD_INPUT)
