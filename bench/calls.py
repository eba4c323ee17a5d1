#!/usr/bin/env python3
"""bench/calls: the call rate a lab proxy sustains at < 1% failed calls, and calltest's CPU against raw sipp.

    python3 bench/calls.py [--lab DIR] [--host h1] [--rates 400,800,1200,1600,2000] [--seconds 5]
                           [--overhead-rate 200] [--overhead-calls 3000]

Without --lab a one-host lab (registrar + proxy, prefix sipx, 198.18.112.0/20)
is brought up with the first OpenSIPS build of $SIPOPS_OPENSIPS_PREFIX, installed, and torn down at the
end. Traffic stays on the lab bridge; every run is bounded by its call count and sipp's -timeout.

1. CPS: `sipops calltest HOST --rate R --calls R*seconds --no-media --json` for each rate, ascending, until
   one fails 1% or more of its calls: the last rate under 1% is what the proxy sustains (here the 2 cores
   are shared by the proxy, both sipps and the bench, so this is a floor).
2. Overhead: the same load (rate, calls) driven by `sipops calltest` and by raw sipp started directly with
   the same scenarios and arguments (a callee, its REGISTER, the caller), in the same run, both from this
   machine (the lab's allowlisted operator: pike would throttle an attacker namespace); CPU time of each
   whole process tree (RUSAGE_CHILDREN). Goal: calltest <= 1.1x sipp. calltest's own cost is about
   0.4 s of CPU per run (Python, the inventory, its extra REGISTERs): a load of a few hundred calls
   shows that more than the per-call cost, which is sipp's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sipops.calltest.plan import Account  # noqa: E402
from sipops.calltest.scenarios import environment, render, write_injection  # noqa: E402
from sipops.calltest.session import auth_keyword  # noqa: E402
from sipops.calltest.sipp import Place, SippSpec, sipp_binary  # noqa: E402
from sipops.lab.state import LabState  # noqa: E402

SIPOPS = [sys.executable, "-c", "from sipops.cli.main import run; run()"]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def calltest_load(inventory: Path, host: str, rate: float, calls: int) -> tuple[dict[str, Any], float, float]:
    """One load run through the sipops CLI: its JSON, CPU seconds of its whole tree, wall seconds."""
    cpu0, t0 = children_cpu(), time.monotonic()
    args = ["calltest", host, "-i", str(inventory), "--rate", f"{rate:g}", "--calls", str(calls), "--no-media"]
    proc = subprocess.Popen([*SIPOPS, *args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=calls / rate + 180)
    except subprocess.TimeoutExpired:
        proc.terminate()  # calltest stops its sipps on SIGTERM
        stdout, stderr = proc.communicate(timeout=60)
    cpu, wall = children_cpu() - cpu0, time.monotonic() - t0
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"calltest failed: {stdout[-500:]} {stderr[-500:]}") from None
    return doc, cpu, wall


def raw_sipp_load(state: LabState, address: str, rate: float, calls: int, work: Path) -> tuple[int, float, float]:
    """The same load with sipp alone: callee, REGISTER and caller started directly, same scenarios."""
    # Where calltest's load mode runs its phones too: this machine, the lab's allowlisted operator.
    caller = callee = Place("local", str(state.naming.bridge_address))
    env, binary, user = environment(None), sipp_binary(), f"rawsipp{os.getpid()}"
    uas = render(env, "uas", work / "uas", mode="answer", user=user, audio="", answer_after_ms=0, require_rr=True)
    reg = render(env, "register", work / "reg", domain=address, expires=300, expect=200)
    uac = render(
        env,
        "uac",
        work / "uac",
        mode="call",
        domain=address,
        to_user=user,
        from_user="rawcaller",
        from_domain=address,
        auth_user="",
        password="",
        audio="",
        audio_ms=0,
        dtmf="",
        dtmf_delay_ms=0,
        talk_ms=1000,
        expect=200,
        ring_ms=0,
        require_rr=True,
    )
    inf = write_injection(
        work / "reg" / "phones.csv", [(user, auth_keyword(Account(user, "-")), f"{callee.address}:5170")]
    )
    timeout = calls / rate + 60
    specs = {
        "uas": SippSpec(uas, callee, "udp", 5170, media_port=31000, timeout=timeout),
        "reg": SippSpec(reg, caller, "udp", 5171, remote=f"{address}:5060", calls=1, timeout=10, injection=inf),
        "uac": SippSpec(
            uac,
            caller,
            "udp",
            5172,
            media_port=31004,
            remote=f"{address}:5060",
            calls=calls,
            rate=rate,
            timeout=timeout,
        ),
    }
    cpu0, t0 = children_cpu(), time.monotonic()
    devnull = subprocess.DEVNULL
    server = subprocess.Popen(callee.argv(specs["uas"].argv(binary)), cwd=work / "uas", stdout=devnull, stderr=devnull)
    time.sleep(0.3)
    subprocess.run(caller.argv(specs["reg"].argv(binary)), cwd=work / "reg", stdout=devnull, timeout=30, check=False)
    client = subprocess.run(
        caller.argv(specs["uac"].argv(binary)), cwd=work / "uac", stdout=devnull, timeout=timeout + 30, check=False
    )
    server.terminate()
    server.wait(timeout=30)
    cpu, wall = children_cpu() - cpu0, time.monotonic() - t0
    # Unregister, so the next run's callee is the only contact of its user.
    unreg = render(env, "register", work / "unreg", domain=address, expires=0, expect=200)
    spec = SippSpec(unreg, caller, "udp", 5173, remote=f"{address}:5060", calls=1, timeout=10, injection=inf)
    subprocess.run(caller.argv(spec.argv(binary)), cwd=work / "unreg", stdout=devnull, timeout=30, check=False)
    return client.returncode, cpu, wall


def lab_up(directory: Path) -> Path:
    from sipops.lab.lifecycle import UpOptions, up

    prefixes = [p for p in os.environ.get("SIPOPS_OPENSIPS_PREFIX", "").split(":") if p]
    if not prefixes:
        raise SystemExit("set SIPOPS_OPENSIPS_PREFIX (an OpenSIPS build, see .ci/opensips) or pass --lab")
    opts = UpOptions(
        hosts=1, attackers=2, prefix="sipx", network=IPv4Network("198.18.112.0/20"), opensips_prefix=Path(prefixes[0])
    )
    result = up(directory, opts, log=lambda _: None)
    proc = subprocess.run([*SIPOPS, "install", "h1", "-i", str(result.inventory)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"install failed: {proc.stdout[-800:]}")
    return result.inventory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lab", type=Path)
    ap.add_argument("--host", default="h1")
    ap.add_argument("--rates", default="400,800,1200,1600,2000")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--overhead-rate", type=float, default=200)
    ap.add_argument("--overhead-calls", type=int, default=3000)
    ap.add_argument("--inventory", default="inventory.yaml", help="inventory file name inside the lab folder")
    args = ap.parse_args()
    own = args.lab is None
    directory = args.lab or Path(tempfile.mkdtemp(prefix="sipops-bench-calls-"))
    try:
        inventory = lab_up(directory) if own else directory / args.inventory
        state = LabState.load(directory)
        if state is None:
            raise SystemExit(f"{directory}: no lab there")
        address = state.member(args.host).address

        print(f"== CPS at < 1% failed calls ({args.host}, {args.seconds:g} s per rate, signalling only)")
        sustained = None
        for rate in [float(r) for r in args.rates.split(",")]:
            calls = max(1, int(rate * args.seconds))
            doc, _, _ = calltest_load(inventory, args.host, rate, calls)
            attempts = int(doc["attempts"]) or 1
            failed = int(doc["failed"]) + calls - attempts
            share = failed / calls
            p95 = doc["setup_ms"]["p95"]
            print(f"  {rate:7.0f} cps: {calls} calls, {failed} failed ({100 * share:.2f}%), setup p95 {p95} ms")
            if share >= 0.01:
                break
            sustained = rate
        print(f"  sustained: {sustained:g} cps" if sustained else "  sustained: below the lowest rate tried")

        rate, calls = args.overhead_rate, args.overhead_calls
        print(f"== calltest against raw sipp: {calls} calls at {rate:g} cps, CPU of each whole process tree")
        doc, cpu_ct, wall_ct = calltest_load(inventory, args.host, rate, calls)
        with tempfile.TemporaryDirectory(prefix="sipops-bench-raw-") as work:
            code, cpu_raw, wall_raw = raw_sipp_load(state, address, rate, calls, Path(work))
        print(f"  sipops calltest: {cpu_ct:.2f} s CPU, {wall_ct:.1f} s wall, {doc['answered']}/{calls} answered")
        print(f"  raw sipp:        {cpu_raw:.2f} s CPU, {wall_raw:.1f} s wall, sipp exit {code}")
        print(f"  ratio: {cpu_ct / cpu_raw:.2f}x sipp's CPU (goal <= 1.1x)" if cpu_raw else "  ratio: n/a")
    finally:
        if own:
            from sipops.lab.lifecycle import down

            down(directory, log=lambda _: None)


if __name__ == "__main__":
    main()
