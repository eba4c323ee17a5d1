"""Drain steps run ON a host (stdlib only), one agent run each (issue 19).

On a load balancer: set destinations inactive / active over MI (dispatcher `ds_set_state`,
load_balancer `lb_status`; both 3.4 and 3.6 take the same parameters) and read the state back. On a
node: wait, bounded, until its calls in setup end (`get_statistics` tm:inuse_transactions and, when
the dialog module is loaded, dialog:early_dialogs).

Run by sipops.remote.drain through the one boot path (sipops.remote.ship); main() is the entry point.
"""

from __future__ import annotations

import time
from typing import Any

from sipops.host.health.mi import MIError, mi_call, parse_ds_list

Json = dict[str, Any]

DRAIN_TIMEOUT = 30.0  # default bound of wait_idle, in seconds (`sipops push --drain-timeout`)

# What "calls in setup" are counted by; a counter a node does not have (no dialog module) is skipped.
SETUP_STATS = ("tm:inuse_transactions", "dialog:early_dialogs")
SHOWN_STATS = (*SETUP_STATS, "dialog:active_dialogs")
# MI state letters of ds_set_state per wanted state (lb_status takes 0 / 1).
DS_STATE = {"inactive": "i", "active": "a"}


def main(req: Json, stream: Any, size: int) -> Json:
    op = req["op"]
    if op == "lb_state":
        out = lb_state(req)
    elif op == "wait_idle":
        out = wait_idle(req)
    else:
        out = {"ok": False, "error": f"unknown op {op}"}
    return out


def listing(url: str, engine: str) -> dict[tuple[int, str], Json]:
    """(set, uri) -> {"state": active|inactive|probing, "id": lb destination id} as OpenSIPS runs them."""
    out: dict[tuple[int, str], Json] = {}
    if engine == "dispatcher":
        for gw in parse_ds_list(mi_call(url, "ds_list")):
            if gw.group.startswith("set ") and gw.group[4:].isdigit():  # the default partition only
                out[(int(gw.group[4:]), gw.uri)] = {"state": gw.state.lower(), "id": None}
        return out
    result = mi_call(url, "lb_list")
    # parse_lb_list leaves out the destination id, which is what lb_status takes.
    for dst in result.get("Destinations", []) if isinstance(result, dict) else []:
        state = "active" if str(dst.get("enabled")) == "yes" else "inactive"
        out[(int(dst.get("group", -1)), str(dst.get("uri")))] = {"state": state, "id": dst.get("id")}
    return out


def _set(url: str, engine: str, item: Json, want: str, lb_id: Any) -> None:
    if engine == "dispatcher":
        params = {"state": DS_STATE[want], "group": str(item["set"]), "address": item["uri"]}
        mi_call(url, "ds_set_state", params)
    else:  # disabled by lb_status is not re-enabled by probes (LB_DST_STAT_NOEN_FLAG)
        mi_call(url, "lb_status", {"destination_id": int(lb_id), "new_status": 0 if want == "inactive" else 1})


def lb_state(req: Json) -> Json:
    """Put each item (set, uri) in its wanted state; the states before and after, item by item.

    Going inactive is skipped for a destination that is not active now (an operator disabled it, or it
    failed: it carries no calls) and for the last active destination of its set (its calls would have
    nowhere to go); the reply says why for each.
    """
    url, engine = req["url"], req["engine"]
    try:
        before = listing(url, engine)
    except MIError as exc:
        return {"ok": False, "error": str(exc)}
    items = []
    for item in req["items"]:
        key = (int(item["set"]), str(item["uri"]))
        want = str(item["want"])
        now = before.get(key)
        row: Json = {"set": key[0], "uri": key[1], "want": want, "before": now["state"] if now else None}
        if now is None:
            row["skipped"] = "not in the running sets"
        elif want == "inactive" and now["state"] != "active":
            row["skipped"] = f"already {now['state']}"
        elif want == "inactive" and not any(
            k[0] == key[0] and k != key and v["state"] == "active" for k, v in before.items()
        ):
            row["skipped"] = f"the only active destination of set {key[0]}"
        else:
            try:
                _set(url, engine, item, want, now.get("id"))
            except MIError as exc:
                row["error"] = str(exc)
        items.append(row)
    try:
        after = listing(url, engine)
    except MIError as exc:
        return {"ok": False, "error": f"state read back: {exc}", "items": items}
    for row in items:
        got = after.get((row["set"], row["uri"]))
        row["after"] = got["state"] if got else None
    return {"ok": True, "items": items}


def _stats(url: str) -> Json:
    # One statistic is asked for by its bare name (the reply names it module:name); "tm:x" finds nothing.
    result = mi_call(url, "get_statistics", {"statistics": [k.split(":", 1)[1] for k in SHOWN_STATS]})
    return {k: int(v) for k, v in (result.items() if isinstance(result, dict) else []) if str(v).isdigit()}


def wait_idle(req: Json) -> Json:
    """Poll the node's counters until no call is in setup, or until the timeout; the last counts."""
    url, timeout, poll = req["url"], float(req["timeout"]), float(req.get("poll", 0.5))
    start = time.monotonic()
    counts: Json = {}
    while True:
        try:
            counts = _stats(url)
        except MIError as exc:
            return {"ok": False, "error": str(exc), "waited": round(time.monotonic() - start, 2)}
        waited = round(time.monotonic() - start, 2)
        if SETUP_STATS[0] not in counts:  # never "idle" for want of a counter
            return {"ok": False, "error": f"get_statistics has no {SETUP_STATS[0]}", "waited": waited}
        busy = sum(counts.get(k, 0) for k in SETUP_STATS)
        if busy == 0:
            return {"ok": True, "idle": True, "waited": waited, "counts": counts}
        if waited >= timeout:
            return {"ok": True, "idle": False, "waited": waited, "counts": counts}
        time.sleep(min(poll, max(0.05, timeout - waited)))
