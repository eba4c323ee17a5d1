"""The fleet executor: every command that touches hosts runs its per-host work through run_hosts().

`--forks` hosts at a time (FORKS unless given), `--serial N` in batches of N that stop after a batch with a
failure (the rest are `skipped`), one HostRun per host (status, reason, time, the command's own result) and
one summary table every command prints the same way. A host that cannot be reached fails alone: its
status is `unreachable` and the reason says why (address, port, host key, authentication).

Import-light on purpose: the CLI reads FORKS on every start.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TextIO, TypeVar

# concurrent.futures and threading load when hosts run, not on every CLI start (bench/cli.py).
if TYPE_CHECKING:
    from concurrent.futures import Future

    from sipops.remote.runner import Runner

FORKS = 10  # the one default of --forks
MAX_FORKS = 256
UNREACHABLE, FAILED, SKIPPED = "unreachable", "failed", "skipped"
# Statuses of a host whose run went as asked; any other status is a failure (exit 1).
GOOD = frozenset({"ok", "changed", "unchanged", "would change"})
NOT_STARTED = "not started: --serial stops at the first failure"

R = TypeVar("R")
Verdict = tuple[str, str]  # (status, reason)


class Unreachable(Exception):
    """The host's connection could not be opened; the message is the one-line reason."""


def describe(exc: BaseException) -> str:
    """One line `Type: message`; invoke's ThreadException hides the real error in its threads."""
    inner = [w.value for w in getattr(exc, "exceptions", []) if getattr(w, "value", None) is not None]
    if inner:
        exc = inner[0]
    if isinstance(exc, Unreachable):
        return str(exc)
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text or type(exc).__name__


@dataclass
class HostRun(Generic[R]):
    """One host's run: how it went and what the command's work returned (None when it never ran)."""

    host: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    result: R | None = None

    @property
    def failed(self) -> bool:
        return self.status not in GOOD


def _ran(result: Any) -> Verdict:
    return "ok", ""


def run_hosts(
    names: Sequence[str],
    work: Callable[[str], R],
    *,
    forks: int = FORKS,
    serial: int | None = None,
    verdict: Callable[[R], Verdict] = _ran,
    emit: Callable[[str], None] | None = None,
) -> list[HostRun[R]]:
    """Every host once, in the order given; with serial=N, N at a time, stopping after a batch with a failure.

    work(name) returns the command's result, judged by verdict(result) -> (status, reason); Unreachable
    (see reach()) makes the host `unreachable`, any other exception `failed`: the host fails alone.
    emit, when given, gets a line for each host the executor itself failed (the work reports the others).
    """

    def one(name: str) -> HostRun[R]:
        start = time.monotonic()
        try:
            result = work(name)
        except Exception as exc:  # the host's outcome, never the command's crash
            status = UNREACHABLE if isinstance(exc, Unreachable) else FAILED
            run: HostRun[R] = HostRun(name, status, describe(exc), time.monotonic() - start)
            if emit is not None:
                emit(f"{name}: {status.upper()}: {run.reason}")
            return run
        status, reason = verdict(result)
        return HostRun(name, status, " ".join(reason.split()), time.monotonic() - start, result)

    from concurrent.futures import ThreadPoolExecutor

    names = list(names)
    batches = [names[i : i + serial] for i in range(0, len(names), serial)] if serial else [names]
    runs: dict[str, HostRun[R]] = {}
    for i, batch in enumerate(batches):
        if not batch:
            continue
        with ThreadPoolExecutor(max_workers=max(1, min(forks, len(batch)))) as pool:
            for name, run in zip(batch, pool.map(one, batch), strict=True):
                runs[name] = run
        if serial and any(runs[n].failed for n in batch):
            for rest in batches[i + 1 :]:
                for n in rest:
                    runs[n] = HostRun(n, SKIPPED, NOT_STARTED)
            break
    return [runs[n] for n in names]


Column = tuple[str, Callable[[HostRun[Any]], str]]


def summary_table(runs: Sequence[HostRun[Any]], columns: Sequence[Column] = ()) -> list[str]:
    """HOST STATUS [the command's columns] TIME REASON, one row per host, in the order run."""
    rows = [["HOST", "STATUS", *(title for title, _ in columns), "TIME", "REASON"]]
    for r in runs:
        extra = [cell(r) if r.result is not None else "-" for _, cell in columns]
        rows.append([r.host, r.status, *extra, f"{r.seconds:.1f}s", r.reason])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip() for row in rows]


def failed_line(runs: Sequence[HostRun[Any]]) -> str:
    """`failed on N of M hosts: a (unreachable), b`, or '' when none failed."""
    bad = [r for r in runs if r.failed]
    if not bad:
        return ""
    names = [r.host if r.status == FAILED else f"{r.host} ({r.status})" for r in bad]
    return f"failed on {len(bad)} of {len(runs)} hosts: {', '.join(names)}"


def summarize(runs: Sequence[HostRun[Any]], emit: Callable[[str], None], columns: Sequence[Column] = ()) -> int:
    """Print the summary table (and which hosts failed); the exit code: 1 when a host failed, else 0."""
    for line in summary_table(runs, columns):
        emit(line)
    bad = failed_line(runs)
    if bad:
        emit(bad)
    return 1 if bad else 0


def printer(out: TextIO) -> Callable[[str], None]:
    """Whole lines from many threads, flushed as they come (progress while hosts work)."""
    import threading

    lock = threading.Lock()

    def emit(text: str) -> None:
        with lock:
            out.write(text.rstrip("\n") + "\n")
            out.flush()

    return emit


def _open(runner: Runner) -> Runner:
    """Open a runner's lazy connection (SSHRunner.conn) now; a runner without one (local) has nothing to open."""
    opener = getattr(getattr(runner, "conn", None), "open", None)
    if callable(opener):
        try:
            opener()
        except Exception as exc:
            runner.close()
            raise Unreachable(describe(exc)) from exc
    return runner


def _handing(first: Runner, make: Callable[[], Runner]) -> Callable[[], Runner]:
    """A runner factory whose first call gives the opened runner, later calls (a reconnect) fresh ones."""
    handed = [first]

    def factory() -> Runner:
        return handed.pop() if handed else make()

    return factory


def reach(make: Callable[[], Runner]) -> Callable[[], Runner]:
    """Open the host's connection now: Unreachable with the reason when it cannot be opened.

    Returns the runner factory the work uses (the opened runner first)."""
    try:
        runner = make()
    except Exception as exc:  # a jump host spec, a missing key: reaching the host failed
        raise Unreachable(describe(exc)) from exc
    return _handing(_open(runner), make)


class Preconnect:
    """Connections opened in the background while the controller renders (hidden behind the CPU work).

    reach(name) is reach() for a connection already under way."""

    def __init__(self, makers: dict[str, Callable[[], Runner]], forks: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.makers = makers
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(forks, len(makers) or 1)))
        self.futures: dict[str, Future[Runner]] = {n: self.pool.submit(self._open, m) for n, m in makers.items()}

    @staticmethod
    def _open(make: Callable[[], Runner]) -> Runner:
        try:
            runner = make()
        except Exception as exc:
            raise Unreachable(describe(exc)) from exc
        return _open(runner)

    def reach(self, name: str) -> Callable[[], Runner]:
        fut = self.futures.pop(name, None)
        if fut is None:
            return reach(self.makers[name])
        return _handing(fut.result(), self.makers[name])

    def close(self) -> None:
        """Close what nobody used (bad input after connecting, or a host that was never started)."""
        for fut in self.futures.values():
            with contextlib.suppress(Exception):  # a connection that never opened has nothing to close
                fut.result().close()
        self.pool.shutdown(wait=False)
