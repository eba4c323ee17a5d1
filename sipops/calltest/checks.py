"""The checks of registrar and proxy hosts: phones REGISTER, calls between registered phones with media
both ways and DTMF, CANCEL of a ringing call, 404 for an unknown user, calls to a `--callee`."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sipops.calltest.media import PortCount
from sipops.calltest.plan import Account, CalleeUri, Target
from sipops.calltest.report import CheckResult, failed, ok
from sipops.calltest.scenarios import read_pcap
from sipops.calltest.session import Session
from sipops.calltest.sipp import SippOutput, SippProcess, SippSpec, percentile

DTMF_DELAY_MS = 300  # after the audio: the digits come once the callee's answer has been heard


def why(out: SippOutput, proc: SippProcess | None = None) -> str:
    """The reason calls failed, in the words of the step that broke."""
    problem = proc.problem() if proc else None
    if problem:
        return problem
    text = " ".join(out.errors)
    if "Record-Route: not found" in text:
        return "no Record-Route in the dialog: the proxy does not record-route, so ACK/BYE go around it"
    if out.error_codes:
        codes = ", ".join(f"{c} x{n}" for c, n in out.error_codes.most_common())
        return f"answered {codes}"
    if "while expecting" in text:
        return text[text.index("while expecting") :][:160]
    if out.errors:
        return out.errors[0][-160:]
    return "no final answer before the timeout"


def audio_ms(session: Session) -> int:
    audio = session.opts.audio
    return int(read_pcap(audio).seconds * 1000) + 100 if audio else 0


def talk_ms(session: Session, digits: str) -> int:
    """The pause before the BYE: after the digits when there are some (sipp's play_dtmf spends 200 ms of
    tone and as much of silence on each), else after the audio."""
    return 450 * len(digits) + 800 if digits else audio_ms(session) + 500


def register(s: Session, t: Target, transport: str) -> CheckResult:
    phones = [(s.phone(t, n), f"{s.caller.address}:{s.sip_port()}") for n in range(s.opts.phones)]
    proc, out = s.register(t, transport, phones)
    s.register(t, transport, phones, expires=0)  # leave no test contact behind
    n = len(phones)
    if proc.problem() is None and out.succeeded == n:
        said = f"{n}/{n} phones registered (200 listing the contact)"
        return ok(t.name, "register", transport, said, setup_p50_ms=percentile(out.setup_ms, 50))
    return failed(t.name, "register", transport, f"{out.succeeded}/{n} phones registered: {why(out, proc)}")


def wrong_password(s: Session, t: Target, transport: str) -> CheckResult:
    account = s.phone(t, 0)
    bad = Account(account.user, account.password + "-wrong")
    proc, out = s.register(t, transport, [(bad, f"{s.caller.address}:{s.sip_port()}")], expect=401)
    if proc.problem() is None and out.succeeded == 1:
        return ok(t.name, "wrong-password", transport, f"a wrong password for {bad.user} is refused (401/403)")
    return failed(t.name, "wrong-password", transport, f"a wrong password was not refused: {why(out, proc)}")


@dataclass
class CallOutcome:
    caller: SippOutput
    callee: SippOutput | None
    media: dict[int, PortCount]
    caller_media: int
    callee_media: int


def _media_verdict(s: Session, o: CallOutcome, calls: int, digits: str, far_end_known: bool) -> str | None:
    """None when media went both ways (and the digits arrived), else the reason."""
    if s.opts.audio is None:
        return None
    a, b = o.media.get(o.caller_media, PortCount()), o.media.get(o.callee_media, PortCount())
    if a.audio_out == 0:
        return "the caller sent no RTP (no media address in the answer's SDP?)"
    if far_end_known:
        if b.audio_in == 0:
            return f"one-way audio: the callee received none of the {a.audio_out} RTP packets the caller sent"
        if b.audio_out and a.audio_in == 0:
            return f"one-way audio: the caller received none of the {b.audio_out} RTP packets the callee sent"
        ways = (("caller->callee", a.audio_out, b.audio_in), ("callee->caller", b.audio_out, a.audio_in))
        for label, sent, got in ways:
            if sent and 1 - got / sent > s.opts.loss_limit:
                return f"RTP loss {100 * (1 - got / sent):.1f}% {label} ({got}/{sent} packets)"
        missing = [d for d, n in (b.dtmf_in or {}).items() if n == 0]
        if digits and missing:
            return f"DTMF: the callee did not receive digit(s) {''.join(missing)} of {digits}"
    elif a.audio_in == 0:
        return f"one-way audio: the caller received no RTP from {calls and 'the callee'}"
    return None


def _media_data(o: CallOutcome) -> dict[str, int]:
    a, b = o.media.get(o.caller_media, PortCount()), o.media.get(o.callee_media, PortCount())
    return {
        "rtp_caller_sent": a.audio_out,
        "rtp_callee_received": b.audio_in,
        "rtp_callee_sent": b.audio_out,
        "rtp_caller_received": a.audio_in,
        "dtmf_packets_received": sum((b.dtmf_in or {}).values()),
    }


def call(s: Session, t: Target, transport: str, *, mode: str = "call", check: str = "call") -> CheckResult:
    """A call between two registered phones through `t` (mode call, or cancel of a ringing call)."""
    caller, callee = s.phone(t, 0), s.phone(t, 1)
    folder = s.folder(f"{t.name}-{check}-{transport}")
    digits = s.opts.dtmf if mode == "call" else ""
    talk = talk_ms(s, digits) + (audio_ms(s) + DTMF_DELAY_MS if digits else 0)
    audio = str(s.opts.audio) if s.opts.audio and mode == "call" else ""
    uas_port, uas_media = s.sip_port(), s.media_port()
    uas = s.render(
        "uas",
        folder / "callee",
        mode="answer" if mode == "call" else "ring",
        user=callee.user,
        audio=audio,
        answer_after_ms=200,
        require_rr=True,
    )
    callee_proc = s.start(SippSpec(uas, s.callee, transport, uas_port, media_port=uas_media, timeout=talk / 1000 + 40))
    try:
        time.sleep(0.3)  # the callee's socket is bound before the registrar hands out its contact
        reg, reg_out = s.register(t, transport, [(callee, f"{s.callee.address}:{uas_port}")])
        if reg.problem() or reg_out.succeeded != 1:
            return failed(t.name, check, transport, f"the callee could not register: {why(reg_out, reg)}")
        uac = s.render(
            "uac",
            folder / "caller",
            mode=mode,
            domain=t.address,
            to_user=callee.user,
            from_user=caller.user,
            from_domain=t.address,
            auth_user=caller.user,
            password=caller.password,
            audio=audio,
            audio_ms=audio_ms(s),
            dtmf=digits,
            dtmf_delay_ms=DTMF_DELAY_MS,
            talk_ms=talk_ms(s, digits),
            expect=200,
            ring_ms=500,
            require_rr=True,
        )
        media_port = s.media_port()
        spec = SippSpec(
            uac,
            s.caller,
            transport,
            s.sip_port(),
            media_port=media_port,
            remote=f"{t.address}:{t.port}",
            calls=1,
            timeout=talk / 1000 + 20,
        )
        with s.counters([(s.caller, media_port), (s.callee, uas_media)], digits) as media:
            uac_proc = s.run(spec)
            time.sleep(0.5)  # the last RTP packets in flight
        callee_proc.stop()
        outcome = CallOutcome(uac_proc.output(), callee_proc.output(), media, media_port, uas_media)
    finally:
        callee_proc.stop()
        s.register(t, transport, [(callee, f"{s.callee.address}:{uas_port}")], expires=0)
    return judge_call(s, t, transport, check, mode, outcome, uac_proc, digits)


def judge_call(
    s: Session, t: Target, transport: str, check: str, mode: str, o: CallOutcome, proc: SippProcess, digits: str
) -> CheckResult:
    c = o.callee
    data: dict[str, object] = {"setup_ms": percentile(o.caller.setup_ms, 50), **_media_data(o)}
    if proc.problem() or o.caller.succeeded != 1:
        reason = why(o.caller, proc)
        if c is not None and not o.caller.error_codes:
            if c.received("INVITE") == 0:
                reason = f"the INVITE never reached the callee ({reason})"
            elif mode == "call" and c.received("ACK") == 0:
                reason = f"the ACK never reached the callee: route set or remote target ({reason})"
            elif mode == "call" and c.received("BYE") == 0:
                reason = f"the BYE never reached the callee: route set or remote target ({reason})"
            elif mode == "cancel" and c.received("CANCEL") == 0:
                reason = f"the CANCEL never reached the callee ({reason})"
        return failed(t.name, check, transport, reason, **data)
    if mode == "cancel":
        return ok(t.name, check, transport, "the ringing call was cancelled: 180, CANCEL 200, 487 ACKed", **data)
    media = _media_verdict(s, o, 1, digits, True)
    if media:
        return failed(t.name, check, transport, media, **data)
    said = "INVITE/180/200/ACK through the route set, BYE/200"
    if s.opts.audio:
        said += f"; RTP {data['rtp_caller_sent']}->{data['rtp_callee_received']}"
        said += f" and {data['rtp_callee_sent']}->{data['rtp_caller_received']}"
    if digits:
        said += f"; DTMF {digits} received"
    return ok(t.name, check, transport, said, **data)


def unknown_user(s: Session, t: Target, transport: str) -> CheckResult:
    caller = s.phone(t, 0)
    folder = s.folder(f"{t.name}-unknown-{transport}")
    uac = s.render(
        "uac",
        folder,
        mode="reject",
        domain=t.address,
        to_user=f"nobody-{s.run_id}",
        from_user=caller.user,
        from_domain=t.address,
        auth_user=caller.user,
        password=caller.password,
        audio="",
        audio_ms=0,
        dtmf="",
        dtmf_delay_ms=0,
        talk_ms=0,
        expect=404,
        ring_ms=0,
        require_rr=False,
    )
    proc = s.run(
        SippSpec(
            uac,
            s.caller,
            transport,
            s.sip_port(),
            media_port=s.media_port(),
            remote=f"{t.address}:{t.port}",
            calls=1,
            timeout=15,
        )
    )
    out = proc.output()
    if proc.problem() is None and out.succeeded == 1:
        return ok(t.name, "unknown-user", transport, "a call to an unregistered user gets 404")
    return failed(t.name, "unknown-user", transport, f"expected 404: {why(out, proc)}")


def callee_uri(s: Session, t: Target, transport: str, callee: CalleeUri) -> CheckResult:
    """A call through `t` to a real extension the user named; media counted at our end only."""
    caller = s.phone(t, 0)
    folder = s.folder(f"{t.name}-callee-{transport}")
    digits = s.opts.dtmf
    talk = talk_ms(s, digits) + (audio_ms(s) + DTMF_DELAY_MS if digits else 0)
    audio = str(s.opts.audio) if s.opts.audio else ""
    domain = callee.host if callee.port == 5060 else f"{callee.host}:{callee.port}"
    uac = s.render(
        "uac",
        folder,
        mode="call",
        domain=domain,
        to_user=callee.user,
        from_user=caller.user,
        from_domain=t.address,
        auth_user=caller.user,
        password=caller.password,
        audio=audio,
        audio_ms=audio_ms(s),
        dtmf=digits,
        dtmf_delay_ms=DTMF_DELAY_MS,
        talk_ms=talk_ms(s, digits),
        expect=200,
        ring_ms=0,
        require_rr=True,
    )
    media_port = s.media_port()
    spec = SippSpec(
        uac,
        s.caller,
        transport,
        s.sip_port(),
        media_port=media_port,
        remote=f"{t.address}:{t.port}",
        calls=1,
        timeout=talk / 1000 + 60,
    )
    with s.counters([(s.caller, media_port)], "") as media:
        proc = s.run(spec)
        time.sleep(0.5)
    o = CallOutcome(proc.output(), None, media, media_port, -1)
    name = f"callee {callee.uri}"
    if proc.problem() or o.caller.succeeded != 1:
        return failed(t.name, name, transport, why(o.caller, proc))
    verdict = _media_verdict(s, o, 1, "", False)
    if verdict:
        return failed(t.name, name, transport, verdict, **_media_data(o))
    said = f"answered and hung up; DTMF {digits} sent" if digits else "answered and hung up"
    return ok(t.name, name, transport, said, **_media_data(o))
