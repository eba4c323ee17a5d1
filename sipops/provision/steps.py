"""Install steps: a guard that says whether the work is done, and the command that does it.

A phase's steps run on the host as ONE shell script (one SSH round trip per phase). Each step
prints a marker line the controller parses: ok (guard true, nothing to do), would (check mode),
changed, or failed with the tail of the step's output.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

MARK = "@@sipops-step"


@dataclass(frozen=True)
class Step:
    name: str  # what a user reads: "install packages rsyslog nftables"
    run: str  # shell command; runs only when `unless` fails
    unless: str | None = None  # shell test: exit 0 means already done
    secret: bool = False  # the command holds credentials: never printed or logged
    upload: tuple[str, str] | None = None  # (local path, remote path) the runner sends before the phase
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
        """The commands as a user would read them (secrets masked) - what --check shows and tests assert."""
        return [("<command with credentials hidden>" if s.secret else s.run) for s in self.steps]


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
        else:
            lines.append(f"else if ( {step.run} ) >\"$log\" 2>&1; then echo '{MARK} {i} {done}'")
            tail = "" if step.secret else 'tail -n 40 "$log";'
            lines.append(f"else rc=$?; echo '{MARK} {i} failed'; {tail} exit 1; fi")
        lines.append("fi")
    return "\n".join(lines) + "\n"


def parse(steps: list[Step], output: str) -> list[StepResult]:
    """Results per step from a script's output; steps after a failure are `skipped`."""
    status: dict[int, str] = {}
    extra: dict[int, list[str]] = {}
    current = -1
    for line in output.splitlines():
        if line.startswith(MARK + " "):
            _, idx, state = line.split(" ", 2)
            current = int(idx)
            status[current] = state
            continue
        if current >= 0 and status.get(current) == "failed":
            extra.setdefault(current, []).append(line)
    out = []
    for i, step in enumerate(steps):
        text = "" if step.secret else "\n".join(extra.get(i, []))
        out.append(StepResult(step.name, status.get(i, "skipped"), text))
    return out


def q(text: str) -> str:
    return shlex.quote(text)
