"""One calltest run: rendered scenarios in a folder per step, ports handed out once, sipp processes
started and always stopped, test phones registered and unregistered again."""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import jinja2

from sipops.calltest.media import MediaCounters, PortCount
from sipops.calltest.plan import Account, Options, Target
from sipops.calltest.scenarios import render, write_injection
from sipops.calltest.sipp import Place, SippOutput, SippProcess, SippSpec
from sipops.errors import InputError
from sipops.inventory import Inventory


def auth_keyword(account: Account) -> str:
    """sipp's digest keyword for one phone (a field of the injection file, expanded when sent)."""
    return f"[authentication username={account.user} password={account.password}]"


class AccountsUnavailable(RuntimeError):
    """A registrar wants digest auth and no account could be had for the test phones."""


class Session:
    def __init__(self, env: jinja2.Environment, binary: str, workdir: Path, opts: Options, inv: Inventory) -> None:
        self.inv = inv
        self._made: dict[str, list[Account]] = {}
        self.leftovers: list[str] = []  # what close() could not undo, for the report
        self.env = env
        self.binary = binary
        self.workdir = workdir
        self.opts = opts
        self.run_id = secrets.token_hex(3)
        self._folders = itertools.count(1)
        # SIP ports below the usual ephemeral range; media ports four apart: sipp binds the port it is
        # given and the one two above it (a second stream), and RTP ports are even by convention.
        self._sip = itertools.count(5070)
        self._media = itertools.count(30000, 4)
        self.processes: list[SippProcess] = []
        self.gateways = threading.Lock()  # gateway checks one at a time (sipops.calltest.run.run_checks)

    def folder(self, name: str) -> Path:
        path = self.workdir / f"{next(self._folders):03d}-{name}"
        path.mkdir(parents=True)
        return path

    def sip_port(self) -> int:
        return next(self._sip)

    def media_port(self) -> int:
        return next(self._media)

    def render(self, template: str, folder: Path, **params: Any) -> Path:
        return render(self.env, template, folder, **params)

    def start(self, spec: SippSpec) -> SippProcess:
        proc = SippProcess(spec, self.binary)
        self.processes.append(proc)
        return proc

    def run(self, spec: SippSpec) -> SippProcess:
        proc = self.start(spec)
        proc.wait()
        return proc

    def stop_all(self) -> None:
        for proc in self.processes:
            proc.stop()

    def phone(self, t: Target, n: int) -> Account:
        """Test phone n on `t`: the user's accounts in turn; on a registrar with registrar_auth, two
        accounts of this run created with `sipops users` (removed by close()); else a name of this run."""
        if self.opts.accounts:
            return self.opts.accounts[n % len(self.opts.accounts)]
        if t.vars.get("registrar_auth") and t.has("registrar"):
            made = self._made.get(t.name)
            if made is None:
                made = self._make_accounts(t)
            return made[n % len(made)]
        return Account(f"sipops-ct{self.run_id}-{n}", "-")

    def _make_accounts(self, t: Target) -> list[Account]:
        from sipops.users import UsersError, add_accounts

        made = [Account(f"sipops-ct{self.run_id}-{n}", secrets.token_urlsafe(12)) for n in range(2)]
        try:
            add_accounts(self.inv, t.name, [(a.user, a.password) for a in made])
        except (UsersError, InputError) as exc:
            raise AccountsUnavailable(
                f"registrar_auth is on and test accounts could not be created ({exc}): name accounts"
                " with --account USER:PASSWORD or --accounts FILE"
            ) from None
        self._made[t.name] = made
        return made

    def close(self) -> None:
        """Stop every sipp still running and remove the accounts this run created."""
        self.stop_all()
        from sipops.users import UsersError, remove_accounts

        for host, made in self._made.items():
            try:
                remove_accounts(self.inv, host, [a.user for a in made])
            except (UsersError, InputError) as exc:
                self.leftovers.append(f"{host}: test accounts not removed: {exc}")
        self._made.clear()

    def register(
        self, t: Target, transport: str, phones: list[tuple[Account, str]], *, expires: int = 300, expect: int = 200
    ) -> tuple[SippProcess, SippOutput]:
        """REGISTER each (account, contact host:port) from the caller's place; waits for the outcome."""
        folder = self.folder(f"{t.name}-register-{transport}")
        scenario = self.render("register", folder, domain=t.address, expires=expires, expect=expect)
        rows: list[tuple[str, ...]] = [(a.user, auth_keyword(a), contact) for a, contact in phones]
        spec = SippSpec(
            scenario,
            self.caller,
            transport,
            self.sip_port(),
            remote=f"{t.address}:{t.port}",
            calls=len(rows),
            rate=20,
            timeout=10 + len(rows) / 10,
            injection=write_injection(folder / "phones.csv", rows),
        )
        proc = self.run(spec)
        return proc, proc.output()

    @property
    def caller(self) -> Place:
        assert self.opts.caller is not None
        return self.opts.caller

    @property
    def callee(self) -> Place:
        return self.opts.callee or self.caller

    @contextmanager
    def counters(self, ports: list[tuple[Place, int]], digits: str) -> Iterator[dict[int, PortCount]]:
        """Kernel RTP counters for (place, media port) pairs; the dict is filled when the block ends."""
        result: dict[int, PortCount] = {}
        by_place: dict[Place, list[int]] = {}
        for place, port in ports:
            by_place.setdefault(place, []).append(port)
        with ExitStack() as stack:
            sets = [stack.enter_context(MediaCounters(p, ps, digits)) for p, ps in by_place.items()]
            yield result
            for c in sets:
                result.update(c.read())
