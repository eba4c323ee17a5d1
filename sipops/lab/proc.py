"""Running the machine's tools (ip, mount, debootstrap) as argument lists, with readable failures."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class LabError(Exception):
    """A lab step failed on this machine (exit code 1); the message says which command and why."""


def run(argv: Sequence[str], *, check: bool = True, env: dict[str, str] | None = None) -> str:
    """Run a command, return its stdout; on failure raise LabError quoting the command and stderr."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, check=False)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit code {proc.returncode}"
        raise LabError(f"{' '.join(argv)}: {last}")
    return proc.stdout


def succeeds(argv: Sequence[str]) -> bool:
    """Whether a command exits 0 (its output is discarded)."""
    return subprocess.run(list(argv), capture_output=True, check=False).returncode == 0
