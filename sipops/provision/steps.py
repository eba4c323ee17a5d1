"""Install steps: a guard that says whether the work is done, and the command that does it.

A phase's steps run on the host as ONE shell script (one SSH round trip per phase). Each step
prints a marker line the controller parses: ok (guard true, nothing to do), would (check mode),
run (starting) then changed, or failed with the tail of the step's output. While a step runs, its
output streams back on the same channel (a `tail -f` of its log), so the controller can show what a
long step (a package download, a source build) is doing; see sipops.provision.progress.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

MARK = "@@sipops-step"
FAILURE_LINES = 40  # the tail of a failed step's output that comes back with the failure


@dataclass(frozen=True)
class Upload:
    """A file a step needs on the host, put there by the push agent's place op just before the step runs
    (sent only when the host's copy differs, checked and renamed into place whole; not in check mode)."""

    path: str  # on the host
    local: str = ""  # a file on this machine (the wheelhouse, a release tarball) ...
    content: bytes | None = None  # ... or these bytes (a file sipops writes: the apt source list)

    def data(self) -> bytes:
        return self.content if self.content is not None else Path(self.local).read_bytes()


@dataclass(frozen=True)
class Step:
    name: str  # what a user reads: "install packages rsyslog nftables"
    run: str  # shell command; runs only when `unless` fails
    unless: str | None = None  # shell test: exit 0 means already done
    secret: bool = False  # the command holds credentials: never printed or logged
    upload: Upload | None = None  # placed just before the step (its guard then sees it)
    verify: bool = False  # a check, not a change: success reports `ok`, and it runs in check mode too


@dataclass(frozen=True)
class StepResult:
    name: str
    status: str  # ok | would | changed | failed | skipped
    output: str = ""


@dataclass
class PhasePlan:
    name: str  # "dependencies", "opensips", ...
    steps: list[Step] = field(default_factory=list)
    note: str = ""  # why the phase has nothing to do, or what it adopts

    def commands(self) -> list[str]:
        """The commands as a user would read them (secrets masked, uploads named) - what tests assert."""
        return [_shown(s) for s in self.steps]


def _shown(step: Step) -> str:
    if step.secret:
        return "<command with credentials hidden>"
    if step.upload is None:
        return step.run
    up = step.upload
    what = up.local if up.content is None else " / ".join(up.content.decode(errors="replace").splitlines())
    return f"[sipops agent puts {up.path}: {what}] {step.run}"


def script(steps: list[Step], *, check: bool, env: dict[str, str] | None = None) -> str:
    """A POSIX sh script running each step once, stopping at the first failure."""
    lines = ["#!/bin/sh", "set -u", "umask 022", "export LC_ALL=C"]
    for key, value in sorted((env or {}).items()):
        lines.append(f"export {key}={shlex.quote(value)}")
    lines.append("log=$(mktemp /tmp/sipops-step.XXXXXX) || exit 97")
    lines.append("trap 'rm -f \"$log\"' EXIT")
    for i, step in enumerate(steps):
        guard = step.unless or "false"
        lines.append(f"if ( {guard} ) >/dev/null 2>&1; then echo '{MARK} {i} ok'")
        done = "ok" if step.verify else "changed"
        if check and not step.verify:
            lines.append(f"else echo '{MARK} {i} would'")
            lines.append("fi")
            continue
        lines.append(f"else echo '{MARK} {i} run'")
        # The step writes to its log (never to the channel: a daemon it starts cannot hold the channel open)
        # and reads nothing from it (stdin is this script). A secret step's output never leaves the host.
        # Emptied before the fork: the tail below must not see the previous step's output.
        lines.append(f'  : >"$log"; ( {step.run} ) >>"$log" 2>&1 </dev/null & pid=$!')
        if not step.secret:
            lines.append('  tail -n +1 -f "$log" 2>/dev/null & t=$!; wait $pid; rc=$?; kill $t 2>/dev/null; wait $t')
        else:
            lines.append("  wait $pid; rc=$?")
        # The marker starts a line of its own even when the streamed output stopped mid-line.
        lines.append(f"  if [ $rc -eq 0 ]; then printf '\\n%s\\n' '{MARK} {i} {done}'")
        tail = "" if step.secret else f'tail -n {FAILURE_LINES} "$log";'
        lines.append(f"  else printf '\\n%s\\n' '{MARK} {i} failed'; {tail} exit 1; fi")
        lines.append("fi")
    return "\n".join(lines) + "\n"


def parse(steps: list[Step], output: str) -> list[StepResult]:
    """Results per step from a script's output; steps after a failure are `skipped`.

    A step still `run`ning when the output ends (the connection or the host went away) failed, with the
    last lines it streamed.
    """
    status: dict[int, str] = {}
    extra: dict[int, list[str]] = {}
    current = -1
    for line in output.splitlines():
        if line.startswith(MARK + " "):
            _, idx, state = line.split(" ", 2)
            current = int(idx)
            status[current] = state
            extra.pop(current, None)  # what it streamed while running was progress; a failure's tail follows
            continue
        if current >= 0 and status.get(current) in ("failed", "run") and line:
            kept = extra.setdefault(current, [])
            kept.append(line)
            del kept[:-FAILURE_LINES]
    out = []
    for i, step in enumerate(steps):
        state = status.get(i, "skipped")
        text = "" if step.secret else "\n".join(extra.get(i, []))
        out.append(StepResult(step.name, "failed" if state == "run" else state, text))
    return out


class StepWatch:
    """What a live view is told while a phase script runs; the default ignores it all."""

    def started(self, step: str) -> None:
        return None

    def output(self, line: str) -> None:
        return None

    def finished(self) -> None:
        return None


class StepStream:
    """Turns a phase script's output, as it arrives in chunks, into StepWatch calls."""

    def __init__(self, steps: list[Step], watch: StepWatch) -> None:
        self.steps = steps
        self.watch = watch
        self._partial = b""
        self._running = False

    def feed(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            self._line(raw.decode(errors="replace"))

    def close(self) -> None:
        if self._running:
            self._running = False
            self.watch.finished()

    def _line(self, line: str) -> None:
        if line.startswith(MARK + " "):
            _, idx, state = line.split(" ", 2)
            if self._running:
                self._running = False
                self.watch.finished()
            if state == "run" and idx.isdigit() and int(idx) < len(self.steps):
                self._running = True
                self.watch.started(self.steps[int(idx)].name)
        elif self._running and line.strip():
            self.watch.output(line)


def q(text: str) -> str:
    return shlex.quote(text)
