"""The plain functions behind `sipops users`: one run of the host program per registrar (sipops.host.users,
shipped by the push engine's runner), registrars through the fleet executor, then lines and the summary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from sipops.remote.executor import FORKS, HostRun, printer, reach, run_hosts, summarize
from sipops.remote.fleet import Target, load_targets
from sipops.remote.runner import RemoteError, Runner, call
from sipops.users.model import Registrar, registrars

TIMEOUT = 90.0
# What each outcome of the host program means for the command: (words shown, a failure?).
OUTCOMES = {
    "added": ("added", False),
    "updated": ("password changed", False),
    "unchanged": ("unchanged (already there with this password)", False),
    "removed": ("removed", False),
    "absent": ("not there (nothing to remove)", False),
    "exists": ("exists with another password: refused (sipops users passwd changes it)", True),
    "missing": ("no such account (sipops users add creates it)", True),
}


ENTRY = "sipops.host.users:main"  # the host side, run through the one boot path (sipops.remote.ship)


@dataclass
class HostOutcome:
    host: str
    error: str = ""
    results: list[tuple[str, str]] = field(default_factory=list)  # (user, outcome)
    accounts: list[tuple[str, str]] = field(default_factory=list)  # (user, realm) for list

    @property
    def failed(self) -> bool:
        return bool(self.error) or any(OUTCOMES.get(o, ("", True))[1] for _, o in self.results)


def run_one(make_runner: Callable[[], Runner], reg: Registrar, request: dict[str, Any]) -> HostOutcome:
    """The host program on one registrar; Unreachable when it cannot be reached, else the host's outcome."""
    runner = reach(make_runner)()
    try:
        reply = call(runner, request, timeout=TIMEOUT, entry=ENTRY)
    except RemoteError as exc:
        return HostOutcome(reg.name, error=str(exc))
    finally:
        runner.close()
    if not reply.get("ok"):
        return HostOutcome(reg.name, error=f"{reg.where}: {reply.get('error') or 'failed'}")
    results = [(str(u), str(o)) for u, o in reply.get("results", [])]
    accounts = [(str(u), str(r)) for u, r in reply.get("accounts", [])]
    return HostOutcome(reg.name, results=results, accounts=accounts)


def _verdict(o: HostOutcome) -> tuple[str, str]:
    if o.error:
        return "failed", o.error
    refused = [f"{u}: {OUTCOMES[x][0]}" for u, x in o.results if OUTCOMES.get(x, ("", True))[1]]
    return ("failed", "; ".join(refused)) if refused else ("ok", "")


def run_all(
    t: Target,
    regs: list[Registrar],
    request_for: Callable[[Registrar], dict[str, Any]],
    *,
    forks: int = FORKS,
    serial: int | None = None,
) -> list[HostRun[HostOutcome]]:
    """Every registrar once through the fleet executor, in the order given."""
    by_name = {r.name: r for r in regs}

    def work(name: str) -> HostOutcome:
        reg = by_name[name]
        return run_one(t.runner(reg.host), reg, request_for(reg))

    return run_hosts(list(by_name), work, forks=forks, serial=serial, verdict=_verdict)


def select(
    inventory: str | None, targets: list[str], accept_new: bool, *, writing: bool
) -> tuple[Target, list[Registrar]]:
    """The registrars among HOST…; InputError (exit 2) before any host is touched."""
    t = load_targets(inventory, targets, local=False, accept_new=accept_new)
    return t, registrars(t.inv, targets, writing=writing)


def report(runs: list[HostRun[HostOutcome]], regs: list[Registrar], out: TextIO) -> int:
    """One line per account and host (no secret is ever in them), then the summary; exit 1 when a host failed."""
    realms = {r.name: r.realm for r in regs}
    emit = printer(out)
    for run in runs:
        o = run.result
        if o is None or o.error:
            emit(f"{run.host}: {run.status.upper()}: {o.error if o is not None else run.reason}")
            continue
        for user, outcome in o.results:
            words, bad = OUTCOMES.get(outcome, (outcome, True))
            emit(f"{o.host}: {user}@{realms[o.host]}: {'FAILED: ' if bad else ''}{words}")
    return summarize(runs, emit)


def list_table(runs: list[HostRun[HostOutcome]], out: TextIO) -> int:
    """HOST USER REALM rows (the HA1s never leave the host), then the summary."""
    rows = [("HOST", "USER", "REALM")]
    for run in runs:
        if run.result is not None:
            rows += [(run.host, u, r) for u, r in run.result.accounts]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    emit = printer(out)
    for r in rows:
        emit(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip())
    return summarize(runs, emit)


def write(
    action: str,
    targets: list[str],
    out: TextIO,
    *,
    inventory: str | None,
    user: str,
    password: Callable[[], str],
    forks: int = FORKS,
    serial: int | None = None,
    accept_new: bool = False,
) -> int:
    """`users add|passwd`: the password is asked (password()) only once the user and hosts are known good."""
    from sipops.users.model import account_request, check_user

    name = check_user(user)
    t, regs = select(inventory, targets, accept_new, writing=True)
    secret = password()
    runs = run_all(t, regs, lambda r: account_request(r, action, [(name, secret)]), forks=forks, serial=serial)
    return report(runs, regs, out)


def remove(
    targets: list[str],
    out: TextIO,
    *,
    inventory: str | None,
    users: list[str],
    forks: int = FORKS,
    serial: int | None = None,
    accept_new: bool = False,
) -> int:
    """`users remove`: accounts not there are reported, not an error."""
    from sipops.users.model import check_user, remove_request

    names = [check_user(u) for u in users]
    t, regs = select(inventory, targets, accept_new, writing=False)
    runs = run_all(t, regs, lambda r: remove_request(r, names), forks=forks, serial=serial)
    return report(runs, regs, out)


def list_accounts(
    targets: list[str], out: TextIO, *, inventory: str | None, forks: int = FORKS, accept_new: bool = False
) -> int:
    """`users list`: user and realm of each account."""
    from sipops.users.model import list_request

    t, regs = select(inventory, targets, accept_new, writing=False)
    return list_table(run_all(t, regs, list_request, forks=forks), out)
