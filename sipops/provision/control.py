"""`sipops service start|stop|restart|status HOST…` and `sipops logs HOST [-f] [--lines N]`."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from sipops.errors import ExitCode, InputError
from sipops.inventory import Host, load_inventory, resolve_inventory_path
from sipops.opensips import layout
from sipops.remote.executor import FORKS, HostRun, describe, printer, reach, run_hosts, summarize
from sipops.remote.runner import Runner, SSHRunner
from sipops.remote.transport import HostKeyError, connect

ACTIONS = ("start", "stop", "restart", "reload", "status")


@dataclass(frozen=True)
class ServiceResult:
    host: str
    ok: bool
    state: str  # active / inactive / failed / unreachable
    detail: str


def as_root(host: Host, command: str) -> str:
    """The command, through non-interactive sudo when the SSH user is not root."""
    return command if host.ssh.user == "root" else f"sudo -n sh -c {shlex.quote(command)}"


def _unit(host: Host) -> str:
    return layout(host).unit


def service_action(host: Host, action: str, make: Callable[[], Runner]) -> ServiceResult:
    """ACTION on HOST's OpenSIPS unit through the runner `make` opens (Unreachable when it cannot)."""
    unit = _unit(host)
    if action == "status":
        cmd = f"systemctl is-active {unit}; systemctl status {unit} --no-pager -n 5 2>&1 | head -n 12; true"
    else:
        # On failure, the lines that say why: the unit's own journal.
        # start/restart by an operator: clear systemd's start rate limit first (see roles/common.yaml)
        reset = f"systemctl reset-failed {unit} 2>/dev/null; " if action in ("start", "restart") else ""
        cmd = (
            f"{reset}systemctl {action} {unit}; rc=$?; systemctl is-active {unit};"
            f" if [ $rc -ne 0 ]; then journalctl -u {unit} -n 20 --no-pager; fi; exit $rc"
        )
    runner = reach(make)()
    try:
        res = runner.exec("sh -s", cmd.encode(), 120)
    finally:
        runner.close()
    lines = res.stdout.decode(errors="replace").splitlines()
    if action == "status":
        state = lines[0].strip() if lines else "unknown"
        return ServiceResult(host.name, state == "active", state, "\n".join(lines[1:]))
    state = next((ln.strip() for ln in lines if ln.strip() in ("active", "inactive", "failed", "activating")), "?")
    ok = res.rc == 0 and (state == "active" if action != "stop" else state != "active")
    # systemctl's own complaint (e.g. "Unit opensips.service not found") is on stderr
    errors = res.stderr.decode(errors="replace").splitlines()
    detail = "" if ok else "\n".join([*errors, *(ln for ln in lines if ln.strip() != state)])
    return ServiceResult(host.name, ok, state, detail)


def run_service(
    action: str,
    targets: list[str],
    out: TextIO,
    *,
    inventory: str | None,
    forks: int = FORKS,
    serial: int | None = None,
    accept_new: bool = False,
) -> int:
    """`sipops service`: ACTION on every host (--serial N: N at a time, stopping after a failed batch)."""
    from sipops.types import suggest

    if action not in ACTIONS:
        raise InputError(f"unknown action '{action}'{suggest(action, list(ACTIONS))}", field="ACTION")
    inv = load_inventory(resolve_inventory_path(inventory))
    hosts = {h.name: h for h in inv.select(targets)}

    def one(name: str) -> ServiceResult:
        host = hosts[name]
        return service_action(host, action, lambda: SSHRunner(host, accept_new_host_key=accept_new))

    def verdict(r: ServiceResult) -> tuple[str, str]:
        return ("ok", "") if r.ok else ("failed", f"{_unit(hosts[r.host])} {r.state}")

    runs: list[HostRun[ServiceResult]] = run_hosts(list(hosts), one, forks=forks, serial=serial, verdict=verdict)
    emit = printer(out)
    width = max(len(r.host) for r in runs)
    for run in runs:
        r = run.result
        state, detail = (r.state, r.detail) if r is not None else (run.status, run.reason)
        emit(f"{'ok  ' if not run.failed else 'FAIL'} {run.host:<{width}}  {_unit(hosts[run.host])} {state}")
        if detail and (run.failed or action == "status"):
            for line in detail.splitlines():
                emit(f"     {line}")
    return summarize(runs, emit)


def run_logs(host_name: str, *, inventory: str | None, lines: int, follow: bool, accept_new: bool) -> int:
    """`sipops logs`: tail HOST's OpenSIPS log (one host, streamed; not a fleet command)."""
    inv = load_inventory(resolve_inventory_path(inventory))
    inv.select([host_name])  # an unknown name: one line with a did-you-mean
    if host_name not in inv.hosts:
        raise InputError(f"'{host_name}' is a group; name one host", file=inv.file, field="HOST")
    host = inv.hosts[host_name]
    log_file = host.vars["log_file"]
    cmd = f"tail -n {int(lines)} {'-F ' if follow else ''}{shlex.quote(log_file)}"
    try:
        with connect(host, accept_new_host_key=accept_new) as conn:
            res = conn.run(as_root(host, cmd), warn=True, pty=False, out_stream=sys.stdout, err_stream=sys.stderr)
    except KeyboardInterrupt:
        return ExitCode.OK
    except HostKeyError as exc:
        print(f"{host.name}: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    except Exception as exc:
        print(f"{host.name}: unreachable: {describe(exc)}", file=sys.stderr)
        return ExitCode.FAILURE
    return ExitCode.OK if res.exited == 0 else ExitCode.FAILURE
