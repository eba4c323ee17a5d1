"""`sipops tune-tcp [HOST…] [--max-connections N] [--check] [--local] [--allow-lower]` (thin Typer command)
and the plain function behind it: hosts in parallel, a current -> target table per host, the push
engine's result, then the read-back."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from sipops.errors import ExitCode, InputError

# The command table imports this module on every sipops start: what tune-tcp runs loads when it runs.
if TYPE_CHECKING:
    from sipops.remote.apply import PushOptions
    from sipops.remote.fleet import Target
    from sipops.tuning.run import TuneResult

_ACTION_WORDS = {"set": "set", "ok": "ok", "keep": "keep", "lower": "LOWER", "host": "HOST"}


def table(result: TuneResult) -> list[str]:
    rows = [("KEY", "CURRENT", "TARGET", "ACTION", "REASON")]
    for t in result.targets:
        rows.append((t.key, t.current if t.current is not None else "-", t.target, _ACTION_WORDS[t.action], t.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]


def report(result: TuneResult, check: bool) -> list[str]:
    from sipops.tuning.calc import HOST
    from sipops.tuning.run import CONTAINER_HOST, NOT_TAKEN, UNCHECKED, summary

    name = result.host
    lines: list[str] = []
    probe = result.probe
    if probe is not None:
        f = probe.facts
        where = f"container {f.container}" if f.container else "not a container"
        lines.append(f"{name}: {result.max_connections} connections; {f.cpus} cores, {f.mem_mb} MB RAM, {where}")
        lines += table(result)
    for note in result.notes:
        lines.append(f"{name}: note: {note}")
    if result.error:
        lines.append(f"{name}: FAILED: {result.error}")
        return lines
    if check:
        files = ", ".join(result.files) if result.files else "none"
        lines.append(f"{name}: --check: files that would change: {files}")
        if result.files:
            lines.append(f"{name}: --check: then: {', '.join(result.handlers) or 'no handler (no restart)'}")
        return lines
    push = result.push
    if push is not None:
        if push.failed:
            lines.append(f"{name}: {push.status.upper()}: {push.reason}")
            lines += [f"{name}:   | {d}" for d in push.details]
            return lines
        if push.status == "changed":
            ran = ", ".join(push.handlers) or "no handler"
            lines.append(f"{name}: pushed {', '.join(push.changed)}; ran {ran}; backup {push.stamp}")
        else:
            lines.append(f"{name}: files already tuned; nothing pushed")
    for r in result.readback:
        if r.verdict in (NOT_TAKEN, CONTAINER_HOST, UNCHECKED):
            live = r.live if r.live is not None else "-"
            extra = f" ({r.note})" if r.note else ""
            lines.append(f"{name}: {r.verdict}: {r.key} is {live}, wanted {r.want}{extra}")
    counts = summary(result)
    if result.readback:
        parts = [f"{counts.get(v, 0)} {v}" for v in ("ok", NOT_TAKEN, CONTAINER_HOST, UNCHECKED) if counts.get(v)]
        lines.append(f"{name}: read back: {', '.join(parts)}")
    host_keys = [t.key for t in result.targets if t.action == HOST]
    if host_keys and not result.readback:
        lines.append(f"{name}: {CONTAINER_HOST}: {', '.join(host_keys)}")
    return lines


def _local_inventory(inventory: str | None, targets: list[str]) -> tuple[str | None, list[str]]:
    """--local without HOST: the inventory's only host, or this machine with the roles' defaults."""
    import tempfile

    from sipops.inventory import load_inventory, resolve_inventory_path

    if targets:
        return inventory, targets
    path = resolve_inventory_path(inventory)
    if path.exists():
        inv = load_inventory(path)
        if len(inv.hosts) != 1:
            raise InputError("--local: name the inventory host whose settings apply here", field="HOST")
        return inventory, list(inv.hosts)
    tmp = Path(tempfile.mkdtemp(prefix="sipops-tune-")) / "inventory.yaml"
    tmp.write_text("hosts:\n  localhost:\n    address: 127.0.0.1\n")
    return str(tmp), ["localhost"]


def tune_tcp(
    t: Target,
    out: TextIO,
    *,
    max_connections: int | None,
    allow_lower: bool,
    check: bool,
    forks: int,
    opts: PushOptions,
    calls: int | None = None,
) -> int:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from sipops.tuning.run import tune_host

    lock = threading.Lock()

    def emit(text: str) -> None:
        with lock:
            out.write(text.rstrip("\n") + "\n")
            out.flush()

    def one(i: int) -> TuneResult:
        host = t.hosts[i]
        res = tune_host(
            t.inv, host, t.runner(host), max_connections=max_connections, allow_lower=allow_lower,
            check=check, opts=opts, log=lambda _: None, calls=calls,
        )  # fmt: skip
        emit("\n".join(report(res, check)))
        return res

    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(t.hosts)))) as pool:
        results = list(pool.map(one, range(len(t.hosts))))
    return ExitCode.FAILURE if any(r.failed for r in results) else ExitCode.OK


def tune_tcp_command(
    targets: Annotated[
        list[str] | None, typer.Argument(metavar="HOST...", help="Hosts, groups or 'all'", show_default=False)
    ] = None,
    inventory: Annotated[
        str | None,
        typer.Option("-i", "--inventory", help="Inventory file [default: $SIPOPS_INVENTORY, else ./inventory.yaml]"),
    ] = None,
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
    forks: Annotated[int, typer.Option("--forks", min=1, help="Hosts worked on in parallel")] = 10,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout", help="Seconds to wait for another push")] = 60,
    gate_timeout: Annotated[float, typer.Option("--gate-timeout", min=1, help="Seconds services get to pass")] = 20,
    accept_new_host_key: Annotated[
        bool, typer.Option("--accept-new-host-key", help="Trust a host key seen for the first time")
    ] = False,
) -> None:
    """Compute TCP and file-descriptor limits for N connections, show current -> target, apply, read back."""
    from sipops.cli.main import bad_input
    from sipops.remote.apply import PushOptions
    from sipops.remote.fleet import load_targets
    from sipops.tuning.calc import TuneInputError, check_max_connections

    try:
        if max_connections is not None:
            check_max_connections(max_connections)
        hosts = list(targets or [])
        if local:
            inventory, hosts = _local_inventory(inventory, hosts)
        t = load_targets(inventory, hosts, local=local, accept_new=accept_new_host_key)
        for h in t.hosts:
            if max_connections is None:
                from sipops.tuning.run import default_max_connections

                check_max_connections(default_max_connections(h))
            if calls is not None and "mediarelay" in h.roles:
                from sipops.mediarelay import check_calls

                check_calls(h, calls)
    except TuneInputError as exc:
        bad_input(InputError(str(exc), field="--max-connections"))
    except InputError as exc:
        bad_input(exc)
    opts = PushOptions(lock_timeout=lock_timeout, gate_timeout=gate_timeout)
    code = tune_tcp(
        t,
        sys.stdout,
        max_connections=max_connections,
        allow_lower=allow_lower,
        check=check,
        forks=forks,
        opts=opts,
        calls=calls,
    )
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add tune-tcp to the sipops CLI."""
    app.command("tune-tcp")(tune_tcp_command)
