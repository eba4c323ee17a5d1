#!/usr/bin/env python3
"""bench/scan: the sipops connection scanner beside ss, psutil and pyroute2 on the same sockets.

Opens N loopback connections (2N sockets) held by child processes (all listening on one port), then
times each method in fresh processes (median of R runs) and prints its peak RSS and its ratio to ss and
psutil; then the whole-process comparison: `sipops conns --port P --json` against `ss -tan` piped into a
Python parse of the same port (and, for reference, ss filtering the port itself).
Loopback only; the children are bounded in time and killed by their pids at the end.
Targets (issue 16): in-process <= 0.5x ss, whole process <= 1.0x ss | parse. Unset PYTHONDONTWRITEBYTECODE.

    python3 bench/scan.py [--conns 50000] [--runs 5] [--skip-pyroute2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PER_CHILD = 9_000  # connections (both ends) per holder process: 18k fds fits a 20k hard RLIMIT_NOFILE
HOLD_SECONDS = 600  # the child gives up on its own after this long

# Each method aggregates the same thing: sockets per (local port, state, remote ip).
METHODS = {
    "sipops scanner": """
from sipops.host.monitor.scan import scan, TcpState
t0 = time.perf_counter()
table = scan(states=list(TcpState), netstat=False)
elapsed = time.perf_counter() - t0
n = sum(table.counts.values())
""",
    "sipops /proc fallback": """
from sipops.host.monitor.scan import scan, TcpState
t0 = time.perf_counter()
table = scan(states=list(TcpState), netstat=False, force_proc=True)
elapsed = time.perf_counter() - t0
n = sum(table.counts.values())
""",
    "sipops SYN_RECV only": """
from sipops.host.monitor.scan import scan, TcpState
t0 = time.perf_counter()
table = scan(states=[TcpState.SYN_RECV], netstat=False)
elapsed = time.perf_counter() - t0
n = sum(table.counts.values())
""",
    "ss -Htan + parse": """
import subprocess
from collections import Counter
t0 = time.perf_counter()
out = subprocess.run(["ss", "-Htan"], capture_output=True, text=True, check=True).stdout
counts = Counter()
for line in out.splitlines():
    f = line.split()
    counts[(f[3].rsplit(":", 1)[1], f[0], f[4].rsplit(":", 1)[0])] += 1
elapsed = time.perf_counter() - t0
n = sum(counts.values())
""",
    "psutil.net_connections": """
import psutil
from collections import Counter
t0 = time.perf_counter()
counts = Counter()
for c in psutil.net_connections("tcp"):
    counts[(c.laddr.port, c.status, c.raddr.ip if c.raddr else "")] += 1
elapsed = time.perf_counter() - t0
n = sum(counts.values())
""",
    "pyroute2 DiagSocket": """
import socket
from collections import Counter
from pyroute2 import DiagSocket
t0 = time.perf_counter()
counts = Counter()
with DiagSocket() as ds:
    ds.bind()
    for fam in (socket.AF_INET, socket.AF_INET6):
        for m in ds.get_sock_stats(family=fam, states=0xFFF):
            counts[(m["idiag_sport"], m["idiag_state"], m["idiag_dst"])] += 1
elapsed = time.perf_counter() - t0
n = sum(counts.values())
""",
}
# The whole-process comparison: a fresh `sipops conns` against `ss -tan` piped into a Python parse that
# keeps the same port and prints JSON (the interpreter start, the dump and the parse: what a cron job pays).
SS_PARSE = """
import json, sys
from collections import Counter
port = sys.argv[1]
counts = Counter()
for line in sys.stdin:
    f = line.split()
    local_port = f[3].rpartition(":")[2]
    if local_port == port:
        counts[(local_port, f[0], f[4].rpartition(":")[0])] += 1
print(json.dumps([[*k, n] for k, n in counts.items()]))
"""


REPORT = """
import json, sys
sys.path.insert(0, {root!r})
from sipops.host.monitor.report import build_report
params = {{"ports": [{port}], "states": None, "top": 5, "limits": False, "owners": {owners}}}
print(json.dumps([build_report(params)], indent=2))
"""


def sipops_argv() -> list[str]:
    """This checkout's `sipops` entry point (its venv's), else the one on PATH."""
    for candidate in (ROOT / ".venv" / "bin" / "sipops", shutil.which("sipops")):
        if candidate and Path(candidate).is_file():
            return [str(candidate)]
    return [sys.executable, "-m", "sipops.cli.main"]


def whole_process(port: int, runs: int) -> dict[str, float]:
    """Median wall time of each command as a fresh process (interleaved, so load hits all alike)."""
    py = shlex.quote(sys.executable)
    commands = {
        f"sipops conns --port {port} --json": [*sipops_argv(), "conns", "--port", str(port), "--json"],
        "ss -tan | python3 parse": ["sh", "-c", f"ss -Htan | {py} -c {shlex.quote(SS_PARSE)} {port}"],
        f"ss -tan sport :{port} | parse": [
            "sh",
            "-c",
            f"ss -Htan sport = :{port} | {py} -c {shlex.quote(SS_PARSE)} {port}",
        ],
        # what the report does besides the scan: naming the listener's processes walks every fd link
        "ss -tanp | python3 parse": ["sh", "-c", f"ss -Htanp | {py} -c {shlex.quote(SS_PARSE)} {port}"],
        # the same report without the CLI: the difference to the first row is the CLI's start
        "report, no CLI": [sys.executable, "-c", REPORT.format(root=str(ROOT), port=port, owners=True)],
        "report, no CLI, no owners": [sys.executable, "-c", REPORT.format(root=str(ROOT), port=port, owners=False)],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for run in range(runs):
        for name, argv in commands.items():
            if run and name.startswith("ss -tanp"):  # ~15 s at 100k sockets: once is enough
                continue
            t0 = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True, timeout=120)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


PRELUDE = f"import json, resource, sys, time\nsys.path.insert(0, {str(ROOT)!r})\n"
EPILOGUE = (
    'print(json.dumps({"elapsed": elapsed, "n": n, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n'
)


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    except (ValueError, OSError):
        sys.exit(f"bench/scan: need {need} file descriptors (RLIMIT_NOFILE hard is {hard}); run as root")


def hold(n: int, address: str, port: int) -> None:
    """Child: open n loopback connections to its listener at address:port (0: any), print the port, keep
    them until stdin closes. Every child listens on the same port (on 127.0.0.1, .2, ...), so `--port`
    selects all server-side sockets, as on a proxy's 5060."""
    raise_nofile(2 * n + 100)
    lsn = socket.socket()
    lsn.bind((address, port))
    lsn.listen(4096)
    held = []
    deadline = time.monotonic() + 120
    made = 0
    while made < n:
        if time.monotonic() > deadline:
            sys.exit(f"hold: only {made} of {n} connections after 120 s")
        batch = min(2000, n - made)
        for _ in range(batch):
            held.append(socket.create_connection(lsn.getsockname(), timeout=5))
        for _ in range(batch):
            held.append(lsn.accept()[0])
        made += batch
    print(f"READY {lsn.getsockname()[1]}", flush=True)
    select.select([sys.stdin], [], [], HOLD_SECONDS)  # until the parent closes our stdin, or the timeout


def measure(code: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + code + EPILOGUE], capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--conns", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-pyroute2", action="store_true")
    parser.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hold-at", default="127.0.0.1:0", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        host, _, port = args.hold_at.rpartition(":")
        hold(args.hold, host, int(port))
        return 0
    if not 0 < args.conns <= 200_000 or not 0 < args.runs <= 10:
        parser.error("--conns in 1..200000, --runs in 1..10")
    raise_nofile(1024)
    # A previous run's connections linger 60 s in TIME_WAIT: let them go, so every run sees the same sockets.
    sys.path.insert(0, str(ROOT))
    from sipops.host.monitor.scan import TcpState, scan

    for _ in range(75):
        lingering = sum(scan(states=[TcpState.TIME_WAIT], netstat=False).counts.values())
        if lingering < args.conns // 20:
            break
        time.sleep(1)
    started = time.monotonic()
    shares = [min(PER_CHILD, args.conns - i) for i in range(0, args.conns, PER_CHILD)]
    children: list[subprocess.Popen[str]] = []
    port = 0
    try:
        for k, share in enumerate(shares):
            argv = [sys.executable, __file__, "--hold", str(share), "--hold-at", f"127.0.0.{k + 1}:{port}"]
            child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            children.append(child)
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 180)
            line = child.stdout.readline() if ready else ""
            if not line.startswith("READY"):
                print(f"bench/scan: a connection holder failed (rc {child.poll()})", file=sys.stderr)
                return 1
            port = int(line.split()[1])
        print(f"{args.conns} loopback connections ({2 * args.conns} sockets) up in {time.monotonic() - started:.1f} s")
        print(
            f"kernel {os.uname().release}, python {sys.version.split()[0]}, {os.cpu_count()} cpus;"
            f" median of {args.runs} fresh processes"
        )
        results: dict[str, tuple[float, float, int]] = {}
        for name, code in METHODS.items():
            if name.startswith("pyroute2") and args.skip_pyroute2:
                continue
            try:
                runs = [measure(code) for _ in range(args.runs)]
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"  {name:<24} failed: {exc}")
                continue
            times = [r["elapsed"] for r in runs]
            rss = [r["rss_kb"] / 1024 for r in runs]
            results[name] = (statistics.median(times), statistics.median(rss), int(runs[0]["n"]))
        ss_t = results.get("ss -Htan + parse", (0.0, 0.0, 0))[0]
        ps_t = results.get("psutil.net_connections", (0.0, 0.0, 0))[0]
        print(f"  {'method':<24} {'time':>9} {'peak RSS':>10} {'sockets':>8} {'x ss':>7} {'x psutil':>9}")
        for name, (t, rss_mb, n) in results.items():
            r_ss = f"{t / ss_t:.2f}" if ss_t else "-"
            r_ps = f"{t / ps_t:.3f}" if ps_t else "-"
            print(f"  {name:<24} {t:>8.3f}s {rss_mb:>7.1f} MB {n:>8} {r_ss:>7} {r_ps:>9}")
        whole = whole_process(port, args.runs)
        print(f"  whole processes, port {port} ({args.conns} server-side sockets on it), median of {args.runs}:")
        ref = whole["ss -tan | python3 parse"]
        for name, t in whole.items():
            once = " (one run)" if name.startswith("ss -tanp") else ""
            print(f"  {name:<40} {t:>8.3f}s {t / ref:>7.2f}x{once}")
        mine = whole[f"sipops conns --port {port} --json"]
        ours = results.get("sipops scanner")
        if ours and ss_t and ps_t:
            verdicts = [
                ("in-process <= 0.5x ss", ours[0] <= 0.5 * ss_t),
                ("whole process <= 1.0x ss | parse", mine <= ref),
                ("report, no CLI, no owners <= 1.0x", whole["report, no CLI, no owners"] <= ref),
                ("time <= 0.1x psutil", ours[0] <= 0.1 * ps_t),
                ("peak RSS <= 64 MB", ours[1] <= 64),
            ]
            print("targets: " + ", ".join(f"{label}: {'ok' if ok else 'MISSED'}" for label, ok in verdicts))
            return 0 if all(ok for _, ok in verdicts) else 1
        return 0
    finally:
        for child in children:
            if child.stdin:
                child.stdin.close()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(child.pid, 9)
                child.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
