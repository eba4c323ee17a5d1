"""The `sipops` command line: thin Typer commands that hand off to plain functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer vendors click
from typer.core import TyperGroup

from sipops import __version__
from sipops.errors import ExitCode, InputError
from sipops.host.drain import DRAIN_TIMEOUT

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
inventory_app = typer.Typer(help="Inspect the inventory.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(inventory_app, name="inventory")

InventoryOpt = Annotated[
    str | None,
    typer.Option("-i", "--inventory", help="Inventory file [default: $SIPOPS_INVENTORY, else ./inventory.yaml]"),
]


def bad_input(exc: InputError) -> NoReturn:
    """One line on stderr, exit code 2: nothing was changed."""
    typer.echo(f"sipops: error: {exc}", err=True)
    raise typer.Exit(ExitCode.BAD_INPUT)


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


@app.command()
def render(
    targets: Annotated[
        list[str] | None, typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)
    ] = None,
    inventory: InventoryOpt = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output directory")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="List the files per host; write nothing")] = False,
) -> None:
    """Render every file of each host to OUT/<host>/<absolute path on the host>. No SSH."""
    from sipops.inventory import load_inventory, resolve_inventory_path
    from sipops.lint import check_rendered
    from sipops.render import environment, render_host, write_tree

    try:
        inv = load_inventory(resolve_inventory_path(inventory))
        hosts = inv.select(targets or ["all"])
        if not list_only and out is None:
            raise InputError("give an output directory with -o/--out, or --list", field="--out")
        if out is not None and (out.exists() or out.is_symlink()) and not out.is_dir():
            raise InputError(f"{out} exists and is not a directory", field="--out")
        env = environment(inv)
        results = [render_host(inv, h, env) for h in hosts]
        check_rendered(results, out)  # structural lint of each opensips.cfg; nothing is written if it fails
    except InputError as exc:
        bad_input(exc)
    for res in results:
        for warning in res.warnings:
            typer.echo(f"sipops: warning: {warning}", err=True)
        if list_only:
            typer.echo(f"{res.host.name}:")
            for f in res.files:
                extra = f"  validate: {f.validate.split()[0]}" if f.validate else ""
                typer.echo(f"  {f.mode} {f.owner}:{f.group} {f.dest}{extra}")
        else:
            assert out is not None
            try:
                written = write_tree(out, res)
            except OSError as exc:
                bad_input(InputError(f"cannot write under {out}: {exc.strerror or exc}", field="--out"))
            typer.echo(f"{res.host.name}: {len(written)} files in {out / res.host.name}")


@inventory_app.command("show")
def inventory_show(
    host: Annotated[str, typer.Argument(metavar="HOST", help="Host name")],
    inventory: InventoryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """Print the merged variables of HOST and where each value came from."""
    import json

    from sipops.inventory import load_inventory, resolve_inventory_path
    from sipops.secrets import mask_value

    try:
        inv = load_inventory(resolve_inventory_path(inventory))
        if host not in inv.hosts:
            inv.select([host])  # raises with a did-you-mean
            raise InputError(f"'{host}' is a group; name one host", file=inv.file, field="HOST")
    except InputError as exc:
        bad_input(exc)
    h = inv.hosts[host]
    if as_json:
        data = {
            "host": h.name,
            "address": h.address,
            "roles": [r.name for r in h.role_objs],
            "groups": h.groups,
            "vars": {k: {"value": mask_value(k, h.vars[k]), "from": str(h.origins[k])} for k in sorted(h.vars)},
        }
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    typer.echo(f"host {h.name}  address {h.address}  ssh {h.ssh.user}@{h.address}:{h.ssh.port}")
    typer.echo(f"roles: {', '.join(r.name for r in h.role_objs)}   groups: {', '.join(h.groups) or '-'}")
    width = max(len(k) for k in h.vars) if h.vars else 0
    for k in sorted(h.vars):
        value = json.dumps(mask_value(k, h.vars[k]), default=str)
        if len(value) > 70:
            value = value[:67] + "..."
        typer.echo(f"  {k:<{width}}  {value:<40}  <- {h.origins[k]}")


ForksOpt = Annotated[int, typer.Option("--forks", min=1, max=256, help="Hosts worked on in parallel")]
AcceptNewOpt = Annotated[
    bool, typer.Option("--accept-new-host-key", help="Record unknown host keys (changed keys are still refused)")
]


@app.command()
def service(
    action: Annotated[str, typer.Argument(metavar="ACTION", help="start | stop | restart | reload | status")],
    targets: Annotated[list[str], typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)],
    inventory: InventoryOpt = None,
    forks: ForksOpt = 10,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Start, stop, restart, reload or show the OpenSIPS service on hosts (in parallel)."""
    from sipops.inventory import load_inventory, resolve_inventory_path
    from sipops.provision.control import ACTIONS, run_service
    from sipops.types import suggest

    try:
        if action not in ACTIONS:
            raise InputError(f"unknown action '{action}'{suggest(action, list(ACTIONS))}", field="ACTION")
        inv = load_inventory(resolve_inventory_path(inventory))
        inv.select(targets)
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(run_service(inv, targets, action, forks, accept_new_host_key))


@app.command()
def logs(
    host: Annotated[str, typer.Argument(metavar="HOST", help="Host name")],
    inventory: InventoryOpt = None,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines (Ctrl-C stops)")] = False,
    lines: Annotated[int, typer.Option("-n", "--lines", min=1, max=1_000_000, help="Lines to show")] = 50,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Show the OpenSIPS log of HOST (its log_file, /var/log/opensips.log by default)."""
    from sipops.inventory import load_inventory, resolve_inventory_path
    from sipops.provision.control import run_logs

    try:
        inv = load_inventory(resolve_inventory_path(inventory))
        inv.select([host])  # an unknown name: one line with a did-you-mean
        if host not in inv.hosts:
            raise InputError(f"'{host}' is a group; name one host", file=inv.file, field="HOST")
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(run_logs(inv.hosts[host], lines, follow, accept_new_host_key))


@app.command()
def conns(
    targets: Annotated[
        list[str] | None, typer.Argument(metavar="HOST...", help="Hosts, groups or 'all' [default: this machine]")
    ] = None,
    inventory: InventoryOpt = None,
    port: Annotated[list[str] | None, typer.Option("--port", "-p", help="Local port (repeat, or a,b)")] = None,
    state: Annotated[list[str] | None, typer.Option("--state", "-s", help="TCP state: estab, syn-recv, …")] = None,
    top: Annotated[str, typer.Option("--top", help="Top remote IPs per port")] = "5",
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    limits: Annotated[bool, typer.Option("--limits", help="OpenSIPS fds and tcp_max_connections usage")] = False,
) -> None:
    """TCP connections per port × state, top remote IPs and owning processes (local, or on HOST over SSH)."""
    from sipops.monitor.conns import conns as run_conns

    try:
        code = run_conns(
            targets,
            inventory=inventory,
            ports=port,
            states=state,
            top=top,
            as_json=as_json,
            show_limits=limits,
            out=sys.stdout,
        )
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


@app.command()
def health(
    targets: Annotated[
        list[str] | None, typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)
    ] = None,
    inventory: InventoryOpt = None,
    local: Annotated[bool, typer.Option("--local", help="Check this machine (what cron on the host runs)")] = False,
    fmt: Annotated[str, typer.Option("--format", help="text | json | nagios | prometheus")] = "text",
    textfile: Annotated[Path | None, typer.Option("--textfile", help="Also write DIR/sipops.prom (atomically)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; exit code only")] = False,
    check: Annotated[list[str] | None, typer.Option("--check", help="Run only this check (repeat)")] = None,
    alert_cmd: Annotated[str | None, typer.Option("--alert-cmd", help="Run on status changes (--local)")] = None,
    state_name: Annotated[str | None, typer.Option("--state-name", help="State kept between runs")] = None,
    state_dir: Annotated[str | None, typer.Option("--state-dir", help="Where state is kept (--local)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="health.json (--local)")] = None,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Health checks; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios)."""
    from sipops.health.run import health as run_health
    from sipops.remote.runner import SSHRunner

    try:
        code = run_health(
            sys.stdout, targets=targets, inventory=inventory, local=local, fmt=fmt, textfile=textfile, quiet=quiet,
            state_name=state_name, alert_cmd=alert_cmd, checks=check, config=config, state_dir=state_dir,
            runner=lambda h: SSHRunner(h, accept_new_host_key=accept_new_host_key),
        )  # fmt: skip
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


cron_app = typer.Typer(
    help="Run the health checks every minute on hosts (cron or a systemd timer).", rich_markup_mode=None
)
app.add_typer(cron_app, name="cron")


@cron_app.command("install")
def cron_install(
    targets: Annotated[list[str], typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)],
    inventory: InventoryOpt = None,
    timer: Annotated[bool, typer.Option("--timer", help="A systemd timer instead of /etc/cron.d")] = False,
    alert_cmd: Annotated[str | None, typer.Option("--alert-cmd", help="Run when a check changes status")] = None,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Check every minute, write the Prometheus textfile, alert only on status changes."""
    from sipops.health.run import cron
    from sipops.remote.transport import connect

    try:
        code = cron(sys.stdout, "install", targets=targets, inventory=inventory, timer=timer, alert_cmd=alert_cmd,
                    connect=lambda h: connect(h, accept_new_host_key=accept_new_host_key))  # fmt: skip
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


@cron_app.command("remove")
def cron_remove(
    targets: Annotated[list[str], typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)],
    inventory: InventoryOpt = None,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Remove the every-minute checks (cron entry, timer, agent); health.json and state stay."""
    from sipops.health.run import cron
    from sipops.remote.transport import connect

    try:
        code = cron(sys.stdout, "remove", targets=targets, inventory=inventory,
                    connect=lambda h: connect(h, accept_new_host_key=accept_new_host_key))  # fmt: skip
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


# ---- push engine: diff / push / rollback (sipops.remote.fleet does the work) ----
LocalOpt = Annotated[bool, typer.Option("--local", help="This machine, without SSH (name the one host to render)")]
RootOpt = Annotated[str, typer.Option("--root", hidden=True, help="Tests: host paths live under this directory")]


def _finite(value: float) -> float:
    """FloatRange lets nan through (every comparison with it is false): refuse it, and inf, by name."""
    if value != value or value in (float("inf"), float("-inf")):
        raise typer.BadParameter(f"{value} is not a number of seconds")
    return value


LockTimeoutOpt = Annotated[
    float,
    typer.Option("--lock-timeout", min=0, max=3600, callback=_finite, help="Seconds to wait for a running push"),
]
GateTimeoutOpt = Annotated[
    float,
    typer.Option("--gate-timeout", min=1, max=3600, callback=_finite, help="Seconds services get to pass the gate"),
]
KeepOpt = Annotated[int, typer.Option("--keep", min=1, max=1000, help="Backups kept per host")]


@app.command()
def diff(
    targets: Annotated[list[str], typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)],
    inventory: InventoryOpt = None,
    exit_code: Annotated[bool, typer.Option("--exit-code", help="Exit 3 when changes are pending")] = False,
    color: Annotated[bool | None, typer.Option("--color/--no-color", help="Colour [default: on a terminal]")] = None,
    forks: ForksOpt = 10,
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


@app.command()
def push(
    targets: Annotated[list[str], typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)],
    inventory: InventoryOpt = None,
    forks: ForksOpt = 10,
    serial: Annotated[
        int | None, typer.Option("--serial", min=1, max=10_000, help="N hosts at a time; stop on failure")
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="Say what would change; change nothing")] = False,
    lock_timeout: LockTimeoutOpt = 60,
    gate_timeout: GateTimeoutOpt = 20,
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
        float,
        typer.Option(
            "--drain-timeout",
            min=0,
            max=3600,
            help="Seconds to wait for a drained host's calls in setup; then it is put back, not restarted",
        ),
    ] = DRAIN_TIMEOUT,
) -> None:
    """Apply config changes: validated on the host, backed up, swapped atomically, health-gated, rolled back."""
    from sipops.remote import fleet
    from sipops.remote.apply import PushOptions
    from sipops.remote.drain import DrainOptions

    opts = PushOptions(lock_timeout=lock_timeout, gate_timeout=gate_timeout, keep=keep, root=root)
    try:
        t = fleet.load_targets(inventory, targets, local=local, accept_new=accept_new_host_key)
        draining = DrainOptions(enabled=drain, timeout=drain_timeout)
        code = fleet.push(t, sys.stdout, forks=forks, serial=serial, opts=opts, check=check, drain=draining)
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


@app.command()
def install(
    targets: Annotated[list[str], typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)],
    inventory: InventoryOpt = None,
    check: Annotated[bool, typer.Option("--check", help="Say what each phase would do; change nothing")] = False,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            "--skip",
            help="Skip a phase (repeatable): dependencies, opensips, sipops agent, database, "
            "firewall, logging, service, verify. Skipping opensips also skips database, service, verify.",
        ),
    ] = None,
    forks: ForksOpt = 10,
    lock_timeout: LockTimeoutOpt = 60,
    gate_timeout: GateTimeoutOpt = 20,
    local: LocalOpt = False,
    accept_new_host_key: AcceptNewOpt = False,
) -> None:
    """Take hosts from bare Linux to a running, tuned, logging, firewalled OpenSIPS; a second run changes nothing."""
    from sipops.provision.run import SKIPPABLE
    from sipops.provision.run import install as run_install
    from sipops.remote import fleet
    from sipops.remote.apply import PushOptions
    from sipops.types import suggest

    opts = PushOptions(lock_timeout=lock_timeout, gate_timeout=gate_timeout)
    try:
        for name in skip or []:
            if name not in SKIPPABLE:
                raise InputError(f"unknown phase '{name}'{suggest(name, list(SKIPPABLE))}", field="--skip")
        t = fleet.load_targets(inventory, targets, local=local, accept_new=accept_new_host_key)
        fleet.render_all(t)  # every template renders and lints before any host is touched
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(run_install(t, sys.stdout, forks=forks, check=check, skip=set(skip or []), opts=opts))


def _stamp(value: str | None) -> str | None:
    """A backup stamp as push makes them (sipops.remote.apply.new_stamp): it becomes a path on the host."""
    import re

    if value is not None and not re.fullmatch(r"[0-9]{8}T[0-9]{6}(\.[0-9]{3}Z-[0-9a-f]{4})?", value):
        raise typer.BadParameter(f"'{value[:60]}' is not a backup stamp (see rollback --list)")
    return value


@app.command()
def rollback(
    targets: Annotated[list[str], typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)],
    inventory: InventoryOpt = None,
    to: Annotated[str | None, typer.Option("--to", callback=_stamp, help="Backup stamp [default: the latest]")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="List the backups on each host")] = False,
    lock_timeout: LockTimeoutOpt = 60,
    gate_timeout: GateTimeoutOpt = 20,
    forks: ForksOpt = 10,
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
        code = fleet.rollback(t, sys.stdout, to=to, list_only=list_only, opts=opts, forks=forks)
    except InputError as exc:
        bad_input(exc)
    raise typer.Exit(code)


from sipops.cli.ban import register as _register_ban_commands  # noqa: E402

_register_ban_commands(app)  # watch, ban, unban, bans
from sipops.cli.tune import register as _register_tune_command  # noqa: E402

_register_tune_command(app)  # tune-tcp
from sipops.cli.lab import app as lab_app  # noqa: E402

app.add_typer(lab_app, name="lab")

# calltest: softphones register and call through each host's roles (sipops/cli/calltest.py).
from sipops.cli.calltest import register as _register_calltest_command  # noqa: E402

_register_calltest_command(app)  # calltest

# users: digest accounts on registrars, as HA1 in their database (sipops/cli/users.py).
from sipops.cli.users import users_app  # noqa: E402

app.add_typer(users_app, name="users")


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except InputError as exc:  # a command that forgot to catch: still one line, exit 2
        typer.echo(f"sipops: error: {exc}", err=True)
        sys.exit(ExitCode.BAD_INPUT)
