"""Load balancer checks: calls reach every gateway of the inbound set, and still complete when one of
them stops mid-test. sipops runs a callee at each gateway's address (a lab attacker namespace, a
`--from-netns` namespace or this machine); the callee answers OPTIONS, so the balancer's probing sees
it up, and counts the INVITEs it got: that count is the per-gateway figure."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sipops.calltest.checks import why
from sipops.calltest.plan import Target, place_for
from sipops.calltest.report import CheckResult, failed, ok, skipped
from sipops.calltest.session import Session
from sipops.calltest.sipp import Place, SippProcess, SippSpec, percentile

# Algorithms that spread calls over a set (round robin, hashes of random Call-IDs, random, weights,
# load); the others (first in set, hash of a fixed header) send every test call to one gateway.
SPREADING = {0, 4, 6, 9, 10, 11}


@dataclass
class Gateway:
    name: str
    address: str
    port: int
    transport: str
    probe: bool
    place: Place | None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.address}:{self.port})"


def inbound(s: Session, t: Target) -> list[Gateway]:
    wanted = t.vars.get("lb_inbound_set", 1)
    out = []
    for g in t.vars.get("gateways") or []:
        if g.get("set", 1) == wanted and g.get("weight", 1) > 0:
            place = place_for(str(g["address"]), s.opts.extra_places)
            out.append(
                Gateway(
                    g["name"],
                    str(g["address"]),
                    int(g.get("port", 5060)),
                    g.get("transport", "udp"),
                    bool(g.get("probe", True)),
                    place,
                )
            )
    return out


def _unplaceable(t: Target, check: str, transport: str, gws: list[Gateway]) -> CheckResult | None:
    if not gws:
        return skipped(t.name, check, transport, f"no gateway in set {t.vars.get('lb_inbound_set', 1)}")
    lost = [g for g in gws if g.place is None]
    if lost:
        names = ", ".join(g.label for g in lost)
        return failed(
            t.name,
            check,
            transport,
            f"no place to run a callee at gateway {names}: not a lab attacker, --from-netns or this "
            "machine's address (point the gateway there, or test a real one with --callee)",
        )
    tls = [g for g in gws if g.transport not in ("udp", "tcp")]
    if tls:
        return skipped(t.name, check, transport, f"gateway {tls[0].label} speaks {tls[0].transport}")
    return None


def _caller(s: Session, gws: list[Gateway]) -> Place | None:
    """Calls must not come from a gateway's address: the balancer would take them for the gateway's own."""
    taken = {g.address for g in gws}
    for p in [s.caller, s.callee, *s.opts.extra_places]:
        if p.address not in taken:
            return p
    return None


def _start_callees(
    s: Session, t: Target, gws: list[Gateway], check: str, talk: float, audio: str = ""
) -> dict[str, SippProcess]:
    procs: dict[str, SippProcess] = {}
    for g in gws:
        assert g.place is not None
        folder = s.folder(f"{t.name}-{check}-{g.name}")
        uas = s.render("uas", folder, mode="answer", user=g.name, audio=audio, answer_after_ms=100, require_rr=True)
        spec = SippSpec(uas, g.place, g.transport, g.port, media_port=s.media_port(), timeout=talk + 120)
        procs[g.name] = s.start(spec)
    return procs


def _wait_probed(t: Target, gws: list[Gateway], procs: dict[str, SippProcess]) -> None:
    """Until each probed gateway's callee answered an OPTIONS (the balancer sees it up), bounded."""
    interval = int(t.vars.get("lb_ping_interval", 10) or 0)
    if not interval:
        time.sleep(1)
        return
    deadline = time.monotonic() + 2 * interval + 3
    while time.monotonic() < deadline:
        if all(procs[g.name].output().received("OPTIONS") > 0 for g in gws if g.probe):
            time.sleep(0.5)
            return
        time.sleep(0.5)


def _caller_spec(
    s: Session,
    t: Target,
    transport: str,
    caller: Place,
    check: str,
    calls: int,
    rate: float,
    talk_ms: int,
    timeout: float,
) -> SippSpec:
    folder = s.folder(f"{t.name}-{check}-caller-{transport}")
    uac = s.render(
        "uac",
        folder,
        mode="call",
        domain=t.address,
        to_user="gateway-test",
        from_user=f"sipops-ct{s.run_id}",
        from_domain=caller.address,
        auth_user="",
        password="",
        audio="",
        audio_ms=0,
        dtmf="",
        dtmf_delay_ms=0,
        talk_ms=talk_ms,
        expect=200,
        ring_ms=0,
        require_rr=True,
    )
    return SippSpec(
        uac,
        caller,
        transport,
        s.sip_port(),
        media_port=s.media_port(),
        remote=f"{t.address}:{t.port}",
        calls=calls,
        rate=rate,
        timeout=timeout,
    )


def _counts(procs: dict[str, SippProcess]) -> dict[str, int]:
    return {name: p.output().received("INVITE") for name, p in procs.items()}


def spread(s: Session, t: Target, transport: str) -> CheckResult:
    gws = inbound(s, t)
    bad = _unplaceable(t, "gateways", transport, gws)
    if bad:
        return bad
    caller = _caller(s, gws)
    if caller is None:
        return failed(t.name, "gateways", transport, "every test place is a gateway: name another with --from-netns")
    engine = t.vars.get("lb_engine", "dispatcher")
    spreads = engine == "load_balancer" or t.vars.get("lb_algorithm", 4) in SPREADING
    calls = (2 if t.vars.get("lb_algorithm", 4) == 4 else 4) * len(gws)
    # load_balancer picks the least loaded gateway: overlapping calls make the loads differ.
    talk_ms = 1500 if engine == "load_balancer" else 300
    procs = _start_callees(s, t, gws, "gateways", talk_ms / 1000 + calls)
    try:
        _wait_probed(t, gws, procs)
        uac = s.run(_caller_spec(s, t, transport, caller, "gateways", calls, 5, talk_ms, calls / 5 + 20))
        time.sleep(1.1)  # the callees' last count rows
    finally:
        for p in procs.values():
            p.stop()
    out, per_gw = uac.output(), _counts(procs)
    data: dict[str, Any] = {"calls": calls, "answered": out.succeeded, "per_gateway": per_gw}
    if uac.problem() or out.succeeded != calls:
        return failed(t.name, "gateways", transport, f"{out.succeeded}/{calls} calls answered: {why(out, uac)}", **data)
    idle = [g.label for g in gws if per_gw.get(g.name, 0) == 0]
    shares = ", ".join(f"{g.name} {per_gw.get(g.name, 0)}" for g in gws)
    if idle and spreads:
        return failed(t.name, "gateways", transport, f"gateway {', '.join(idle)} received no calls ({shares})", **data)
    return ok(t.name, "gateways", transport, f"{calls}/{calls} calls answered by the gateways: {shares}", **data)


def failover(s: Session, t: Target, transport: str) -> CheckResult:
    gws = inbound(s, t)
    bad = _unplaceable(t, "failover", transport, gws)
    if bad:
        return bad
    if len(gws) < 2:
        return skipped(t.name, "failover", transport, "one gateway in the set: nothing to fail over to")
    caller = _caller(s, gws)
    if caller is None:
        return failed(t.name, "failover", transport, "every test place is a gateway: name another with --from-netns")
    fr_timeout = float(t.vars.get("sip_fr_timeout", 5))
    calls, rate = 3 * len(gws), 2.0
    victim = gws[-1]
    procs = _start_callees(s, t, gws, "failover", calls / rate + calls * fr_timeout + 30)
    try:
        _wait_probed(t, gws, procs)
        # Calls up before the stop: the balancer has every gateway in use when one dies. A call still in
        # progress on the dying gateway cannot be saved by anyone, so it stops between calls.
        warm = s.run(_caller_spec(s, t, transport, caller, "failover-before", len(gws), rate, 300, 20))
        before = procs[victim.name].output().received("INVITE")
        procs[victim.name].stop()
        timeout = calls / rate + calls * fr_timeout + 20
        uac = s.run(_caller_spec(s, t, transport, caller, "failover", calls, rate, 300, timeout))
    finally:
        for p in procs.values():
            p.stop()
    if warm.problem() or warm.output().succeeded != len(gws):
        w = warm.output()
        return failed(t.name, "failover", transport, f"before the stop: {w.succeeded}/{len(gws)} calls: {why(w, warm)}")
    out = uac.output()
    slow = [ms for ms in out.setup_ms if ms >= fr_timeout * 1000 * 0.8]
    data: dict[str, Any] = {
        "stopped": victim.name,
        "calls": calls,
        "answered": out.succeeded,
        "failed_over": len(slow),
        "victim_calls_before_stop": before,
        "setup_p95_ms": percentile(out.setup_ms, 95),
    }
    if uac.problem() or out.succeeded != calls:
        return failed(
            t.name,
            "failover",
            transport,
            f"gateway {victim.label} stopped mid-test: {calls - out.succeeded}/{calls} calls failed: {why(out, uac)}",
            **data,
        )
    return ok(
        t.name,
        "failover",
        transport,
        f"gateway {victim.label} stopped mid-test: {calls}/{calls} calls completed, {len(slow)} failed over "
        f"from it after ~{fr_timeout:g} s",
        **data,
    )
