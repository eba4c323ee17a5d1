"""The media relays: each rtpengine a host uses (a proxy's relay set) or is (a relay host), over ng.

ping answers -> up; `statistics` gives the sessions it holds and its packet errors (a counter: the
check reports the increase since its previous run, as a figure: rtpengine counts a packet of a payload
type the SDP did not name as an error, which is the phone's doing, not the relay's). Every relay down
is CRITICAL (relayed calls fail); some down is WARNING (OpenSIPS' rtpengine module fails over to the
others).
"""

from __future__ import annotations

import time
from typing import Any

from sipops.host.health.config import HealthConfig
from sipops.host.health.model import CheckResult, Metric, Status
from sipops.host.health.ng import NgError, command, ping
from sipops.host.health.sources import Sources

# ng `statistics` keys (rtpengine 10.5): current figures and counters since its start.
SESSION_KEYS = ("sessionsown", "sessionstotal")
ERROR_KEYS = ("relayedpacketerrors", "relayedpacketserrors", "errors")


def _find(tree: Any, keys: tuple[str, ...]) -> float | None:
    """The first of `keys` anywhere in a nested reply (its layout moved between rtpengine releases)."""
    if isinstance(tree, dict):
        for k in keys:
            v = tree.get(k)
            if isinstance(v, (int, float)) or (isinstance(v, str) and v.isdigit()):
                return float(v)
        for v in tree.values():
            found = _find(v, keys)
            if found is not None:
                return found
    return None


def probe(address: str, port: int, timeout: float = 1.0) -> dict[str, Any]:
    """{"up", "rtt_ms", "sessions", "errors", "error"} of one relay."""
    t = time.monotonic()
    try:
        if not ping(address, port, timeout):
            return {"up": False, "error": "ping answered without pong"}
    except NgError as exc:
        return {"up": False, "error": str(exc)}
    out: dict[str, Any] = {"up": True, "rtt_ms": round((time.monotonic() - t) * 1000, 2)}
    try:
        stats = command(address, port, {"command": "statistics"}, timeout)
        out["sessions"] = _find(stats, SESSION_KEYS)
        out["errors"] = _find(stats, ERROR_KEYS)
    except NgError as exc:
        out["stats_error"] = str(exc)
    return out


def check_relays(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """Each relay: ng ping, sessions, packet errors since the last run."""
    if not cfg.relays:
        return CheckResult("relays", Status.OK, "no media relay on or used by this host")
    metrics: list[Metric] = []
    down: list[str] = []
    parts: list[str] = []
    new_errors = 0.0
    previous = state.get("errors", {})
    errors_now: dict[str, float] = {}
    for name, address, port in cfg.relays:
        r = probe(address, port, timeout=max(0.2, cfg.thresholds.options_timeout_ms / 1000))
        labels = {"relay": name}
        metrics.append(
            Metric(
                "relay_up",
                int(r["up"]),
                minimum=0,
                maximum=1,
                labels=labels,
                help="1 when the relay answers an ng ping",
            )
        )
        if not r["up"]:
            down.append(f"{name} ({r['error']})")  # NgError names the address
            continue
        metrics.append(
            Metric("relay_rtt", r["rtt_ms"] / 1000, "s", minimum=0, labels=labels, help="ng ping round trip")
        )
        text = f"{name} up {r['rtt_ms']:g} ms"
        if r.get("sessions") is not None:
            metrics.append(
                Metric("relay_sessions", r["sessions"], minimum=0, labels=labels, help="calls the relay holds")
            )
            text += f", {int(r['sessions'])} sessions"
        if r.get("errors") is not None:
            errors_now[name] = r["errors"]
            grew = max(0.0, r["errors"] - float(previous.get(name, r["errors"])))
            new_errors += grew
            metrics.append(
                Metric(
                    "relay_packet_errors",
                    grew,
                    minimum=0,
                    labels=labels,
                    help="relay packet errors since the previous run",
                )
            )
            if grew:
                text += f", {int(grew)} new packet errors"
        parts.append(text)
    state["errors"] = errors_now
    if down and len(down) == len(cfg.relays):
        return CheckResult("relays", Status.CRITICAL, f"every media relay is down: {'; '.join(down)}", metrics)
    if down:
        msg = f"{len(down)} of {len(cfg.relays)} media relays down: {'; '.join(down)}; {'; '.join(parts)}"
        return CheckResult("relays", Status.WARNING, msg, metrics)
    return CheckResult("relays", Status.OK, "; ".join(parts), metrics)
