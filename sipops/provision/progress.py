"""Live progress of long install steps (a package download, a source build), for every host at once.

The phase script streams each running step's output back (sipops.provision.steps); a Board keeps, per
host, the step that runs, since when, and its last output line. On a terminal it redraws one status line
per running step below the regular output (`h1: opensips: build and install 3.6.8 … 41s | CC … tm.so`);
elsewhere (CI logs, a pipe) it prints a plain line for a step every `every` seconds it keeps running.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from sipops.provision.steps import StepWatch

# Escape sequences and control characters in a build's output (colours, carriage returns) would break
# the status line: removed before it is shown.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x1f\x7f]")
_UP_AND_CLEAR = "\x1b[1A\x1b[2K"


@dataclass
class Running:
    """One step running on one host."""

    host: str
    phase: str
    step: str
    started: float
    last: str = ""  # its last non-empty output line, cleaned
    reported: float = 0.0  # when a plain progress line was last printed for it


def clean(line: str) -> str:
    return " ".join(_CONTROL.sub(" ", line).split())


def _cut(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def status_line(r: Running, now: float, width: int) -> str:
    """A running step on one terminal line of `width` columns: host, phase, step, elapsed, last output.

    A long step name gives way first (down to 30 columns), then the output line, so the elapsed time
    always shows.
    """
    head = f"{r.host}: {r.phase}: "
    elapsed = f" {int(now - r.started)}s"
    room = width - 1 - len(head) - len(elapsed)  # the last column stays free: no wrap, ever
    tail = f" | {r.last}" if r.last else ""
    step = _cut(r.step, max(min(len(r.step), 30), room - len(tail)))
    return _cut(head + step + elapsed + tail, width - 1)


def plain_line(r: Running, now: float) -> str:
    """The line printed for a long step where no terminal redraws: what, how long so far, its last output."""
    line = f"{r.host}: {r.phase}: {r.step}: running for {int(now - r.started)}s"
    return line + (f"; last output: {r.last}" if r.last else "")


class Board:
    """All output of one install run: regular lines through print(), live steps through watch()."""

    def __init__(
        self,
        out: TextIO,
        *,
        live: bool,
        clock: Callable[[], float] = time.monotonic,
        width: Callable[[], int] = lambda: shutil.get_terminal_size().columns,
        every: float = 30.0,
        after: float = 1.0,
    ) -> None:
        self.out = out
        self.live = live  # a terminal: redraw status lines in place
        self.clock = clock
        self.width = width
        self.every = every  # plain mode: seconds between two lines of one step
        self.after = after  # live mode: a step shows once it has run this long (quick steps never flicker)
        self.running: dict[str, Running] = {}  # by host
        self._lock = threading.RLock()
        self._drawn = 0
        self._last_draw = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def print(self, text: str) -> None:
        with self._lock:
            self._clear()
            self.out.write(text.rstrip("\n") + "\n")
            self._draw()
            self.out.flush()

    def watch(self, host: str, phase: str) -> StepWatch:
        return _HostWatch(self, host, phase)

    def tick(self) -> None:
        """Redraw (elapsed time moves on), or print the plain lines that are due."""
        with self._lock:
            now = self.clock()
            if self.live:
                self._clear()
                self._draw()
            else:
                for r in self.running.values():
                    if now - max(r.started, r.reported) >= self.every:
                        r.reported = now
                        self.out.write(plain_line(r, now) + "\n")
            self.out.flush()

    def __enter__(self) -> Board:
        self._thread = threading.Thread(target=self._ticker, name="sipops-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._clear()
            self.out.flush()

    def _ticker(self) -> None:
        while not self._stop.wait(1.0):
            self.tick()

    def _started(self, host: str, phase: str, step: str) -> None:
        with self._lock:
            self.running[host] = Running(host, phase, step, self.clock())

    def _output(self, host: str, line: str) -> None:
        with self._lock:
            r = self.running.get(host)
            text = clean(line)
            if r is None or not text:
                return
            r.last = text
            now = self.clock()
            if self.live and now - self._last_draw >= 0.2:  # a build prints hundreds of lines a second
                self._clear()
                self._draw()
                self.out.flush()

    def _finished(self, host: str) -> None:
        with self._lock:
            if self.running.pop(host, None) is not None and self.live:
                self._clear()
                self._draw()
                self.out.flush()

    def _clear(self) -> None:
        if self._drawn:
            self.out.write(_UP_AND_CLEAR * self._drawn)
            self._drawn = 0

    def _draw(self) -> None:
        if not self.live:
            return
        now = self.clock()
        self._last_draw = now
        width = max(20, self.width())
        shown = [r for r in self.running.values() if now - r.started >= self.after]
        for r in sorted(shown, key=lambda r: r.host):
            self.out.write(status_line(r, now, width) + "\n")
        self._drawn = len(shown)


class _HostWatch(StepWatch):
    def __init__(self, board: Board, host: str, phase: str) -> None:
        self.board = board
        self.host = host
        self.phase = phase

    def started(self, step: str) -> None:
        self.board._started(self.host, self.phase, step)

    def output(self, line: str) -> None:
        self.board._output(self.host, line)

    def finished(self) -> None:
        self.board._finished(self.host)
