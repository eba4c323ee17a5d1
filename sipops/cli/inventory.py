"""`sipops inventory show HOST`: the merged variables of a host and where each came from."""

from __future__ import annotations

import sys

import typer

from sipops.cli.options import HostArg, InventoryOpt, JsonOpt, bad_input
from sipops.errors import InputError

inventory_app = typer.Typer(help="Inspect the inventory.", no_args_is_help=True, rich_markup_mode=None)


@inventory_app.command("show")
def inventory_show(host: HostArg, inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
    """Print the merged variables of HOST and where each value came from."""
    from sipops.inventory_view import show_host

    try:
        code = show_host(host, sys.stdout, inventory=inventory, as_json=as_json)
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.add_typer(inventory_app, name="inventory")
