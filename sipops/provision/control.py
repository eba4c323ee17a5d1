"""`sipops service start|stop|restart|status HOST…` and `sipops logs HOST [-f] [--lines N]`."""

from __future__ import annotations

import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sipops.errors import ExitCode
from sipops.inventory import Host, Inventory
from sipops.opensips import layout
from sipops.remote.runner import SSHRunner
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


def service_action(host: Host, action: str, *, accept_new_host_key: bool = False) -> ServiceResult:
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
    runner = SSHRunner(host, accept_new_host_key=accept_new_host_key)
    try:
        res = runner.exec("sh -s", cmd.encode(), 120)
    except HostKeyError as exc:
        return ServiceResult(host.name, False, "unreachable", str(exc))
    except Exception as exc:  # network errors of every kind: this host fails alone
        return ServiceResult(host.name, False, "unreachable", f"{type(exc).__name__}: {exc}")
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


def run_service(inv: Inventory, targets: list[str], action: str, forks: int, accept_new: bool) -> int:
    hosts = inv.select(targets)
    with ThreadPoolExecutor(max_workers=max(1, forks)) as pool:
        results = list(pool.map(lambda h: service_action(h, action, accept_new_host_key=accept_new), hosts))
    width = max(len(r.host) for r in results)
    for r in results:
        mark = "ok  " if r.ok else "FAIL"
        print(f"{mark} {r.host:<{width}}  {_unit(inv.hosts[r.host])} {r.state}")
        if r.detail and (not r.ok or action == "status"):
            for line in r.detail.splitlines():
                print(f"     {line}")
    failed = [r.host for r in results if not r.ok]
    if failed:
        print(f"{action} failed on {len(failed)} of {len(results)} hosts: {', '.join(failed)}", file=sys.stderr)
        return ExitCode.FAILURE
    return ExitCode.OK


def run_logs(host: Host, lines: int, follow: bool, accept_new: bool) -> int:
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
        print(f"{host.name}: unreachable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    return ExitCode.OK if res.exited == 0 else ExitCode.FAILURE
