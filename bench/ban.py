#!/usr/bin/env python3
"""bench/ban: sipops bans beside fail2ban (Debian's package, nftables action) and one raw `nft -f` batch.

Everything runs inside a throwaway network namespace created here and deleted at the end:
  sipops restore   a watcher start restoring N live bans from its journal (one batch, remaining time)
  sipops poll      M new bans in one poll (journal + one batch + connection close), the watcher's path
  raw nft -f       the same M and N elements as one `nft -f` file (the floor)
  fail2ban         its server in the namespace with banaction nftables-allports: F addresses via
                   `fail2ban-client set JAIL banip …` until all are in its set, then a restart (its table
                   deleted, as after a reboot) until it restored them from its database. F is small by
                   default (fail2ban takes ~6 ms per address); per-address rates give the ratio.

    python3 bench/ban.py [--restore 100000] [--poll 10000] [--f2b 1000] [--no-fail2ban]
Targets (issue 7): 100k restored ≤ 1 s, 10k new bans in one poll ≤ 0.5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def addr(i: int, base: int = 10) -> str:
    return f"{base}.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def sh(argv: list[str], ns: str | None = None, stdin: str | None = None, timeout: float = 120) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + argv
    proc = subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full[:8])}: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def worker(args: argparse.Namespace) -> dict[str, float]:
    """Runs inside the namespace: the sipops and raw-nft measurements (medians of --runs)."""
    from sipops.host.monitor import allow
    from sipops.host.monitor.ban import NftBackend, NftCliExecutor, nft_executor
    from sipops.host.monitor.journal import Journal, NewBan
    from sipops.host.monitor.rules import BAN, Verdict
    from sipops.host.monitor.watch import WatchConfig, Watcher

    out: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="sipops-bench-"))
    try:
        journal_path = tmp / "bans.sqlite"
        Journal(journal_path).record([NewBan(addr(i), "conn_flood", "bench", 3600) for i in range(args.restore)])
        executors = {"libnftables": nft_executor(prefer_lib=True), "nft -f": NftCliExecutor()}
        for label, executor in executors.items():
            if label == "libnftables" and type(executor).__name__ != "LibNftExecutor":
                print("  (python3-nftables not installed: libnftables rows skipped)")
                continue
            restore, poll = [], []
            for _ in range(args.runs):
                subprocess.run(["nft", "delete", "table", "inet", "sipops"], capture_output=True, check=False)
                cfg = WatchConfig(ban=True, close_connections=True)
                allowlist = allow.build(host_addresses=[], env={})
                t0 = time.perf_counter()
                w = Watcher(cfg, Journal(journal_path), NftBackend(executor, own_chain=True), allowlist,
                            events=lambda _m: None)  # fmt: skip
                n = w.start()
                restore.append(time.perf_counter() - t0)
                assert n == args.restore, n
                verdicts = [Verdict("conn_flood", BAN, addr(i, 11), 5060, 300, 200, 600, "conns=300>200")
                            for i in range(args.poll)]  # fmt: skip
                t0 = time.perf_counter()
                res = w.apply(verdicts)
                poll.append(time.perf_counter() - t0)
                assert len(res.banned) == args.poll and not res.errors, res.errors
                Journal(journal_path).unban(addr(i, 11) for i in range(args.poll))
            out[f"sipops restore {args.restore} ({label})"] = statistics.median(restore)
            out[f"sipops poll {args.poll} ({label})"] = statistics.median(poll)
        for n, base in ((args.poll, 12), (args.restore, 13)):
            subprocess.run(["nft", "delete", "table", "inet", "sipops"], capture_output=True, check=False)
            batch = "\n".join(
                [
                    "add table inet sipops",
                    "add set inet sipops ban4 { type ipv4_addr; flags dynamic, timeout; size 1048576; }",
                    "add element inet sipops ban4 { "
                    + ", ".join(f"{addr(i, base)} timeout 3600s" for i in range(n))
                    + " }",
                ]
            )
            t0 = time.perf_counter()
            subprocess.run(["nft", "-f", "-"], input=batch, text=True, check=True)
            out[f"raw nft -f {n}"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


F2B_JAIL = "sipops-bench"


def f2b_count(ns: str) -> int:
    try:
        data = json.loads(sh(["nft", "-j", "list", "set", "inet", "f2b-table", f"addr-set-{F2B_JAIL}"], ns))
    except RuntimeError:
        return 0
    for item in data["nftables"]:
        if "set" in item:
            return len(item["set"].get("elem", []))
    return 0


def fail2ban(ns: str, count: int, limit: float) -> dict[str, float]:
    """fail2ban-server in the namespace: time to ban `count` addresses, and to restore them after a restart."""
    out: dict[str, float] = {}
    conf = Path(tempfile.mkdtemp(prefix="sipops-f2b-"))
    shutil.copytree("/etc/fail2ban", conf / "etc")
    etc = conf / "etc"
    for p in (etc / "jail.d").glob("*"):
        p.unlink()
    (conf / "empty.log").write_text("")
    (etc / "fail2ban.local").write_text(
        f"[Definition]\nlogtarget = {conf}/f2b.log\nsocket = {conf}/f2b.sock\npidfile = {conf}/f2b.pid\n"
        f"dbfile = {conf}/f2b.sqlite3\ndbpurgeage = 1d\n"
    )
    (etc / "jail.local").write_text(
        f"[DEFAULT]\nbackend = polling\nbanaction = nftables-allports\nbantime = 1h\n\n"
        f"[{F2B_JAIL}]\nenabled = true\nfilter =\nfailregex = ^never matches <HOST>$\nlogpath = {conf}/empty.log\n"
    )
    client = ["fail2ban-client", "-c", str(etc)]
    ips = [addr(i, 14) for i in range(count)]
    try:
        sh([*client, "-b", "start"], ns)
        time.sleep(1)
        t0 = time.perf_counter()
        for i in range(0, count, 500):
            sh([*client, "set", F2B_JAIL, "banip", *ips[i : i + 500]], ns)
        while f2b_count(ns) < count and time.perf_counter() - t0 < limit:
            time.sleep(0.2)
        got = f2b_count(ns)
        out[f"fail2ban ban {got}"] = time.perf_counter() - t0
        sh([*client, "stop"], ns)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "f2b-table"], capture_output=True)
        t0 = time.perf_counter()
        sh([*client, "-b", "start"], ns)
        while f2b_count(ns) < got and time.perf_counter() - t0 < limit:
            time.sleep(0.2)
        out[f"fail2ban restore {f2b_count(ns)}"] = time.perf_counter() - t0
    finally:
        subprocess.run(["ip", "netns", "exec", ns, *client, "stop"], capture_output=True, timeout=60, check=False)
        pid = conf / "f2b.pid"
        if pid.is_file():  # still running: end it by its pid
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pid.read_text().strip()), 15)
        shutil.rmtree(conf, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[1])
    parser.add_argument("--restore", type=int, default=100_000, help="live bans restored at start")
    parser.add_argument("--poll", type=int, default=10_000, help="new bans in one poll")
    parser.add_argument("--f2b", type=int, default=1000, help="addresses fail2ban bans (and restores)")
    parser.add_argument("--f2b-limit", type=float, default=120, help="seconds fail2ban gets per phase")
    parser.add_argument("--no-fail2ban", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if os.geteuid() != 0:
        print("bench/ban needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    ns = f"sipops-bench-{os.getpid()}"
    sh(["ip", "netns", "add", ns])
    try:
        sh(["ip", "link", "set", "lo", "up"], ns)
        argv = [sys.executable, __file__, "--worker", "--restore", str(args.restore), "--poll", str(args.poll)]
        results: dict[str, float] = json.loads(sh([*argv, "--runs", str(args.runs)], ns, timeout=600).splitlines()[-1])
        if not args.no_fail2ban:
            if shutil.which("fail2ban-client") is None:
                print("fail2ban is not installed (apt-get install fail2ban): its rows are skipped")
            else:
                results.update(fail2ban(ns, args.f2b, args.f2b_limit))
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    print(f"{'measurement':<44} {'seconds':>9} {'per 1k':>9}")
    for name, secs in results.items():
        n = next((int(w) for w in name.split() if w.isdigit()), 0)
        per_k = f"{secs / n * 1000:.4f}" if n else "-"
        print(f"{name:<44} {secs:>9.3f} {per_k:>9}")
    f2b_ban = next((v / int(k.split()[2]) for k, v in results.items() if k.startswith("fail2ban ban") and
                    int(k.split()[2])), None)  # fmt: skip
    f2b_restore = next((v / int(k.split()[2]) for k, v in results.items() if k.startswith("fail2ban restore") and
                        int(k.split()[2])), None)  # fmt: skip
    print()
    for name, secs in results.items():
        if not name.startswith("sipops"):
            continue
        n = int(name.split()[2])
        target = 1.0 if "restore" in name else 0.5
        verdict = "ok" if secs <= target * n / (args.restore if "restore" in name else args.poll) else "OVER"
        line = f"{name}: {secs:.3f} s (target ≤ {target} s at full size: {verdict})"
        ref = f2b_restore if "restore" in name else f2b_ban
        if ref:
            line += f"; fail2ban per address × {n} = {ref * n:.1f} s → sipops is {ref * n / secs:,.0f}× faster"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
