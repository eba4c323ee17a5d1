"""The plain function behind `sipops calltest`: check the input (nothing starts on bad input), pick the
places test phones run from, run each host's checks over each transport, report."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from sipops.calltest import checks, gateways
from sipops.calltest.plan import (
    TRANSPORTS,
    Account,
    CalleeUri,
    Options,
    Target,
    checks_for,
    lab_places,
    local_place,
    netns_place,
    parse_callee,
    read_accounts,
    targets,
)
from sipops.calltest.report import CheckResult, exit_code, line, skipped, summary, write_json
from sipops.calltest.scenarios import environment, find_audio_pcap
from sipops.calltest.session import Session
from sipops.calltest.sipp import sipp_binary
from sipops.errors import ExitCode, InputError
from sipops.inventory import Inventory, load_inventory, resolve_inventory_path
from sipops.remote.executor import FORKS


@dataclass
class Request:
    """What the user asked for, as the CLI parsed it."""

    targets: list[str]
    inventory: str | None = None
    transports: list[str] = field(default_factory=list)
    phones: int = 2
    dtmf: str = "1234"
    media: bool = True
    accounts: list[str] = field(default_factory=list)  # USER:PASSWORD
    accounts_file: Path | None = None
    callees: list[str] = field(default_factory=list)
    from_netns: list[str] = field(default_factory=list)
    as_json: bool = False
    keep: Path | None = None  # keep the scenarios and sipp's files here
    forks: int = FORKS  # hosts checked at once


@dataclass
class Prepared:
    inv: Inventory
    targets: list[Target]
    opts: Options
    binary: str


def prepare(req: Request) -> Prepared:
    """Every input check, before anything starts: one InputError names what is wrong."""
    from sipops.calltest.plan import parse_account

    binary = sipp_binary()
    inv = load_inventory(resolve_inventory_path(req.inventory))
    picked = targets(inv, req.targets)
    for name in req.transports:
        if name not in TRANSPORTS:
            raise InputError(f"unknown transport '{name}' (udp or tcp)", field="--transport")
    if not 1 <= req.phones <= 1000:
        raise InputError(f"{req.phones} phones: out of range 1..1000", field="--phones")
    if any(d not in "0123456789*#" for d in req.dtmf) or len(req.dtmf) > 32:
        raise InputError(f"'{req.dtmf}': DTMF digits are 0-9 * # (at most 32)", field="--dtmf")
    accounts: list[Account] = [parse_account(a, "--account") for a in req.accounts]
    if req.accounts_file is not None:
        accounts += read_accounts(req.accounts_file)
    callees: list[CalleeUri] = [parse_callee(c) for c in req.callees]
    audio = None
    if req.media:
        audio = find_audio_pcap()
        if audio is None:
            raise InputError("sip-tester's g711a.pcap is missing: apt-get install sip-tester", field="--media")
    places = lab_places(inv)
    chosen = [netns_place(ns) for ns in req.from_netns] or places[:2]
    if not chosen:
        chosen = [local_place(picked[0].address)] if picked else []
    opts = Options(
        transports=tuple(req.transports) or TRANSPORTS,
        phones=req.phones,
        dtmf=req.dtmf,
        accounts=accounts,
        callees=callees,
        caller=chosen[0] if chosen else None,
        callee=chosen[1] if len(chosen) > 1 else None,
        extra_places=places + [p for p in chosen if p not in places],
        audio=audio,
    )
    return Prepared(inv, picked, opts, binary)


Check = Callable[[Session, Target, str], CheckResult]
CHECKS: dict[str, Check] = {
    "register": checks.register,
    "wrong-password": checks.wrong_password,
    "call": checks.call,
    "cancel": lambda s, t, tr: checks.call(s, t, tr, mode="cancel", check="cancel"),
    "unknown-user": checks.unknown_user,
    "gateways": gateways.spread,
    "failover": gateways.failover,
}
GATEWAY_CHECKS = frozenset({"gateways", "failover"})


def run_checks(
    p: Prepared, session: Session, emit: Callable[[CheckResult], None], *, forks: int = FORKS
) -> list[CheckResult]:
    """Each host's checks, `forks` hosts at a time (the fleet executor); one host's checks run in turn,
    transport by transport. Gateway checks take session.gateways: their callees listen on the gateways'
    own addresses and ports, which two balancers of one inventory may share. Results in the hosts' order."""
    from sipops.remote.executor import run_hosts

    by_name = {t.name: t for t in p.targets}
    partial: dict[str, list[CheckResult]] = {name: [] for name in by_name}

    def host(name: str) -> list[CheckResult]:
        t = by_name[name]
        results = partial[name]

        def done(r: CheckResult) -> None:
            results.append(r)
            emit(r)

        names = checks_for(t, p.opts)
        if not names:
            done(skipped(t.name, "roles", "-", f"no call test for roles {', '.join(t.host.roles) or 'none'}"))
        for transport in p.opts.transports:
            if transport not in t.transports:
                done(skipped(t.name, "transport", transport, f"{t.name} has no {transport} socket"))
                continue
            for name in names:
                if name == "callee":
                    for callee in p.opts.callees:
                        done(checks.callee_uri(session, t, transport, callee))
                    continue
                try:
                    if name in GATEWAY_CHECKS:
                        with session.gateways:
                            done(CHECKS[name](session, t, transport))
                    else:
                        done(CHECKS[name](session, t, transport))
                except (OSError, RuntimeError) as exc:
                    done(CheckResult(t.name, name, transport, "FAILED", f"could not run: {exc}"))
        return results

    runs = run_hosts(list(by_name), host, forks=forks)
    out: list[CheckResult] = []
    for run in runs:
        out.extend(partial[run.host])
        if run.result is None:  # a check raised: what ran before it, then one FAILED line; the others went on
            r = CheckResult(run.host, "calltest", "-", "FAILED", f"could not run: {run.reason}")
            emit(r)
            out.append(r)
    return out


def calltest(req: Request, out: TextIO = sys.stdout) -> ExitCode:
    p = prepare(req)

    import threading

    printing = threading.Lock()  # hosts run at once: one whole line at a time

    def emit(r: CheckResult) -> None:
        if not req.as_json:
            with printing:
                out.write(line(r) + "\n")
                out.flush()

    if not req.as_json:
        where = [x for x in (p.opts.caller, p.opts.callee) if x is not None]
        out.write("calltest: phones in " + " and ".join(f"{w.name} ({w.address})" for w in where) + "\n")
    with tempfile.TemporaryDirectory(prefix="sipops-calltest-") as tmp:
        workdir = req.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        session = Session(environment(p.inv.dir), p.binary, workdir, p.opts, p.inv)
        try:
            results = run_checks(p, session, emit, forks=req.forks)
        finally:
            session.close()
    for leftover in session.leftovers:
        results.append(CheckResult("-", "cleanup", "-", "FAILED", leftover))
    if req.as_json:
        write_json(results, out)
    else:
        out.write("\n".join(summary(results)) + "\n")
    return exit_code(results)
