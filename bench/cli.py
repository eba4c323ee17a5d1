#!/usr/bin/env python3
"""bench/cli: how long `sipops` takes to start, beside the interpreter's own floor.

Every command pays the start: `sipops --version` and each command's `--help` run as fresh processes
(the installed console script, bytecode cached as users run it), medians of R runs, beside
`python3 -c pass` and `python3 -c "import typer"` (the CLI framework's own floor) in the same run.
Targets (issue 16): --version <= 0.15 s, every --help <= 0.2 s.

    python3 bench/cli.py [--runs 7] [--sipops .venv/bin/sipops]

PYTHONDONTWRITEBYTECODE is removed from the environment: users run with their bytecode cached.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [
    "render", "inventory show", "install", "diff", "push", "rollback", "tune-tcp", "conns", "watch", "ban", "unban",
    "bans", "health", "cron install", "service", "logs", "lab up", "calltest", "users",
]  # fmt: skip


def timed(argv: list[str], env: dict[str, str], runs: int) -> float | None:
    """Median wall time of `runs` fresh processes (after one warm-up that writes the bytecode cache)."""
    if subprocess.run(argv, env=env, capture_output=True, check=False).returncode != 0:
        return None
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sipops", default=str(ROOT / ".venv" / "bin" / "sipops"))
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    python = str(Path(args.sipops).with_name("python3"))
    if not Path(python).exists():
        python = sys.executable
    floor = timed([python, "-c", "pass"], env, args.runs) or 0.0
    typer_floor = timed([python, "-c", "import typer"], env, args.runs) or 0.0
    rows = [("python3 -c pass", floor, None), ("python3 -c 'import typer'", typer_floor, None)]
    rows.append(("sipops --version", timed([args.sipops, "--version"], env, args.runs), 0.15))
    for command in COMMANDS:
        rows.append((f"sipops {command} --help", timed([args.sipops, *command.split(), "--help"], env, args.runs), 0.2))
    print(f"{'command':<32} {'median':>8} {'x floor':>8} {'target':>8}")
    worst = True
    for name, seconds, target in rows:
        if seconds is None:
            print(f"{name:<32} {'(not a command here)':>26}")
            continue
        ratio = f"{seconds / floor:.1f}x" if floor else "-"
        mark = "" if target is None else (f"{target:.2f}s" + (" ok" if seconds <= target else " OVER"))
        worst = worst and (target is None or seconds <= target)
        print(f"{name:<32} {seconds:>7.3f}s {ratio:>8} {mark:>8}")
    print("every start within its target" if worst else "some start is over its target")
    return 0 if worst else 1


if __name__ == "__main__":
    sys.exit(main())
