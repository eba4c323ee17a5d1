#!/usr/bin/env python3
"""bench/fleetban: CrowdSec decisions reaching a host's sets, sipops' watcher against crowdsec-firewall-bouncer.

    python3 bench/fleetban.py [--decisions 10000] [--bouncer-poll 10s] [--keep]

A two-host lab (prefix sipd, 198.18.80.0/20; the first OpenSIPS build of $SIPOPS_OPENSIPS_PREFIX) is
brought up and installed by sipops: h1 runs the LAPI (role crowdsec, Debian's crowdsec 1.4.6, no Central
API), h2 is a proxy whose watcher follows it. Debian's crowdsec-firewall-bouncer 0.0.25 (nftables mode,
its own table and set, its own bouncer key) is installed on h2 too: both follow the SAME decisions in
the SAME run. Nothing leaves the lab bridge; the decisions are addresses of 100.64.0.0/10 that never
send a packet. Every wait is bounded.

1. Propagation: one decision added on the LAPI (`cscli decisions add`); seconds until it is in h2's
   ban4 (sipops) and in the bouncer's set. Goal: sipops <= 5 s (the bouncer polls every 10 s by default).
2. Bulk: N decisions in one alert (POST /v1/alerts with a machine's credentials); seconds from the POST
   until all N are in each set, read on h2 by a poller (nft -j list set, every 0.2 s).
   Goal: sipops has all N live <= 1 s after its poll picks them up, and at most the bouncer's time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sipops.lab.access import exec_argv  # noqa: E402
from sipops.lab.lifecycle import UpOptions, down, up  # noqa: E402
from sipops.lab.state import LabState  # noqa: E402

SIPOPS = [sys.executable, "-m", "sipops.cli"]
NETWORK = IPv4Network("198.18.80.0/20")
BOUNCER_CFG = "/etc/crowdsec/bouncers/crowdsec-firewall-bouncer.yaml.local"

# Runs on h2: counts the elements of both sets until each holds `want` of the given addresses (or the
# time is up); prints the epoch time each got there (the lab's hosts share this machine's clock).
POLLER = r"""
import json, subprocess, sys, time
want, deadline, first = int(sys.argv[1]), time.time() + float(sys.argv[2]), sys.argv[3]
sets = {"sipops": ["inet", "sipops", "ban4"], "bouncer": ["ip", "crowdsec", "crowdsec-blacklists"]}
done = {}
def count(spec):
    out = subprocess.run(["nft", "-j", "list", "set", *spec], capture_output=True, text=True).stdout
    try:
        items = json.loads(out)["nftables"]
    except Exception:
        return 0
    n = 0
    for it in items:
        for e in it.get("set", {}).get("elem", []):
            v = e["elem"]["val"] if isinstance(e, dict) else e
            n += str(v).startswith(first)
    return n
while len(done) < 2 and time.time() < deadline:
    for name, spec in sets.items():
        if name not in done and count(spec) >= want:
            done[name] = time.time()
    time.sleep(0.2)
print(json.dumps(done))
"""

# Runs on h1 (the LAPI host, a fleet member with its own machine credentials): one alert, N decisions.
BULK = r"""
import json, sys, time, urllib.request
creds = json.load(open("/etc/sipops/crowdsec.json"))
def call(path, body, token=None):
    req = urllib.request.Request(creds["url"] + "/v1" + path, data=json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    return json.loads(urllib.request.urlopen(req, timeout=120).read() or b"null")
login = {"machine_id": creds["machine_id"], "password": creds["password"], "scenarios": []}
token = call("/watchers/login", login)["token"]
values = sys.stdin.read().split()
now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
alert = {"scenario": "bench/fleetban", "scenario_hash": "", "scenario_version": "1", "message": "bench",
         "events_count": len(values), "start_at": now, "stop_at": now, "capacity": 0, "leakspeed": "0s",
         "simulated": False, "events": [{"timestamp": now, "meta": [{"key": "bench", "value": "fleetban"}]}],
         "source": {"scope": "Range", "value": "100.64.0.0/10", "range": "100.64.0.0/10"}, "labels": None,
         "decisions": [{"duration": "1h", "origin": "crowdsec", "scenario": "bench/fleetban", "scope": "Ip",
                        "type": "ban", "value": v} for v in values]}
t0 = time.time()
call("/alerts", [alert], token)
print(json.dumps({"posted": t0, "accepted": time.time()}))
"""


class Lab:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def state(self) -> LabState:
        state = LabState.load(self.dir)
        assert state is not None
        return state

    def run(self, name: str, *cmd: str, stdin: str | None = None, timeout: float = 300) -> str:
        argv = exec_argv(self.state, self.state.member(name), list(cmd))
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{name}: {' '.join(cmd)[:80]}: {proc.stderr.strip()[-600:]}")
        return proc.stdout


def lab_up(directory: Path) -> Lab:
    prefixes = [p for p in os.environ.get("SIPOPS_OPENSIPS_PREFIX", "").split(":") if p]
    if not prefixes:
        raise SystemExit("set SIPOPS_OPENSIPS_PREFIX (an OpenSIPS build, see .ci/opensips)")
    opts = UpOptions(hosts=2, attackers=0, prefix="sipd", network=NETWORK, opensips_prefix=Path(prefixes[0]))
    result = up(directory, opts, log=lambda _: None)
    import yaml

    data = yaml.safe_load(result.inventory.read_text())
    data["hosts"]["h1"].update(roles=["crowdsec"], vars={"crowdsec_capi": False})
    data["hosts"]["h2"]["roles"] = ["proxy"]
    data["hosts"]["h2"].pop("vars", None)
    result.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = subprocess.run([*SIPOPS, "install", "all", "-i", str(result.inventory)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"install failed: {proc.stdout[-1500:]}")
    return Lab(directory)


def install_bouncer(lab: Lab, poll: str) -> None:
    """crowdsec-firewall-bouncer on h2 in nftables mode with its own key, configured before it starts."""
    lapi = lab.state.member("h1").address
    key = lab.run("h1", "cscli", "bouncers", "add", f"fw-bench-{int(time.time())}", "-o", "raw").strip()
    cfg = f"mode: nftables\nupdate_frequency: {poll}\napi_url: http://{lapi}:8080/\napi_key: {key}\n"
    lab.run("h2", "sh", "-c", f"mkdir -p /etc/crowdsec/bouncers && umask 077 && cat > {BOUNCER_CFG}", stdin=cfg)
    lab.run(
        "h2", "sh", "-c",
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
        "crowdsec-firewall-bouncer >/dev/null && systemctl restart crowdsec-firewall-bouncer",
    )  # fmt: skip
    time.sleep(3)
    lab.run("h2", "systemctl", "is-active", "crowdsec-firewall-bouncer")


def propagation(lab: Lab, timeout: float) -> dict[str, float]:
    addr = "100.127.255.1"
    poller = subprocess.Popen(
        exec_argv(lab.state, lab.state.member("h2"), ["python3", "-c", POLLER, "1", str(timeout), addr]),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    t0 = time.time()
    lab.run("h1", "cscli", "decisions", "add", "-i", addr, "-d", "1h", "-R", "bench propagation")
    out, _ = poller.communicate(timeout=timeout + 30)
    done = json.loads(out or "{}")
    lab.run("h1", "cscli", "decisions", "delete", "-i", addr)
    return {k: v - t0 for k, v in done.items()}


def bulk(lab: Lab, n: int, timeout: float) -> dict[str, float]:
    base = int(IPv4Address("100.64.0.1"))
    values = [str(IPv4Address(base + i)) for i in range(n)]
    poller = subprocess.Popen(
        exec_argv(lab.state, lab.state.member("h2"), ["python3", "-c", POLLER, str(n), str(timeout), "100.6"]),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    posted = json.loads(lab.run("h1", "python3", "-c", BULK, stdin="\n".join(values)))
    out, _ = poller.communicate(timeout=timeout + 60)
    done = json.loads(out or "{}")
    res = {k: v - posted["posted"] for k, v in done.items()}
    res["lapi_accept"] = posted["accepted"] - posted["posted"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=10000)
    ap.add_argument("--bouncer-poll", default="10s", help="the bouncer's update_frequency (its default: 10s)")
    ap.add_argument("--timeout", type=float, default=90)
    ap.add_argument("--keep", action="store_true", help="leave the lab up")
    args = ap.parse_args()
    if not 1 <= args.decisions <= 100_000:
        raise SystemExit("--decisions: 1..100000")
    directory = Path(tempfile.mkdtemp(prefix="sipops-bench-fleetban-"))
    try:
        lab = lab_up(directory)
        install_bouncer(lab, args.bouncer_poll)
        prop = propagation(lab, 30)
        big = bulk(lab, args.decisions, args.timeout)
        watch_log = lab.run("h2", "journalctl", "-u", "sipops-watch", "--no-pager", "-n", "5")
    finally:
        if not args.keep:
            down(directory, log=lambda _: None)

    def fmt(d: dict[str, float], key: str) -> str:
        return f"{d[key]:.2f} s" if key in d else "not within the timeout"

    print(f"bench/fleetban: h1 LAPI (crowdsec 1.4.6), h2 sipops watcher + crowdsec-firewall-bouncer "
          f"0.0.25 (nftables, update_frequency {args.bouncer_poll})")  # fmt: skip
    print("| measure | sipops watcher | crowdsec-firewall-bouncer |")
    print("|---|---|---|")
    print(f"| one decision: cscli add on h1 -> in h2's set | {fmt(prop, 'sipops')} | {fmt(prop, 'bouncer')} |")
    print(
        f"| {args.decisions} decisions: POST on h1 -> all in h2's set (LAPI took {big['lapi_accept']:.2f} s "
        f"to accept them) | {fmt(big, 'sipops')} | {fmt(big, 'bouncer')} |"
    )
    if "sipops" in big and "bouncer" in big:
        print(f"ratio bouncer/sipops (bulk): {big['bouncer'] / max(big['sipops'], 1e-3):.1f}x")
    print("watcher log (last lines):\n" + watch_log)


if __name__ == "__main__":
    main()
