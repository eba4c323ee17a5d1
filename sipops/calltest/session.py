"""One calltest run: rendered scenarios in a folder per step, ports handed out once, sipp processes
started and always stopped, test phones registered and unregistered again."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import jinja2

from sipops.calltest.media import MediaCounters, PortCount
from sipops.calltest.plan import Account, Options, Target
from sipops.calltest.scenarios import render, write_injection
from sipops.calltest.sipp import Place, SippOutput, SippProcess, SippSpec


def auth_keyword(account: Account) -> str:
    """sipp's digest keyword for one phone (a field of the injection file, expanded when sent)."""
    return f"[authentication username={account.user} password={account.password}]"


class Session:
    def __init__(self, env: jinja2.Environment, binary: str, workdir: Path, opts: Options) -> None:
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

    def phone(self, n: int) -> Account:
        """Test phone n: the user's accounts in turn, else a name of this run (no digest auth)."""
        if self.opts.accounts:
            return self.opts.accounts[n % len(self.opts.accounts)]
        return Account(f"sipops-ct{self.run_id}-{n}", "-")

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
