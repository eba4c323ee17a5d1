"""Load mode: `sipops calltest HOST --rate CPS --calls N [--concurrency C] [--duration T]`.

One sipp caller places the calls (bounded by -m N and -timeout T) through the host toward sipops'
callees (a registered phone on a proxy, the gateways' callees behind a load balancer) or a `--callee`;
live progress on a terminal, then attempts, answered, failures by final code, setup time percentiles,
retransmissions and RTP loss per direction."""

from __future__ import annotations

import ipaddress
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sipops.calltest import gateways
from sipops.calltest.checks import audio_ms
from sipops.calltest.plan import Target, local_place
from sipops.calltest.run import Prepared, Request, prepare
from sipops.calltest.scenarios import environment
from sipops.calltest.session import Session
from sipops.calltest.sipp import Place, SippOutput, SippProcess, SippSpec, percentile
from sipops.errors import ExitCode, InputError

MAX_RATE = 5000.0
MAX_CALLS = 1_000_000
MAX_CONCURRENCY = 100_000
MAX_DURATION = 86_400.0


@dataclass
class LoadRequest:
    base: Request
    rate: float | None
    calls: int | None
    concurrency: int | None
    duration: float | None


def check(lr: LoadRequest) -> tuple[float, int]:
    if lr.rate is None or lr.calls is None:
        raise InputError("load mode needs both --rate and --calls", field="--rate" if lr.rate is None else "--calls")
    if not 0 < lr.rate <= MAX_RATE:
        raise InputError(f"{lr.rate:g} calls per second: out of range (0, {MAX_RATE:g}]", field="--rate")
    if not 1 <= lr.calls <= MAX_CALLS:
        raise InputError(f"{lr.calls} calls: out of range 1..{MAX_CALLS}", field="--calls")
    if lr.concurrency is not None and not 1 <= lr.concurrency <= MAX_CONCURRENCY:
        raise InputError(f"{lr.concurrency}: out of range 1..{MAX_CONCURRENCY}", field="--concurrency")
    if lr.duration is not None and not 0 < lr.duration <= MAX_DURATION:
        raise InputError(f"{lr.duration:g} s: out of range (0, {MAX_DURATION:g}]", field="--duration")
    return lr.rate, lr.calls


def _target(p: Prepared) -> Target:
    if len(p.targets) != 1:
        raise InputError("load mode runs against one host", field="HOST")
    t = p.targets[0]
    if not p.opts.callees and not (t.has("proxy") and t.has("registrar")) and not t.has("loadbalancer"):
        raise InputError(f"{t.name} carries no calls (no proxy+registrar or loadbalancer role): name a --callee")
    return t


@dataclass
class Callees:
    procs: list[SippProcess]
    media: list[tuple[Place, int]]
    to_user: str
    domain: str


def _callees(s: Session, t: Target, transport: str, talk: float, audio: str) -> Callees:
    if s.opts.callees:
        c = s.opts.callees[0]
        return Callees([], [], c.user, c.host if c.port == 5060 else f"{c.host}:{c.port}")
    if t.has("loadbalancer"):
        gws = gateways.inbound(s, t)
        bad = gateways._unplaceable(t, "load", transport, gws)
        if bad:
            raise InputError(bad.detail, field="HOST")
        procs = gateways._start_callees(s, t, gws, "load", talk, audio)
        gateways._wait_probed(t, gws, procs)
        return Callees(
            list(procs.values()), [(p.spec.place, p.spec.media_port) for p in procs.values()], "gateway-test", t.address
        )
    callee = s.phone(t, 1)
    folder = s.folder(f"{t.name}-load-callee")
    port, media = s.sip_port(), s.media_port()
    uas = s.render("uas", folder, mode="answer", user=callee.user, audio=audio, answer_after_ms=0, require_rr=True)
    proc = s.start(SippSpec(uas, s.callee, transport, port, media_port=media, timeout=talk))
    time.sleep(0.3)
    reg, out = s.register(t, transport, [(callee, f"{s.callee.address}:{port}")])
    if reg.problem() or out.succeeded != 1:
        proc.stop()
        raise RuntimeError(f"the callee could not register on {t.name}")
    return Callees([proc], [(s.callee, media)], callee.user, t.address)


def _progress(uac: SippProcess, out: TextIO, tty: bool) -> None:
    """Calls placed/answered/failed and the current rate, once a second, until sipp quits (or its own
    -timeout has long passed: an overloaded sipp may not notice it, and wait() then stops it)."""
    deadline = time.monotonic() + uac.spec.timeout + 10
    while uac.running() and time.monotonic() < deadline:
        time.sleep(1.0)
        if tty:
            st = uac.output()
            rate = st.stats.get("CallRate(P)", "0")
            out.write(
                f"\r  placed {st.created}  answered {st.succeeded}  failed {st.failed}  "
                f"running {st.number('CurrentCall')}  {float(rate or 0):.1f} cps   "
            )
            out.flush()
    if tty:
        out.write("\n")


def summarize(uac: SippOutput, media: dict[int, Any], caller_port: int, callee_ports: list[int]) -> dict[str, Any]:
    codes: Counter[str] = Counter({str(c): n for c, n in uac.error_codes.items()})
    unexplained = uac.failed - sum(uac.error_codes.values())
    if unexplained > 0:
        codes["no answer"] += unexplained
    setup = uac.setup_ms
    doc: dict[str, Any] = {
        "attempts": uac.created,
        "answered": uac.succeeded,
        "failed": uac.failed,
        "failures": dict(codes),
        "setup_ms": {"p50": percentile(setup, 50), "p95": percentile(setup, 95), "p99": percentile(setup, 99)},
        "retransmissions": uac.retransmissions,
    }
    if media:
        a = media.get(caller_port)
        sent_out = a.audio_out if a else 0
        got_back = a.audio_in if a else 0
        got_far = sum(media[p].audio_in for p in callee_ports if p in media)
        sent_far = sum(media[p].audio_out for p in callee_ports if p in media)
        doc["rtp"] = {
            "caller_sent": sent_out,
            "callee_received": got_far,
            "callee_sent": sent_far,
            "caller_received": got_back,
            "loss_to_callee": round(1 - got_far / sent_out, 4) if sent_out and callee_ports else None,
            "loss_to_caller": round(1 - got_back / sent_far, 4) if sent_far else None,
        }
    return doc


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def text(host: str, doc: dict[str, Any]) -> list[str]:
    s = doc["setup_ms"]
    lines = [
        f"{host}: {doc['attempts']} attempts, {doc['answered']} answered, {doc['failed']} failed",
        f"  failures: {', '.join(f'{k} x{v}' for k, v in doc['failures'].items()) or 'none'}",
        f"  setup time (INVITE -> 200): p50 {_ms(s['p50'])}, p95 {_ms(s['p95'])}, p99 {_ms(s['p99'])}",
        f"  retransmissions: {doc['retransmissions']}",
    ]
    if "rtp" in doc:
        r = doc["rtp"]
        lines.append(
            f"  RTP caller->callee {r['caller_sent']}->{r['callee_received']} (loss {_pct(r['loss_to_callee'])}),"
            f" callee->caller {r['callee_sent']}->{r['caller_received']} (loss {_pct(r['loss_to_caller'])})"
        )
    return lines


def verdict(doc: dict[str, Any], loss_limit: float) -> ExitCode:
    if doc["failed"] or doc["answered"] < doc["attempts"] or doc["attempts"] == 0:
        return ExitCode.FAILURE
    rtp = doc.get("rtp") or {}
    for key in ("loss_to_callee", "loss_to_caller"):
        if rtp.get(key) is not None and rtp[key] > loss_limit:
            return ExitCode.FAILURE
    return ExitCode.OK


def exposed(t: Target, address: str) -> str | None:
    """Why the load's source would be throttled by the proxy itself (pike, then a ban), or None."""
    if not t.has("proxy") or not t.vars.get("proxy_pike", True):
        return None
    ip = ipaddress.ip_address(address)
    for cidr in t.vars.get("allowlist") or []:
        if ip in ipaddress.ip_network(str(cidr), strict=False):
            return None
    return f"{address} is not in {t.name}'s allowlist: pike will throttle the load and sipops watch may ban it"


def load(lr: LoadRequest, out: TextIO) -> ExitCode:
    rate, calls = check(lr)
    p = prepare(lr.base)
    t = _target(p)
    if not lr.base.from_netns:
        # The operator's own address: a lab allowlists it (pike never counts it, the watcher never bans
        # it), where load from an attacker namespace is what pike and the watcher are there to stop.
        here = local_place(t.address)
        p.opts.caller, p.opts.callee = here, None
    assert p.opts.caller is not None
    note = exposed(t, p.opts.caller.address)
    if note and not lr.base.as_json:
        out.write(f"note: {note}\n")
    transport = p.opts.transports[0]
    if transport not in t.transports:
        raise InputError(f"{t.name} has no {transport} socket", field="--transport")
    duration = lr.duration or calls / rate + 60
    audio = str(p.opts.audio) if p.opts.audio else ""
    with tempfile.TemporaryDirectory(prefix="sipops-calltest-") as tmp:
        workdir = lr.base.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        s = Session(environment(p.inv.dir), p.binary, workdir, p.opts, p.inv)
        try:
            doc = _drive(s, t, transport, rate, calls, lr.concurrency, duration, audio, out, lr.base.as_json)
        finally:
            s.close()
    doc.update(host=t.name, transport=transport, rate=rate, calls=calls, caller=p.opts.caller.address)
    if note:
        doc["notes"] = [note]
    code = verdict(doc, p.opts.loss_limit)
    doc["ok"] = code == ExitCode.OK
    if lr.base.as_json:
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        out.write("\n".join(text(t.name, doc)) + "\n")
    return code


def _drive(
    s: Session,
    t: Target,
    transport: str,
    rate: float,
    calls: int,
    concurrency: int | None,
    duration: float,
    audio: str,
    out: TextIO,
    quiet: bool,
) -> dict[str, Any]:
    talk = audio_ms(s) if audio else 1000
    callees = _callees(s, t, transport, duration + 30, audio)
    caller = s.caller
    folder = s.folder(f"{t.name}-load-caller")
    account = s.phone(t, 0)
    uac = s.render(
        "uac",
        folder,
        mode="call",
        domain=callees.domain,
        to_user=callees.to_user,
        from_user=account.user,
        from_domain=t.address,
        auth_user=account.user,
        password=account.password,
        audio=audio,
        audio_ms=0,
        dtmf="",
        dtmf_delay_ms=0,
        talk_ms=talk,
        expect=200,
        ring_ms=0,
        require_rr=True,
    )
    media_port = s.media_port()
    spec = SippSpec(
        uac,
        caller,
        transport,
        s.sip_port(),
        media_port=media_port,
        remote=f"{t.address}:{t.port}",
        calls=calls,
        rate=rate,
        limit=concurrency or 0,
        timeout=duration,
    )
    ports = [(caller, media_port), *callees.media] if audio else []
    with s.counters(ports, "") as media:
        proc = s.start(spec)
        _progress(proc, out, out.isatty() and not quiet)
        proc.wait()
        time.sleep(0.5)
    for c in callees.procs:
        c.stop()
    if proc.problem():
        raise RuntimeError(proc.problem())
    return summarize(proc.output(), media, media_port, [port for _, port in callees.media])
