#!/usr/bin/env python3
"""bench/tune: the most concurrent TCP connections a lab host holds before and after `sipops tune-tcp`.

    python3 bench/tune.py [--connections 5000] [--lab DIR] [--host NAME]

Without --lab a one-host lab with two attackers is brought up (prefix sipn, 198.18.224.0/20) and torn
down at the end. On the host a stand-in for OpenSIPS (python3 accept loop, opensips-standin.service)
takes its limits from the opensips drop-in tune-tcp writes; both attackers open --connections at once
(half each) and count those the host accepted and greeted. Then tune-tcp raises the limits for that
many, the stand-in restarts (as push restarts opensips) and the same is measured again. The host's
files are rolled back afterwards. Traffic stays on the lab bridge; every loop is bounded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Network
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sipops.lab.access import exec_argv  # noqa: E402
from sipops.lab.state import LabState  # noqa: E402
from tests.e2e.tcp_hold import STANDIN_UNIT, hold, standin_remove_script, standin_script  # noqa: E402

SIPOPS = [sys.executable, "-c", "from sipops.cli.main import run; run()"]
PORT = 5071


class Lab:
    def __init__(self, directory: Path) -> None:
        state = LabState.load(directory)
        if state is None:
            raise SystemExit(f"no lab in {directory}")
        self.state = state
        self.inventory = directory / "inventory.yaml"

    def exec(self, name: str, *command: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        argv = exec_argv(self.state, self.state.member(name), list(command))
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def measure(lab: Lab, host: str, connections: int) -> dict[str, object]:
    attackers = [m.name for m in lab.state.attackers()]
    address = lab.state.member(host).address
    limit = lab.exec(host, "systemctl", "show", "-p", "LimitNOFILESoft", "--value", STANDIN_UNIT).stdout.strip()
    t0 = time.monotonic()
    counts = hold(lab.exec, attackers, address, PORT, connections, wait=40)
    return {"limit": limit, **counts, "seconds": time.monotonic() - t0}


def run(lab: Lab, host: str, connections: int) -> None:
    ok = lab.exec(
        host, "sh", "-c", "rm -f /etc/systemd/system/opensips.service.d/sipops.conf && " + standin_script(PORT)
    )
    if ok.returncode != 0:
        raise SystemExit(f"stand-in: {ok.stderr.strip()}")
    try:
        before = measure(lab, host, connections)
        t0 = time.monotonic()
        tune = subprocess.run(
            [*SIPOPS, "tune-tcp", host, "--max-connections", str(connections), "-i", str(lab.inventory)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        tune_s = time.monotonic() - t0
        print(tune.stdout + tune.stderr)
        if tune.returncode != 0:
            raise SystemExit(f"tune-tcp failed (exit {tune.returncode})")
        lab.exec(host, "systemctl", "restart", STANDIN_UNIT)
        after = measure(lab, host, connections)
    finally:
        lab.exec(host, "sh", "-c", standin_remove_script())
        subprocess.run(
            [*SIPOPS, "rollback", host, "-i", str(lab.inventory)], capture_output=True, timeout=120, check=False
        )
    print(f"\nbench/tune on {host}: {connections} concurrent connections from {len(lab.state.attackers())} attackers")
    print(f"{'':28}{'before':>12}{'after':>12}")
    rows = [
        ("service LimitNOFILE (soft)", "limit"),
        ("connections held", "held"),
        ("accepted then closed", "closed"),
        ("never accepted", "pending"),
        ("measure seconds", "seconds"),
    ]
    for label, key in rows:
        b, a = before[key], after[key]
        fmt = (lambda v: f"{v:.1f}") if key == "seconds" else str
        print(f"{label:28}{fmt(b):>12}{fmt(a):>12}")  # type: ignore[operator]
    ratio = int(str(after["held"])) / max(1, int(str(before["held"])))
    print(f"{'held after / before':28}{'':>12}{ratio:>11.1f}x")
    print(f"tune-tcp itself (probe, push, read back): {tune_s:.1f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=5000, help="connections to open (and tune for)")
    ap.add_argument("--lab", type=Path, help="an existing lab directory (default: bring one up)")
    ap.add_argument("--host", default=None, help="lab host to measure (default: the first)")
    args = ap.parse_args()
    if not 1024 < args.connections <= 15000:
        raise SystemExit("--connections: 1025..15000 (the attackers' own descriptors bound it)")
    if args.lab:
        lab = Lab(args.lab)
        run(lab, args.host or lab.state.hosts()[0].name, args.connections)
        return
    from sipops.lab.lifecycle import UpOptions, down, up

    directory = Path(tempfile.mkdtemp(prefix="sipops-bench-tune-"))
    opts = UpOptions(hosts=1, attackers=2, prefix="sipn", network=IPv4Network("198.18.224.0/20"))
    up(directory, opts, log=lambda line: print(line, file=sys.stderr))
    try:
        lab = Lab(directory)
        run(lab, args.host or lab.state.hosts()[0].name, args.connections)
    finally:
        down(directory, log=lambda _: None)


if __name__ == "__main__":
    main()
