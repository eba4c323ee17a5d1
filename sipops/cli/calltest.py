"""`sipops calltest HOST... [--rate CPS --calls N]` (thin Typer command): softphones register and call
through each host's roles, or load mode; hands off to sipops.calltest.run / sipops.calltest.load."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from sipops.cli.options import FORKS, ForksOpt, HostsArg, InventoryOpt, JsonOpt, bad_input
from sipops.errors import InputError


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    @app.command()
    def calltest(
        targets: HostsArg,
        inventory: InventoryOpt = None,
        transport: Annotated[
            list[str] | None, typer.Option("--transport", "-t", help="udp or tcp (repeat) [default: both]")
        ] = None,
        phones: Annotated[int, typer.Option("--phones", help="Softphones that REGISTER on each registrar")] = 2,
        dtmf: Annotated[str, typer.Option("--dtmf", help="RFC 2833 digits sent after answer ('' none)")] = "1234",
        media: Annotated[bool, typer.Option("--media/--no-media", help="RTP both ways (G.711 pcap play)")] = True,
        account: Annotated[
            list[str] | None, typer.Option("--account", help="USER:PASSWORD of a digest account (repeat)")
        ] = None,
        accounts: Annotated[Path | None, typer.Option("--accounts", help="File of USER:PASSWORD lines")] = None,
        callee: Annotated[
            list[str] | None, typer.Option("--callee", help="sip:ext@host of a real test extension (repeat)")
        ] = None,
        from_netns: Annotated[
            list[str] | None,
            typer.Option(
                "--from-netns",
                help="Network namespace of the callers (then of the callees); "
                "default: the lab's attacker namespaces, else this machine",
            ),
        ] = None,
        rate: Annotated[float | None, typer.Option("--rate", help="Load mode: calls per second")] = None,
        calls: Annotated[int | None, typer.Option("--calls", help="Load mode: calls to place")] = None,
        concurrency: Annotated[int | None, typer.Option("--concurrency", help="Load mode: calls at once")] = None,
        duration: Annotated[float | None, typer.Option("--duration", help="Load mode: stop after T seconds")] = None,
        as_json: JsonOpt = False,
        keep: Annotated[Path | None, typer.Option("--keep", help="Keep scenarios and sipp's files in DIR")] = None,
        forks: ForksOpt = FORKS,
    ) -> None:
        """Softphones register and call through each host's roles: signalling, media both ways, DTMF, failover."""
        from sipops.calltest.run import Request, calltest

        req = Request(
            targets=targets,
            inventory=inventory,
            transports=transport or [],
            phones=phones,
            dtmf=dtmf,
            media=media,
            accounts=account or [],
            accounts_file=accounts,
            callees=callee or [],
            from_netns=from_netns or [],
            as_json=as_json,
            keep=keep,
            forks=forks,
        )
        # SIGTERM (a timeout around us, a service stop) unwinds like Ctrl-C: every sipp started is stopped.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            if rate is not None or calls is not None or concurrency is not None or duration is not None:
                from sipops.calltest.load import LoadRequest, load

                code = load(LoadRequest(req, rate, calls, concurrency, duration), sys.stdout)
            else:
                code = calltest(req, sys.stdout)
        except InputError as exc:
            bad_input(exc)
        except RuntimeError as exc:  # the test could not run (a callee that cannot register, nft failing)
            typer.echo(f"sipops: calltest: {exc}", err=True)
            raise typer.Exit(1) from None
        raise typer.Exit(code)
