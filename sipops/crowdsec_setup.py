"""Fleet-wide bans through CrowdSec, the controller's side: which LAPI each host joins, the LAPI host's
settings for the templates, and the registration of every host's machine and bouncer credentials.

The LAPI is the inventory host with the `crowdsec` role (http://ADDRESS:crowdsec_lapi_port), or
`crowdsec_lapi_url` for one the fleet already has (credentials are then made on `crowdsec_lapi_host`).
Registration (after push/install) runs sipops.host.crowdsec_creds through the push engine's runner:
check on each host (one round trip when its credentials work); for the others: a fresh bouncer key
from cscli on the LAPI host, the machine registered from the host itself with a password made there,
validated by cscli, checked again. Secrets ride on stdin only; the controller never prints them.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from ipaddress import ip_address
from typing import Any

from sipops.errors import InputError
from sipops.host.monitor.crowdsec import parse_url
from sipops.inventory import Host, Inventory
from sipops.remote.runner import RemoteError, Runner, call

ROLE = "crowdsec"
TIMEOUT = 90.0
# The restart handler's gate: the LAPI serves once a keyless stream pull gets 403 (or 401).
WAIT_PROGRAM = """
import sys, time, urllib.request, urllib.error
url = sys.argv[1] + "/v1/decisions/stream"
end = time.monotonic() + 15
while True:
    try:
        urllib.request.urlopen(url, timeout=2)
        break
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            break
    except OSError as e:
        if time.monotonic() > end:
            sys.exit("crowdsec: the LAPI does not answer at %s: %s" % (url, e))
    time.sleep(0.3)
"""


def _is_ip(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def _where(host: Host, var: str) -> dict[str, Any]:
    origin = host.origins.get(var)
    field = f"hosts.{host.name}.vars.{var}"
    if origin is None:
        return {"field": field}
    return {"file": origin.file, "line": origin.line, "field": field}


def lapi_hosts(inv: Inventory) -> list[Host]:
    return [h for h in inv.hosts.values() if ROLE in h.roles]


def _url_of_lapi_host(h: Host) -> str:
    addr = h.vars.get("crowdsec_lapi_listen") or h.address
    if not _is_ip(str(addr)):
        raise InputError(
            f"the host's address {addr} is not an IP: set crowdsec_lapi_listen", **_where(h, "crowdsec_lapi_listen")
        )
    hostpart = f"[{addr}]" if ":" in str(addr) else str(addr)
    return f"http://{hostpart}:{int(h.vars['crowdsec_lapi_port'])}"


def lapi_of(inv: Inventory, host: Host) -> tuple[str, str | None] | None:
    """(LAPI URL, inventory host running it or None) for `host`, or None when it joins no LAPI."""
    if not host.vars.get("crowdsec_fleet", True):
        return None
    given = host.vars.get("crowdsec_lapi_url")
    if given:
        try:
            url = parse_url(str(given))
        except ValueError as exc:
            raise InputError(str(exc), **_where(host, "crowdsec_lapi_url")) from None
        runs = host.vars.get("crowdsec_lapi_host")
        if runs and runs not in inv.hosts:
            raise InputError(
                f"crowdsec_lapi_host {runs!r} is not a host of the inventory", **_where(host, "crowdsec_lapi_host")
            )
        return url, (str(runs) if runs else None)
    lapis = lapi_hosts(inv)
    if not lapis:
        return None
    return _url_of_lapi_host(lapis[0]), lapis[0].name


def context(inv: Inventory, host: Host) -> dict[str, Any]:
    """Template variables: crowdsec_url for every host; the LAPI host's listen address and firewall sources."""
    found = lapi_of(inv, host)
    out: dict[str, Any] = {"crowdsec_url": found[0] if found else ""}
    if ROLE not in host.roles:
        return out
    url = _url_of_lapi_host(host)
    # Every address unless crowdsec_lapi_listen says one: crowdsec's own agent on this host reaches its
    # LAPI at 127.0.0.1 (local_api_credentials.yaml, written by the package); the firewall below lets
    # the fleet's hosts alone reach the port.
    given = host.vars.get("crowdsec_lapi_listen")
    listen = (f"[{given}]" if ":" in str(given) else str(given)) if given else "0.0.0.0"
    sources = sorted(
        {h.address for h in inv.hosts.values() if _is_ip(h.address)} | set(host.vars["crowdsec_lapi_allow"])
    )
    out.update(
        crowdsec_url=url,
        crowdsec_listen_uri=f"{listen}:{int(host.vars['crowdsec_lapi_port'])}",
        crowdsec_lapi_sources=sources,
        crowdsec_wait_program=shlex.quote(WAIT_PROGRAM),
    )
    return out


ENTRY = "sipops.host.crowdsec_creds:main"  # the host side, run through the one boot path (sipops.remote.ship)


def _call(make_runner: Callable[[], Runner], request: dict[str, Any]) -> dict[str, Any]:
    runner: Runner | None = None
    try:
        runner = make_runner()
        return call(runner, request, timeout=TIMEOUT, entry=ENTRY)
    except RemoteError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # SSH, host keys: this host fails alone
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    finally:
        if runner is not None:
            runner.close()


def register(inv: Inventory, names: list[str], runner_for: Callable[[Host], Callable[[], Runner]]) -> dict[str, str]:
    """Credentials for each named host that joins a LAPI; {host: 'ok'|'registered'|'FAILED: reason'}."""
    out: dict[str, str] = {}
    for name in names:
        host = inv.hosts[name]
        found = lapi_of(inv, host)
        if found is None:
            continue
        url, lapi_name = found
        out[name] = _register_one(inv, host, url, lapi_name, runner_for)
    return out


def _register_one(
    inv: Inventory, host: Host, url: str, lapi_name: str | None, runner_for: Callable[[Host], Callable[[], Runner]]
) -> str:
    machine = f"sipops-{host.name}"
    base = {"url": url, "host": host.name}
    reply = _call(runner_for(host), {"action": "check", **base})
    if not reply.get("ok"):
        return f"FAILED: crowdsec: {reply.get('error')}"
    if reply.get("state") == "ok":
        return "ok"
    if lapi_name is None:
        why = reply.get("why") or "no credentials stored"
        return f"FAILED: crowdsec: {why}; set crowdsec_lapi_host to the host running the LAPI at {url} to register them"
    lapi = runner_for(inv.hosts[lapi_name])
    prep = _call(lapi, {"action": "prepare", "name": machine})
    if not prep.get("ok"):
        return f"FAILED: crowdsec on the LAPI host {lapi_name}: {prep.get('error')}"
    stored = _call(runner_for(host), {"action": "store", **base, "machine_id": machine, "api_key": prep["api_key"]})
    if not stored.get("ok"):
        return f"FAILED: crowdsec: {stored.get('error')}"
    valid = _call(lapi, {"action": "validate", "name": machine})
    if not valid.get("ok"):
        return f"FAILED: crowdsec on the LAPI host {lapi_name}: {valid.get('error')}"
    again = _call(runner_for(host), {"action": "check", **base, "restart": True})
    if again.get("state") != "ok":
        return (
            f"FAILED: crowdsec: credentials refused right after registering: {again.get('why') or again.get('error')}"
        )
    return "registered"


def register_and_report(
    inv: Inventory, names: list[str], runner_for: Callable[[Host], Callable[[], Runner]], emit: Callable[[str], None]
) -> bool:
    """register() with one line per host that joins a LAPI (`h2: crowdsec: registered`); False on a failure."""
    try:
        outcomes = register(inv, names, runner_for)
    except InputError:
        return True  # render already refused the inventory; nothing reaches here with a bad URL
    for name, outcome in outcomes.items():
        words = {"ok": "credentials in place", "registered": "machine and bouncer registered"}.get(outcome, outcome)
        emit(f"{name}: crowdsec: {words}" if not outcome.startswith("FAILED") else f"{name}: {outcome}")
    return not any(o.startswith("FAILED") for o in outcomes.values())


def preflight(inv: Inventory, name: str, in_run: list[str], runner_for: Callable[[Host], Callable[[], Runner]]) -> str:
    """Before anything changes on `name`: its LAPI must answer from the host ('' when fine or not checkable).

    Only for a LAPI that is not being installed in this same run (it may not be up yet)."""
    host = inv.hosts[name]
    found = lapi_of(inv, host)
    if found is None or (found[1] is not None and found[1] in in_run):
        return ""
    reply = _call(runner_for(host), {"action": "check", "url": found[0], "host": name})
    error = str(reply.get("error") or "")
    # Only the LAPI's own answer counts here: a bare host without python3 yet is install's to fix.
    if not reply.get("ok") and "LAPI " in error:
        return f"crowdsec: {error} (nothing was changed on the host)"
    return ""
