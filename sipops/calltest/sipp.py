"""Driving sipp processes and reading what they wrote: the statistics CSV (-trace_stat), the response
times (-trace_rtt), per-step message counts (-trace_counts) and the codes of unexpected replies
(-trace_error_codes). Every process is bounded: a call count (-m), sipp's own -timeout, and a process
timeout after which it is stopped by its pid."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sipops.errors import InputError

SIPP_PACKAGE = "sip-tester"
# sipp's exit codes: 0 every call succeeded, 1 at least one failed, 97/99 stopped by a signal or the
# global timeout with calls still running; anything else is sipp itself failing (bad scenario, bind).
SIPP_OK = (0, 1, 97, 99)


def sipp_binary() -> str:
    """The sipp executable, or one line saying which package installs it (exit 2)."""
    found = shutil.which("sipp")
    if found is None:
        raise InputError(f"sipp is not installed: apt-get install {SIPP_PACKAGE}", field="sipp")
    return found


@dataclass(frozen=True)
class Place:
    """Where test phones run: an address of this machine, or of a network namespace on it."""

    name: str  # "local", a lab attacker ("a1"), or "netns NAME"
    address: str
    prefix: tuple[str, ...] = ()  # argv prefix that enters the namespace

    def argv(self, command: list[str]) -> list[str]:
        return [*self.prefix, *command]


@dataclass
class SippSpec:
    """One sipp process: a client (remote set) or a server (remote None) with its bounds."""

    scenario: Path
    place: Place
    transport: str  # udp / tcp
    port: int
    media_port: int = 0
    remote: str | None = None  # host:port the client sends to
    calls: int = 1  # -m: the client stops after this many calls
    rate: float = 10.0  # calls per second
    limit: int = 0  # concurrent calls (-l); 0: sipp's default
    timeout: float = 30.0  # -timeout: sipp quits by itself after this many seconds
    injection: Path | None = None  # -inf CSV
    stat_every: int = 1  # -fd: seconds between statistics rows (live progress reads them)
    extra: list[str] = field(default_factory=list)

    def argv(self, binary: str) -> list[str]:
        t = {"udp": "u1", "tcp": "t1"}[self.transport]
        args = [binary]
        if self.remote:
            args.append(self.remote)
        args += ["-sf", str(self.scenario), "-t", t, "-i", self.place.address, "-p", str(self.port)]
        args += ["-nostdin", "-timeout", f"{self.timeout:g}s", "-max_recv_loops", "10000"]
        if self.media_port:
            args += ["-mi", self.place.address, "-mp", str(self.media_port)]
        if self.remote:
            args += ["-m", str(self.calls), "-r", f"{self.rate:g}", "-rp", "1000"]
            if self.limit:
                args += ["-l", str(self.limit)]
        if self.injection is not None:
            args += ["-inf", str(self.injection)]
        args += ["-trace_stat", "-stf", str(self.scenario.with_suffix(".stat.csv")), "-fd", str(self.stat_every)]
        args += ["-trace_rtt", "-rtt_freq", "1", "-trace_counts", "-trace_error_codes", "-trace_err"]
        return args + self.extra


class SippProcess:
    """A running sipp; its files live beside its scenario (each process has its own folder)."""

    def __init__(self, spec: SippSpec, binary: str) -> None:
        self.spec = spec
        self.folder = spec.scenario.parent
        self.log = self.folder / "sipp.out"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                spec.place.argv(spec.argv(binary)),
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, grace: float = 10.0) -> int:
        """Wait for sipp to quit by itself (its -timeout plus `grace`); stopped by pid past that."""
        try:
            return self.proc.wait(timeout=max(0.0, self.spec.timeout + grace - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            return self.stop()

    def stop(self) -> int:
        """SIGTERM by pid (sipp writes its files and quits), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        return self.proc.returncode

    def output(self) -> SippOutput:
        return read_output(self.folder, self.spec.scenario)

    def problem(self) -> str | None:
        """sipp failing itself (not its calls): the last line it printed."""
        code = self.proc.returncode
        if code is None or code in SIPP_OK:
            return None
        lines = [x.strip() for x in self.log.read_text(errors="replace").splitlines() if x.strip()]
        # sipp's reason ("Unable to bind ...") comes before its closing screens.
        telling = [x for x in lines if "Unable" in x or "rror" in x] or lines
        return f"sipp exited {code}: {telling[0][:200] if telling else 'no output'}"


@dataclass
class SippOutput:
    """What one sipp process counted."""

    stats: dict[str, str] = field(default_factory=dict)  # the last -trace_stat row, by column
    setup_ms: list[float] = field(default_factory=list)  # INVITE -> 200 (rtd "setup"), one per call
    counts: dict[str, int] = field(default_factory=dict)  # -trace_counts: "<index>_<message>_Recv" ...
    error_codes: Counter[int] = field(default_factory=Counter)  # final codes of unexpected replies
    errors: list[str] = field(default_factory=list)  # -trace_err lines (first few)

    def number(self, column: str) -> int:
        try:
            return int(float(self.stats.get(column, "0") or 0))
        except ValueError:
            return 0

    @property
    def created(self) -> int:
        return self.number("TotalCallCreated")

    @property
    def succeeded(self) -> int:
        return self.number("SuccessfulCall(C)")

    @property
    def failed(self) -> int:
        return self.number("FailedCall(C)")

    @property
    def retransmissions(self) -> int:
        return self.number("Retransmissions(C)")

    def received(self, message: str) -> int:
        """How many `message` requests the scenario received (retransmissions not counted)."""
        return sum(v for k, v in self.counts.items() if k.endswith(f"_{message}_Recv"))


def _rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [line.rstrip(";").split(";") for line in path.read_text(errors="replace").splitlines() if line.strip()]


def parse_stat_csv(path: Path) -> dict[str, str]:
    """The last row of a -trace_stat file, by column name."""
    rows = _rows(path)
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def parse_rtt_csv(path: Path) -> list[float]:
    """Response times in ms from a -trace_rtt file (`date;ms;rtd name` rows after the header)."""
    out: list[float] = []
    for row in _rows(path)[1:]:
        if len(row) >= 2:
            with contextlib.suppress(ValueError):
                out.append(float(row[1]))
    return out


def parse_counts_csv(path: Path) -> dict[str, int]:
    rows = _rows(path)
    if len(rows) < 2:
        return {}
    out: dict[str, int] = {}
    for key, value in zip(rows[0][2:], rows[-1][2:], strict=False):
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def parse_error_codes(path: Path) -> Counter[int]:
    """`date;elapsed;404,404,503,` rows: every code of an unexpected reply."""
    codes: Counter[int] = Counter()
    for row in _rows(path):
        for code in row[-1].split(","):
            if code.strip().isdigit():
                codes[int(code)] += 1
    return codes


def read_output(folder: Path, scenario: Path) -> SippOutput:
    stem = scenario.stem

    def one(pattern: str) -> Path:
        found = sorted(folder.glob(pattern))
        return found[-1] if found else folder / "missing"

    errors_file = one(f"{stem}_*_errors.log")
    errors = errors_file.read_text(errors="replace").splitlines()[:20] if errors_file.is_file() else []
    return SippOutput(
        stats=parse_stat_csv(scenario.with_suffix(".stat.csv")),
        setup_ms=parse_rtt_csv(one(f"{stem}_*_rtt.csv")),
        counts=parse_counts_csv(one(f"{stem}_*_counts.csv")),
        error_codes=parse_error_codes(one(f"{stem}_*_error_codes.*")),
        errors=[e for e in errors if e.strip() and not e.startswith("The following events")],
    )


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]
