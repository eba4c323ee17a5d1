"""A lab for pushes under call load (issue 19), shared by tests/e2e/test_drain.py and bench/drain.py.

Three hosts as `sipops lab up` makes them: h1 and h2 registrar/proxy edge nodes, h3 the load balancer
with h1 and h2 as its gateways; one attacker namespace a1 where the callee runs, registered on both
edges (registrar_persist: its registration survives an edge's restart, as in a fleet that restarts
nodes). `sipops calltest h3` load mode places the calls: caller (this machine) -> h3 -> h1|h2 -> callee.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from sipops.calltest.plan import Account, Options, lab_places, targets
from sipops.calltest.scenarios import environment
from sipops.calltest.session import Session
from sipops.calltest.sipp import SippSpec, parse_rtt_csv, sipp_binary
from sipops.inventory import load_inventory
from sipops.lab.access import exec_argv
from sipops.lab.lifecycle import UpOptions, down, up
from sipops.lab.state import LabState

CALLEE, DOMAIN = "drain", "drain.test"
RATE = 20  # calls per second through h3; calltest's talk time without media is 1 s
# A call whose setup took this long waited for a retransmission (SIP T1 is 500 ms) or a failover: hurt by
# the push although answered in the end. Undisturbed calls are set up in ~10 ms here.
DELAYED_MS = 450


def sipops(*args: str | Path) -> tuple[int, str]:
    """The CLI in this process, as a user runs it."""
    res = CliRunner().invoke(_app(), [str(a) for a in args])
    return res.exit_code, res.stdout + res.stderr


def _app() -> Any:
    from sipops.cli.main import app

    return app


@dataclass
class DrainLab:
    dir: Path
    session: Session | None = None

    @property
    def inventory(self) -> Path:
        return self.dir / "inventory.yaml"

    def exec(self, name: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        state = LabState.load(self.dir)
        assert state is not None
        argv = exec_argv(state, state.member(name), list(cmd))
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def address(self, name: str) -> str:
        state = LabState.load(self.dir)
        assert state is not None
        return state.member(name).address

    def mi(self, host: str, method: str) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1})
        argv = ["curl", "-sS", "--max-time", "5", "-X", "POST", "http://127.0.0.1:8888/mi"]
        res = self.exec(host, *argv, "-H", "Content-Type: application/json", "-d", body)
        assert res.stdout.startswith("{"), (host, method, res.stdout, res.stderr)
        return json.loads(res.stdout)["result"]

    def states(self) -> dict[str, str]:
        """h3's dispatcher: destination URI -> Active / Inactive / Probing."""
        sets = self.mi("h3", "ds_list")["PARTITIONS"][0]["SETS"]
        return {d["URI"]: d["state"] for s in sets for d in s["Destinations"]}

    def wait_all_active(self, timeout: float = 40) -> None:
        """Until h3 uses both edges again (after a push without drain its probes take h1 back)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if set(self.states().values()) == {"Active"}:
                return
            time.sleep(1)
        raise AssertionError(f"h3 does not use both edges again: {self.states()}")

    def pid(self, host: str) -> str:
        return self.exec(host, "systemctl", "show", "-p", "MainPID", "--value", "opensips").stdout.strip()

    def set_vars(self, hosts: tuple[str, ...], **extra: Any) -> None:
        data = yaml.safe_load(self.inventory.read_text())
        for name in hosts:
            data["hosts"][name]["vars"].update(extra)
        self.inventory.write_text(yaml.safe_dump(data, sort_keys=False))


def start(
    directory: Path, *, prefix: str, network: IPv4Network, opensips_prefix: Path, transport: str = "udp"
) -> DrainLab:
    """Lab up, inventory set, `sipops install all`, the callee started and registered; stop() undoes it.

    transport: how h3 reaches the edges (its gateways' transport)."""
    up(directory, UpOptions(hosts=3, attackers=1, prefix=prefix, network=network, opensips_prefix=opensips_prefix))
    dl = DrainLab(directory)
    try:
        data = yaml.safe_load(dl.inventory.read_text())
        allow = [*data["defaults"]["vars"]["allowlist"], f"{dl.address('h3')}/32"]  # h3's calls: no pike
        for name in ("h1", "h2"):
            data["hosts"][name]["vars"] = {"registrar_persist": True, "sip_domains": [DOMAIN], "allowlist": allow}
        for gw in data["hosts"]["h3"]["vars"]["gateways"]:
            gw["transport"] = transport
        dl.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        code, out = sipops("install", "all", "-i", dl.inventory)
        assert code == 0, out
        dl.session = _callee(dl, directory / "callee")
    except BaseException:
        stop(dl)
        raise
    return dl


def stop(dl: DrainLab) -> None:
    if dl.session is not None:
        dl.session.close()
    down(dl.dir, log=lambda _: None)


def _callee(dl: DrainLab, workdir: Path) -> Session:
    """One UAS in a1 that answers at once and copies Record-Route, registered as CALLEE on h1 and h2."""
    inv = load_inventory(dl.inventory)
    a1 = next(p for p in lab_places(inv) if p.name == "a1")
    workdir.mkdir()
    s = Session(environment(inv.dir), sipp_binary(), workdir, Options(transports=("udp",), caller=a1), inv)
    port = s.sip_port()
    uas = s.render("uas", s.folder("callee"), mode="answer", user=CALLEE, audio="", answer_after_ms=0, require_rr=True)
    s.start(SippSpec(uas, a1, "udp", port, media_port=s.media_port(), timeout=3600))
    time.sleep(0.3)
    for t in targets(inv, ["h1", "h2"]):
        reg, out = s.register(t, "udp", [(Account(CALLEE, "-"), f"{a1.address}:{port}")], expires=3600)
        if reg.problem() or out.succeeded != 1:
            s.close()
            raise RuntimeError(f"the callee could not register on {t.name}: {reg.problem()}")
    return s


def _sipops_bin() -> str:
    return shutil.which("sipops") or str(Path(sys.executable).parent / "sipops")


class Load:
    """`sipops calltest h3` load mode in the background: RATE calls/s for `seconds`, bounded by sipp."""

    def __init__(self, dl: DrainLab, seconds: float, rate: int = RATE) -> None:
        self.keep = dl.dir / f"load-{time.monotonic_ns()}"
        argv = [_sipops_bin(), "calltest", "h3", "-i", str(dl.inventory), "--rate", str(rate), "--keep", str(self.keep)]
        argv += ["--calls", str(int(rate * seconds)), "--duration", str(int(seconds + 60))]
        argv += ["--callee", f"sip:{CALLEE}@{DOMAIN}", "-t", "udp", "--no-media", "--dtmf", "", "--json"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self, timeout: float = 180) -> dict[str, Any]:
        """calltest's JSON, plus the calls set up late (delayed) and the slowest setup, from sipp's own files."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        if "{" not in out:
            raise RuntimeError(f"calltest exit {self.proc.returncode}: {out[-500:]} {err[-500:]}")
        doc: dict[str, Any] = json.loads(out[out.index("{") :])
        setups = [ms for f in self.keep.glob("*load-caller*/*_rtt.csv") for ms in parse_rtt_csv(f)]
        doc["delayed"] = sum(ms >= DELAYED_MS for ms in setups)
        doc["setup_max_ms"] = max(setups, default=None)
        return doc


LEAD = 3.0  # seconds of load through both edges before the action (20 calls/s: steady within a second)
TAIL = 2.0  # at least this much load after the action ends


def under_load(
    dl: DrainLab, action: Callable[[], tuple[int, str]], seconds: float = 30
) -> tuple[int, str, dict[str, Any], float]:
    """action() (a push, a restart) LEAD s into a load of `seconds`: its exit code and output, the load's
    figures, how long the action took. The load must outlast the action by TAIL s (else what the action
    cost would go unmeasured): an AssertionError says by how much it did not."""
    dl.wait_all_active()
    load = Load(dl, seconds)
    try:
        time.sleep(LEAD)
        t0 = time.monotonic()
        code, out = action()
        took = time.monotonic() - t0
    finally:
        doc = load.result()
    assert LEAD + took + TAIL <= seconds, f"the load ({seconds} s) ended before the action ({took:.1f} s) + {TAIL} s"
    return code, out, doc, took


def figures(label: str, doc: dict[str, Any], took: float) -> str:
    p = doc["setup_ms"]
    return (
        f"{label}: {doc['attempts']} calls, {doc['answered']} answered, {doc['failed']} failed {doc['failures']}, "
        f"{doc['delayed']} delayed >= {DELAYED_MS} ms, "
        f"setup p50/p99/max {p['p50']}/{p['p99']}/{doc['setup_max_ms']} ms, took {took:.1f}s"
    )
