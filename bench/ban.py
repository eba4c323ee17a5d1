#!/usr/bin/env python3
"""bench/ban: sipops bans beside fail2ban (Debian's package, nftables action) and one raw `nft -f` batch.

Everything runs inside a throwaway network namespace created here and deleted at the end:
  sipops restore   a watcher start restoring N live bans from its journal (one batch, remaining time)
  sipops poll      M new bans in one poll (journal + one batch + connection close), the watcher's path
                   (its syslog lines are formatted, not sent)
  raw nft -f       the same N elements (into an empty table) and M (into the table holding N) as one
                   `nft -f` file each (the floor)
  fail2ban         its server in the namespace with banaction nftables-allports: F addresses via
                   `fail2ban-client set JAIL banip …` until all are in its set, then a restart (its table
                   deleted, as after a reboot) until it restored them from its database. F is small by
                   default (fail2ban takes ~6 ms per address); per-address rates give the ratio.

    python3 bench/ban.py [--restore 100000] [--poll 10000] [--runs 5] [--f2b 1000] [--no-fail2ban]
Each run measures raw `nft -f` and sipops side by side on the same table state; medians are printed.
The raw batches hold the same elements sipops writes (timeout, time left on a restore, the rule as
comment); bare elements (timeout only) are shown too. Unset PYTHONDONTWRITEBYTECODE for fair start-up.
Targets (issue 16): restore ≤ 1.5x raw `nft -f` of the same set; 10k new bans in one poll, journal
included, ≤ 2x raw `nft -f` of those 10k.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
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


def raw_elements(count: int, base: int, *, expires: bool) -> str:
    """The elements sipops writes for `count` bans, as text: timeout, time left on a restore, the rule as comment."""
    left = " expires 3500s" if expires else ""
    return ", ".join(f'{addr(i, base)} timeout 3600s{left} comment "conn_flood"' for i in range(count))


def cpu() -> float:
    """CPU seconds of this process (all its threads) and of its waited-for children (nft processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Clocks:
    """Wall and CPU time of one measurement: the machine is shared, CPU time shows what load hides."""

    def __enter__(self) -> Clocks:
        self.wall, self.cpu = time.perf_counter(), cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu() - self.cpu


def raw_nft(batch: str) -> Clocks:
    """The floor: one `nft -f -` process loading `batch` (its own text built beforehand, not timed)."""
    with Clocks() as c:
        subprocess.run(["nft", "-f", "-"], input=batch, text=True, check=True)
    return c


def add(out: dict[str, list[float]], name: str, c: Clocks) -> None:
    out.setdefault(name, []).append(c.wall)
    out.setdefault(f"{name} [cpu]", []).append(c.cpu)


def worker(args: argparse.Namespace) -> dict[str, list[float]]:
    """Runs inside the namespace: per run, raw `nft -f` and sipops side by side on the same table state."""
    import sqlite3

    from sipops.host.monitor import allow
    from sipops.host.monitor.ban import NftBackend, NftCliExecutor, declarations, nft_executor
    from sipops.host.monitor.journal import Journal, NewBan
    from sipops.host.monitor.rules import BAN, Verdict
    from sipops.host.monitor.watch import WatchConfig, Watcher
    from sipops.monitor.watchdefaults import role_thresholds  # the common role's, declared there once

    out: dict[str, list[float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="sipops-bench-"))
    head = "\n".join(declarations()) + "\n"
    # The same elements sipops writes (comment and time left included), and bare ones (informational).
    raw_restore = head + f"add element inet sipops ban4 {{ {raw_elements(args.restore, 13, expires=True)} }}\n"
    bare_restore = (
        head
        + "add element inet sipops ban4 { "
        + ", ".join(f"{addr(i, 13)} timeout 3600s" for i in range(args.restore))
        + " }\n"
    )

    def wipe() -> None:
        subprocess.run(["nft", "delete", "table", "inet", "sipops"], capture_output=True, check=False)

    try:
        journal_path = tmp / "bans.sqlite"
        Journal(journal_path).record([NewBan(addr(i), "conn_flood", "bench", 3600) for i in range(args.restore)])
        executors = {"libnftables": nft_executor(prefer_lib=True), "nft -f": NftCliExecutor()}
        for label, executor in executors.items():
            if label == "libnftables" and type(executor).__name__ != "LibNftExecutor":
                print("  (python3-nftables not installed: libnftables rows skipped)", file=sys.stderr)
                continue
            for run in range(args.runs):
                wipe()
                add(out, "raw restore", raw_nft(raw_restore))
                wipe()
                add(out, "bare restore", raw_nft(bare_restore))
                wipe()
                cfg = WatchConfig(thresholds=role_thresholds(), ban=True, close_connections=True)
                allowlist = allow.build(host_addresses=[], env={})
                with Clocks() as c:
                    w = Watcher(cfg, Journal(journal_path), NftBackend(executor, own_chain=True), allowlist,
                                events=lambda _m: None)  # fmt: skip
                    n = w.start()
                add(out, f"sipops restore ({label})", c)
                assert n == args.restore, n
                # New addresses every run (a returning address is a refresh, not a new ban).
                base = 20 + run + (args.runs if label != "libnftables" else 0)
                verdicts = [Verdict("conn_flood", BAN, addr(i, base), 5060, 300, 200, 600, "conns=300>200")
                            for i in range(args.poll)]  # fmt: skip
                with Clocks() as c:
                    res = w.apply(verdicts)
                add(out, f"sipops poll ({label})", c)
                assert len(res.banned) == args.poll and not res.errors, res.errors
                # The floor of the poll: those 10k elements into the same table (100k + 10k live), one nft -f.
                batch = f"add element inet sipops ban4 {{ {raw_elements(args.poll, base + 100, expires=False)} }}\n"
                add(out, "raw poll", raw_nft(batch))
                if w.journal is not None:
                    w.journal.close()
                with contextlib.closing(sqlite3.connect(journal_path)) as db, db:
                    db.execute("DELETE FROM bans WHERE address LIKE ?", (f"{base}.%",))
        wipe()
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
    parser.add_argument("--runs", type=int, default=5)
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
    f2b: dict[str, float] = {}
    try:
        sh(["ip", "link", "set", "lo", "up"], ns)
        argv = [sys.executable, __file__, "--worker", "--restore", str(args.restore), "--poll", str(args.poll)]
        runs: dict[str, list[float]] = json.loads(
            sh([*argv, "--runs", str(args.runs)], ns, timeout=1200).splitlines()[-1]
        )
        if not args.no_fail2ban:
            if shutil.which("fail2ban-client") is None:
                print("fail2ban is not installed (apt-get install fail2ban): its rows are skipped")
            else:
                f2b = fail2ban(ns, args.f2b, args.f2b_limit)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    med = {name: statistics.median(v) for name, v in runs.items()}
    print(f"medians of {args.runs} runs, {args.restore} bans restored, {args.poll} new bans in one poll")
    print(f"{'measurement':<34} {'median s':>9}  runs")
    for name, values in runs.items():
        print(f"{name:<34} {med[name]:>9.3f}  {' '.join(f'{v:.3f}' for v in values)}")
    print()
    targets = {"restore": 1.5, "poll": 2.0}
    for name in med:
        if not name.startswith("sipops") or name.endswith("[cpu]"):
            continue
        kind = name.split()[1]
        ratio = med[name] / med[f"raw {kind}"]
        cpu_ratio = med[f"{name} [cpu]"] / med[f"raw {kind} [cpu]"]
        verdict = "ok" if ratio <= targets[kind] else "OVER"
        line = (
            f"{name}: {med[name]:.3f} s vs raw nft -f {med[f'raw {kind}']:.3f} s = {ratio:.2f}x "
            f"(target <= {targets[kind]}x: {verdict}); CPU {cpu_ratio:.2f}x"
        )
        if kind == "restore":
            line += f"; vs bare elements (no comment, no time left) {med[name] / med['bare restore']:.2f}x"
        print(line)
    for name, secs in f2b.items():
        n = int(name.split()[2]) or 1
        kind = "restore" if "restore" in name else "poll"
        size = args.restore if kind == "restore" else args.poll
        mine = med.get(f"sipops {kind} (libnftables)", med.get(f"sipops {kind} (nft -f)", 0.0))
        print(f"{name}: {secs:.3f} s; per address x {size} = {secs / n * size:.1f} s "
              f"(sipops {mine:.3f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
