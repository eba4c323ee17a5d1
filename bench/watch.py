#!/usr/bin/env python3
"""bench/watch: CPU of `sipops watch` with N steady inbound connections and 1 s polls, beside a
naive watcher (ss every second, parsed in Python) on the same host. Target: at most 2% of one core.

As on a real proxy, the clients are elsewhere and many: the listener and the watchers run in one
throwaway network namespace, the clients in another (--clients source addresses, 20 connections
each by default), joined by a veth pair on 198.18.248.0/22 (inside the lab range, behind its
unreachable guard route). sipops runs as the service does (sipops-watch.service): `watch --ban`
with a journal, in a host tuned for the load (--tcp-max-connections above the connections held).
Both namespaces, the link and every process started here are removed at the end; every loop is
bounded in count and time.

    python3 bench/watch.py [--conns 10000] [--clients 500] [--seconds 20]
"""

from __future__ import annotations

import argparse
import ipaddress
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SRV_NS, CLI_NS = "sipw-srv", "sipw-cli"
SRV_IP, PORT, PREFIX = "198.18.248.1", 5060, 22
CLIENT_BASE = ipaddress.IPv4Address("198.18.248.2")  # clients .248.2 up to .251.254
WARM = 5.0
HOLD_SECONDS = 300

NAIVE = r"""
import subprocess, sys, time
from collections import Counter
while True:
    out = subprocess.run(["ss", "-Htan", "( sport = :5060 )"], capture_output=True, text=True).stdout
    counts = Counter(line.split()[4].rsplit(":", 1)[0] for line in out.splitlines())
    time.sleep(1)
"""


def sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


def clients(n: int) -> list[str]:
    return [str(CLIENT_BASE + i) for i in range(n)]


def setup(n_clients: int) -> None:
    sh("sh", "-c", "ip route show 198.18.0.0/15 | grep -q unreachable || ip route add unreachable 198.18.0.0/15")
    for ns in (SRV_NS, CLI_NS):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "sipw-s", "netns", SRV_NS, "type", "veth", "peer", "name", "sipw-c", "netns", CLI_NS)
    sh("ip", "-n", SRV_NS, "addr", "add", f"{SRV_IP}/{PREFIX}", "dev", "sipw-s")
    batch = "".join(f"addr add {a}/{PREFIX} dev sipw-c\n" for a in clients(n_clients))
    subprocess.run(["ip", "-n", CLI_NS, "-batch", "-"], input=batch, text=True, check=True, capture_output=True)
    sh("ip", "-n", SRV_NS, "link", "set", "sipw-s", "up")
    sh("ip", "-n", CLI_NS, "link", "set", "sipw-c", "up")


def teardown() -> None:
    for ns in (SRV_NS, CLI_NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def serve(n: int) -> None:
    """In the server namespace: accept n connections and hold them until stdin closes."""
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    lsn = socket.socket()
    lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsn.bind((SRV_IP, PORT))
    lsn.listen(4096)
    print("LISTENING", flush=True)
    held = []
    deadline = time.monotonic() + 120
    while len(held) < n and time.monotonic() < deadline:
        held.append(lsn.accept()[0])
    print(f"READY {len(held)}", flush=True)
    select.select([sys.stdin], [], [], HOLD_SECONDS)


def connect(n: int, n_clients: int) -> None:
    """In the client namespace: open n connections from n_clients addresses, hold them until stdin closes."""
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    sources = clients(n_clients)
    held = [
        socket.create_connection((SRV_IP, PORT), timeout=5, source_address=(sources[i % n_clients], 0))
        for i in range(n)
    ]
    print(f"READY {len(held)}", flush=True)
    select.select([sys.stdin], [], [], HOLD_SECONDS)


def cpu_of(proc: psutil.Process) -> float:
    """CPU seconds of a process, its finished children (ss for the naive watcher) and live ones."""
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(argv: list[str], seconds: float) -> float:
    """Percent of one core the command uses in steady state (after WARM seconds)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        time.sleep(WARM)
        ps = psutil.Process(proc.pid)  # `ip netns exec` execs the command in place
        start, t0 = cpu_of(ps), time.monotonic()
        time.sleep(seconds)
        used, wall = cpu_of(ps) - start, time.monotonic() - t0
        if "-v" in sys.argv:
            t = ps.cpu_times()
            print(
                f"  {argv[-6:]}: user {t.user:.2f}s system {t.system:.2f}s children {t.children_user:.2f}+"
                f"{t.children_system:.2f}s threads {ps.num_threads()}",
                file=sys.stderr,
            )
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return 100.0 * used / wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=500, help="client source addresses (at most 1000)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("-v", action="store_true", help="CPU split per watcher (user, system, children)")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--connect", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if args.connect:
        connect(args.connect, args.clients)
        return 0
    if not 1 <= args.clients <= 1000:
        sys.exit("bench/watch: --clients must be 1-1000")
    teardown()
    setup(args.clients)
    state = Path(tempfile.mkdtemp(prefix="sipops-bench-watch-"))
    holders: list[subprocess.Popen[str]] = []
    try:
        srv = subprocess.Popen(
            in_ns(SRV_NS, sys.executable, __file__, "--serve", str(args.conns)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        holders.append(srv)
        assert srv.stdout is not None and srv.stdout.readline().startswith("LISTENING")
        cli = subprocess.Popen(
            in_ns(CLI_NS, sys.executable, __file__, "--connect", str(args.conns), "--clients", str(args.clients)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        holders.append(cli)
        assert cli.stdout is not None
        for proc in (srv, cli):
            line = proc.stdout.readline() if proc.stdout else ""
            if line.strip() != f"READY {args.conns}":
                sys.exit(f"bench/watch: connections not set up: {line!r}")
        run = "import sys; sys.path.insert(0, sys.argv.pop(1)); from sipops.cli.main import run; run()"
        service = ["watch", "--ban", "--journal", str(state / "bans.sqlite"), "--interval", "1", "--port", str(PORT)]
        service += ["--tcp-max-connections", str(max(4096, args.conns * 2))]
        sipops = measure(in_ns(SRV_NS, sys.executable, "-c", run, str(ROOT), *service), args.seconds)
        naive = measure(in_ns(SRV_NS, sys.executable, "-c", NAIVE), args.seconds)
    finally:
        for proc in holders:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        teardown()
        shutil.rmtree(state, ignore_errors=True)
    print(
        f"{args.conns} steady inbound connections from {args.clients} addresses, 1 s polls, "
        f"{args.seconds:.0f} s measured after {WARM:.0f} s:"
    )
    print(f"  sipops watch --ban {sipops:5.2f}% of one core   (target <= 2%)")
    print(f"  ss every second   {naive:5.2f}% of one core")
    if naive:
        print(f"  sipops / ss       {sipops / naive:5.2f}x")
    print(f"  target: {'ok' if sipops <= 2.0 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
