#!/usr/bin/env python3
"""bench/drain: failed calls and setup times while an edge node behind the load balancer changes, by kind
of change, side by side with a plain restart (issue 19).

    python3 bench/drain.py [--rate 20] [--seconds 30] [--transport udp|tcp] [--keep-lab]

A three-host lab (prefix sipi, 198.18.32.0/20; the first OpenSIPS build of $SIPOPS_OPENSIPS_PREFIX;
tests/e2e/drainlab.py: h3 balances over the edges h1 and h2, the callee in a1 is registered on both) is
brought up, installed and torn down at the end. `sipops calltest h3` load (RATE calls/s, 1 s talk time,
bounded by its call count and sipp's -timeout) runs through h3 while, 6 s in, h1 gets:

  plain restart           `systemctl restart opensips` on h1, what an operator does by hand
  push, route-only        a proxy_scanner_agents change: reload routes over MI, no restart
  push, modparam, drained a sip_fr_inv_timeout change: drained on h3, restarted, put back
  push, modparam, --no-drain

Per kind: calls, failed (by final code), delayed (setup >= 450 ms: waited for a retransmission or a
failover), setup p50/p99/max, and how long the action took. --transport tcp makes h3 reach the edges over
TCP (the restart then also closes that connection). Traffic stays on the lab bridge.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.drainlab import DrainLab, figures, sipops, start, stop, under_load  # noqa: E402

NETWORK = IPv4Network("198.18.32.0/20")  # no test lab uses it


def _restart(dl: DrainLab) -> tuple[int, str]:
    res = dl.exec("h1", "systemctl", "restart", "opensips")
    return res.returncode, res.stdout + res.stderr


def run(dl: DrainLab, seconds: float) -> list[tuple[str, dict[str, Any], float]]:
    rows = []
    kinds: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
        ("plain restart", {}, ()),
        ("push, route-only", {"proxy_scanner_agents": ["friendly-scanner", "sipcli", "bench-scanner"]}, ()),
        ("push, modparam, drained", {"sip_fr_inv_timeout": 61}, ()),
        ("push, modparam, --no-drain", {"sip_fr_inv_timeout": 62}, ("--no-drain",)),
    ]
    for label, change, flags in kinds:
        if change:
            dl.set_vars(("h1",), **change)

            def action(flags: tuple[str, ...] = flags) -> tuple[int, str]:
                return sipops("push", "h1", "-i", dl.inventory, *flags)
        else:

            def action(flags: tuple[str, ...] = flags) -> tuple[int, str]:
                return _restart(dl)

        before = dl.pid("h1")
        code, out, doc, took = under_load(dl, action, seconds)
        doc["restarted"] = dl.pid("h1") != before
        if code != 0:
            print(f"{label}: exit {code}\n{out}", file=sys.stderr)
        print(figures(label, doc, took) + ("" if doc["restarted"] else " (same OpenSIPS pid)"), flush=True)
        rows.append((label, doc, took))
    return rows


def table(rows: list[tuple[str, dict[str, Any], float]]) -> list[str]:
    out = ["| change on h1 under load | calls | failed | delayed >= 450 ms | setup p50 / p99 / max (ms) | restart |"]
    out.append("|---|---|---|---|---|---|")
    for label, d, _ in rows:
        p = d["setup_ms"]
        setup = f"{p['p50']:.0f} / {p['p99']:.0f} / {d['setup_max_ms']:.0f}"
        restarted = "yes" if d["restarted"] else "no"
        out.append(f"| {label} | {d['attempts']} | {d['failed']} | {d['delayed']} | {setup} | {restarted} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--transport", choices=("udp", "tcp"), default="udp", help="how h3 reaches the edges")
    args = ap.parse_args()
    if not 1 <= args.rate <= 200 or not 15 <= args.seconds <= 300:
        ap.error("--rate 1..200, --seconds 15..300")
    prefixes = [p for p in os.environ.get("SIPOPS_OPENSIPS_PREFIX", "").split(":") if p]
    if not prefixes:
        ap.error("set SIPOPS_OPENSIPS_PREFIX to an OpenSIPS build (.ci/opensips)")
    import tests.e2e.drainlab as drainlab

    drainlab.RATE = args.rate
    directory = Path(tempfile.mkdtemp(prefix="sipops-bench-drain-"))
    dl = start(directory, prefix="sipi", network=NETWORK, opensips_prefix=Path(prefixes[0]), transport=args.transport)
    try:
        rows = run(dl, args.seconds)
    finally:
        stop(dl)
    print(f"\nOpenSIPS {Path(prefixes[0]).name}, {args.rate} calls/s through h3, h3 -> edges over {args.transport}")
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
