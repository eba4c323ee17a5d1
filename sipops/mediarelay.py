"""Media relays (rtpengine): the inventory's relay set per proxy, port-range sizing and the checks that
refuse a relay setup which could not carry its calls (one line, exit 2, before anything is rendered).

A relay host has the `mediarelay` role; a proxy with `media_relay: rtpengine` names its relays in
`media_relays`, each an inventory host (its address and `relay_ng_port`) or an IP address (with
`media_relay_ng_port`).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sipops.errors import InputError

if TYPE_CHECKING:
    from sipops.inventory import Host, Inventory

ROLE = "mediarelay"
# rtpengine takes an even RTP port and the odd one above it for RTCP, per leg; a relayed call has two
# legs (caller side, callee side): 4 ports per call with one audio stream.
PORTS_PER_CALL = 4
# Each of those ports is an open UDP socket; rtpengine's own fds (ng, CLI, HTTP, epoll, timers, log)
# and a reserve for calls with video or a second stream come on top.
FDS_BASE = 1024
MEDIA_STREAMS_RESERVE = 2  # size descriptors for two streams per call (audio + video)


@dataclass(frozen=True)
class RelaySocket:
    """One relay as a proxy's rtpengine module reaches it."""

    name: str  # inventory host, or the address itself
    address: str
    port: int

    @property
    def socket(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"udp:{host}:{self.port}"


def ports_for_calls(calls: int) -> int:
    """RTP/RTCP ports a relay needs for `calls` concurrent relayed calls with one audio stream each."""
    return calls * PORTS_PER_CALL


def fds_for_calls(calls: int) -> int:
    """Open files rtpengine needs for `calls` concurrent calls (two streams each, plus its own)."""
    return FDS_BASE + calls * PORTS_PER_CALL * MEDIA_STREAMS_RESERVE


def calls_for_range(port_min: int, port_max: int) -> int:
    """Concurrent single-stream calls a port range holds."""
    return (port_max - port_min + 1) // PORTS_PER_CALL


def _where(host: Host, var: str, index: int | None = None) -> dict[str, Any]:
    origin = host.origins.get(var)
    field = f"hosts.{host.name}.vars.{var}" + (f"[{index}]" if index is not None else "")
    if origin is None:
        return {"field": field}
    return {"file": origin.file, "line": origin.line, "field": field}


def _from_inventory(host: Host, var: str) -> bool:
    origin = host.origins.get(var)
    return origin is not None and not origin.level.startswith("role ")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def relay_sockets(inv: Inventory, host: Host) -> list[RelaySocket]:
    """The relays of a proxy, in inventory order; InputError for an entry that is neither a relay host
    of the inventory nor an IP address."""
    v = host.vars
    if v.get("media_relay", "none") == "none":
        return []
    out: list[RelaySocket] = []
    for i, entry in enumerate(v.get("media_relays") or []):
        name = str(entry)
        target = inv.hosts.get(name)
        if target is not None:
            if ROLE not in target.roles:
                raise InputError(
                    f"'{name}' is an inventory host without the {ROLE} role: give it the role or name another relay",
                    **_where(host, "media_relays", i),
                )
            out.append(RelaySocket(name, _relay_address(target), int(target.vars["relay_ng_port"])))
        elif _is_ip(name):
            out.append(RelaySocket(name, name, int(v["media_relay_ng_port"])))
        else:
            raise InputError(
                f"'{name}' is neither a host of the inventory nor an IP address",
                **_where(host, "media_relays", i),
            )
    if not out:
        raise InputError("media_relay is rtpengine but media_relays is empty: name at least one relay",
                         **_where(host, "media_relays"))  # fmt: skip
    seen: set[str] = set()
    for i, r in enumerate(out):
        if r.socket in seen:
            raise InputError(f"relay {r.socket} is listed twice", **_where(host, "media_relays", i))
        seen.add(r.socket)
    return out


def _relay_address(relay: Host) -> str:
    """Where proxies send ng commands: relay_ng_listen, else the host's address (which must be an IP:
    OpenSIPS' rtpengine module resolves names once, at start)."""
    addr = relay.vars.get("relay_ng_listen") or relay.address
    return str(addr)


def check_relay(host: Host) -> None:
    """A relay host's port range: ordered, clear of its other ports, big enough for relay_calls."""
    v = host.vars
    lo, hi = int(v["relay_port_min"]), int(v["relay_port_max"])
    if lo > hi:
        raise InputError(f"relay_port_min {lo} is above relay_port_max {hi}", **_where(host, "relay_port_min"))
    if lo % 2:
        # rtpengine starts RTP on even ports (RTCP on the odd one above): an odd start wastes the port.
        raise InputError(f"relay_port_min {lo} is odd: RTP ports are even (RTCP the odd one above)",
                         **_where(host, "relay_port_min"))  # fmt: skip
    taken = {
        "relay_ng_port": int(v["relay_ng_port"]),
        "relay_cli_port": int(v["relay_cli_port"]),
        "sip_port": int(v["sip_port"]),
        "mi_http_port": int(v["mi_http_port"]),
    }
    taken.update({f"sockets ({s['proto']}:{s['address']})": int(s["port"]) for s in v.get("sockets") or []})
    for what, port in taken.items():
        if lo <= port <= hi:
            # Name the one of the two the inventory set (the other is a role default).
            names = (what, "relay_port_min", "relay_port_max")
            var = next((n for n in names if _from_inventory(host, n)), "relay_port_min")
            raise InputError(f"RTP port range {lo}-{hi} overlaps {what} {port}: move one of them", **_where(host, var))
    calls = v.get("relay_calls")
    if calls is not None:
        have = calls_for_range(lo, hi)
        if have < int(calls):
            raise InputError(
                f"RTP port range {lo}-{hi} holds {have} calls ({PORTS_PER_CALL} ports each), relay_calls asks for "
                f"{calls}: widen it to at least {ports_for_calls(int(calls))} ports",
                **_where(host, "relay_calls"),
            )


def check_inventory(inv: Inventory) -> None:
    """Every relay host's ranges and every proxy's relay set, or the first problem as one InputError."""
    for host in inv.hosts.values():
        if ROLE in host.roles:
            check_relay(host)
        if "proxy" in host.roles:
            relay_sockets(inv, host)


def ng_allowed(inv: Inventory, relay: Host) -> list[str]:
    """Sources allowed to send ng commands to a relay: the proxies naming it, plus relay_ng_allow."""
    out: list[str] = []
    for h in inv.hosts.values():
        if "proxy" not in h.roles or h.vars.get("media_relay", "none") == "none":
            continue
        for r in relay_sockets(inv, h):
            if r.name == relay.name or r.address == _relay_address(relay):
                # ng goes out from the proxy's own address (its SIP address when that is another one).
                for src in (h.address, h.vars.get("sip_listen")):
                    if src and _is_ip(str(src)) and str(src) not in out:
                        out.append(str(src))
    out += [str(n) for n in relay.vars.get("relay_ng_allow") or [] if str(n) not in out]
    return out


_IFACE_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")

# Run on the relay host by the push after `systemctl restart rtpengine-daemon` (argv: address port):
# the unit can be active before its ng socket answers, or with it unbound.
PING_PROGRAM = """import socket,sys,time
a,p=sys.argv[1],int(sys.argv[2])
end=time.time()+15
while True:
    s=socket.socket(socket.AF_INET6 if ':' in a else socket.AF_INET,socket.SOCK_DGRAM)
    s.settimeout(0.5)
    try:
        s.sendto(b'sipops d7:command4:pinge',(a,p))
        if b'pong' in s.recv(4096):
            sys.exit(0)
    except OSError:
        pass
    finally:
        s.close()
    if time.time()>end:
        sys.exit('rtpengine: no ng pong from %s:%d within 15 s' % (a,p))
    time.sleep(0.2)
"""

# The validator of rtpengine.conf on the host (argv: the staged file). rtpengine has no check mode: the
# file is read as its GLib key file is, every key must be an option the installed rtpengine lists in
# --help-all (a typo or an option of another release would stop it at start), and the values rtpengine
# would refuse at start are checked here.
LINT_PROGRAM = r"""import configparser,re,subprocess,sys
path=sys.argv[1]
def die(m):
    sys.exit('%s: %s' % (path,m))
c=configparser.ConfigParser(interpolation=None,delimiters=('=',),comment_prefixes=('#',),strict=True)
c.optionxform=str
try:
    with open(path) as f:
        c.read_file(f)
except (OSError,configparser.Error) as e:
    die(str(e).splitlines()[0])
if 'rtpengine' not in c:
    die('no [rtpengine] section')
try:
    h=subprocess.run(['rtpengine','--help-all'],capture_output=True,text=True,timeout=30).stdout
except OSError as e:
    die('rtpengine is not installed here (%s)' % e)
known=set(re.findall(r'--([a-z0-9][a-z0-9-]*)',h))
if 'listen-ng' not in known:
    die('rtpengine --help-all does not list its options')
r=c['rtpengine']
for k,v in r.items():
    if k not in known:
        die('%s: not an option of the installed rtpengine (rtpengine --help-all)' % k)
    if not v.strip():
        die('%s: empty value' % k)
ip=r'[0-9A-Fa-f.:]+'
for k in ('port-min','port-max','timeout','silent-timeout','table'):
    if not re.fullmatch(r'-?[0-9]+',r.get(k,'0')):
        die('%s: not a number: %r' % (k,r[k]))
if not 0<int(r.get('port-min','30000'))<=int(r.get('port-max','40000'))<65536:
    die('port-min %s / port-max %s: not an ascending range of ports' % (r.get('port-min'),r.get('port-max')))
for i in r.get('interface','').split(';'):
    if not re.fullmatch(r'(?:[A-Za-z0-9_-]+/)?'+ip+'(?:!'+ip+')?',i.strip()):
        die('interface %r: expected [name/]IP[!advertised IP]' % i)
if not re.fullmatch(r'(?:'+ip+r':|\['+ip+r'\]:)?[0-9]+',r.get('listen-ng','')):
    die('listen-ng %r: expected [IP:]PORT' % r.get('listen-ng',''))
"""


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def relay_interfaces(host: Host) -> list[dict[str, Any]]:
    """The relay's interfaces; the default one on the host's address, which must then be an IP."""
    v = host.vars
    ifaces = list(v.get("relay_interfaces") or [])
    if not ifaces:
        if not _is_ip(host.address):
            raise InputError(
                f"the host's address {host.address} is not an IP: list the relay's addresses in relay_interfaces",
                **_where(host, "relay_interfaces"),
            )
        ifaces = [{"name": "default", "address": host.address, "advertise": v.get("relay_advertise")}]
    for i, iface in enumerate(ifaces):
        if not _IFACE_NAME.fullmatch(str(iface.get("name") or "")):
            raise InputError(f"interface name {iface.get('name')!r}: letters, digits, _ and - only (at most 32)",
                             **_where(host, "relay_interfaces", i))  # fmt: skip
    return ifaces


def context(inv: Inventory, host: Host) -> dict[str, Any]:
    """What the templates of the relay and of its proxies need; checks the setup on the way."""
    out: dict[str, Any] = {"relay_health": [], "media_relay_sockets": []}
    v = host.vars
    if "proxy" in host.roles and v.get("media_relay", "none") != "none":
        relays = relay_sockets(inv, host)
        out["media_relay_sockets"] = [r.socket for r in relays]
        out["relay_health"] = [[r.name, r.address, r.port] for r in relays]
    if ROLE not in host.roles:
        return out
    check_relay(host)
    ifaces = relay_interfaces(host)
    lo, hi = int(v["relay_port_min"]), int(v["relay_port_max"])
    ng_address = _relay_address(host)
    if not _is_ip(ng_address):
        raise InputError(f"the host's address {ng_address} is not an IP: set relay_ng_listen",
                         **_where(host, "relay_ng_listen"))  # fmt: skip
    calls = v.get("relay_calls")
    sized_for = int(calls) if calls is not None else calls_for_range(lo, hi)
    from sipops.tuning.calc import relay_sizing  # the one sizing rule, shared with tune-tcp --calls

    fds = relay_sizing(sized_for, lo, hi).open_files
    reason = (
        f"relay_calls {calls}" if calls is not None else f"the {calls_for_range(lo, hi)} calls the port range holds"
    )
    out.update(
        relay_interface_line="; ".join(
            f"{i['name']}/{i['address']}" + (f"!{i['advertise']}" if i.get("advertise") else "") for i in ifaces
        ),
        relay_ng_address=ng_address,
        relay_ng_socket=_hostport(ng_address, int(v["relay_ng_port"])),
        relay_ng_sources=ng_allowed(inv, host),
        relay_range_calls=calls_for_range(lo, hi),
        relay_open_files=fds,
        relay_sizing_reason=f"{sized_for} calls x {PORTS_PER_CALL} ports x {MEDIA_STREAMS_RESERVE} streams "
        f"+ {FDS_BASE} ({reason}; at least 65536)",
        relay_ping_program=shlex.quote(PING_PROGRAM),
        relay_lint_program=shlex.quote(LINT_PROGRAM),
    )
    own = [host.name, ng_address, int(v["relay_ng_port"])]
    if all(r[1:] != own[1:] for r in out["relay_health"]):
        out["relay_health"] = out["relay_health"] + [own]
    return out


def check_calls(host: Host, calls: int) -> None:
    """tune-tcp --calls on a relay host: its port range must hold the calls (else one line, exit 2)."""
    lo, hi = int(host.vars["relay_port_min"]), int(host.vars["relay_port_max"])
    if calls_for_range(lo, hi) < calls:
        var = "relay_port_max" if _from_inventory(host, "relay_port_max") else "relay_port_min"
        raise InputError(
            f"--calls {calls} needs {ports_for_calls(calls)} RTP ports ({PORTS_PER_CALL} per call); host {host.name}'s "
            f"range {lo}-{hi} holds {calls_for_range(lo, hi)} calls: widen relay_port_min..relay_port_max",
            **_where(host, var),
        )
