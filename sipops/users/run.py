"""The work of `sipops users` on hosts: one run of the host program per registrar (sipops.host.users,
shipped by the push engine's runner), registrars in parallel through the fleet executor, then lines."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TextIO

from sipops.errors import ExitCode
from sipops.host import users as hostprog
from sipops.remote.apply import HostResult
from sipops.remote.fleet import Target, run_parallel
from sipops.remote.runner import RemoteError, Runner, call
from sipops.users.model import Registrar

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


@cache
def program() -> bytes:
    return inspect.getsource(hostprog).encode()


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
    """The host program on one registrar; every failure is the host's outcome, never an exception."""
    runner: Runner | None = None
    try:
        runner = make_runner()
        reply = call(runner, request, timeout=TIMEOUT, source=program())
    except RemoteError as exc:
        return HostOutcome(reg.name, error=str(exc))
    except Exception as exc:  # SSH, host keys: this host fails alone
        return HostOutcome(reg.name, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        if runner is not None:
            runner.close()
    if not reply.get("ok"):
        return HostOutcome(reg.name, error=f"{reg.where}: {reply.get('error') or 'failed'}")
    results = [(str(u), str(o)) for u, o in reply.get("results", [])]
    accounts = [(str(u), str(r)) for u, r in reply.get("accounts", [])]
    return HostOutcome(reg.name, results=results, accounts=accounts)


def run_all(
    t: Target, regs: list[Registrar], request_for: Callable[[Registrar], dict[str, Any]], *, forks: int
) -> list[HostOutcome]:
    """Every registrar once, in parallel (at most `forks` at a time), in the order given."""
    by_name = {r.name: r for r in regs}
    outcomes: dict[str, HostOutcome] = {}

    def work(name: str) -> HostResult:
        reg = by_name[name]
        out = outcomes[name] = run_one(t.runner(reg.host), reg, request_for(reg))
        return HostResult(name, "failed" if out.failed else "ok", reason=out.error)

    run_parallel(list(by_name), work, forks=forks, serial=None)
    return [outcomes[r.name] for r in regs]


def report(outcomes: list[HostOutcome], regs: list[Registrar], out: TextIO) -> int:
    """One line per account and host (no secret is ever in them); exit 1 when a host failed."""
    realms = {r.name: r.realm for r in regs}
    for o in outcomes:
        if o.error:
            out.write(f"{o.host}: FAILED: {o.error}\n")
        for user, outcome in o.results:
            words, bad = OUTCOMES.get(outcome, (outcome, True))
            out.write(f"{o.host}: {user}@{realms[o.host]}: {'FAILED: ' if bad else ''}{words}\n")
    failed = [o.host for o in outcomes if o.failed]
    if failed:
        out.write(f"failed on {len(failed)} of {len(outcomes)} hosts: {', '.join(failed)}\n")
        return ExitCode.FAILURE
    return ExitCode.OK


def list_table(outcomes: list[HostOutcome], out: TextIO) -> int:
    """HOST USER REALM rows; the HA1s never leave the host."""
    rows = [("HOST", "USER", "REALM")]
    for o in outcomes:
        rows += [(o.host, u, r) for u, r in o.accounts]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        out.write(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}\n".rstrip() + "\n")
    for o in outcomes:
        if o.error:
            out.write(f"{o.host}: FAILED: {o.error}\n")
    return ExitCode.FAILURE if any(o.failed for o in outcomes) else ExitCode.OK
