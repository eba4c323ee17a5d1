"""What `sipops calltest` tests on each host, where its test phones run, and the checks of its input.

Each selected host is tested by its roles: a registrar takes REGISTERs, a proxy with a registrar carries
calls between registered phones (and CANCELs, and answers 404 for unknown users), a load balancer
spreads calls over the gateways of its inbound set and fails over around a dead one. Test phones run
in places: network namespaces on this machine (a lab's attacker namespaces, or any `--from-netns`) or
this machine's own address toward the host. A gateway's callee runs wherever the gateway's address is.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipops.calltest.sipp import Place
from sipops.errors import InputError
from sipops.inventory import Host, Inventory

TRANSPORTS = ("udp", "tcp")
URI_RE = re.compile(
    r"^sips?:(?:(?P<user>[A-Za-z0-9_.!~*'()&=+$,;?/%-]+)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?(?P<params>(?:;[^;?]+)*)$"
)
USER_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
# sipp reads credentials out of its own [authentication username=.. password=..] keyword.
PASSWORD_RE = re.compile(r"^[^\s\[\];]{1,128}$")


@dataclass(frozen=True)
class Account:
    user: str
    password: str


@dataclass(frozen=True)
class CalleeUri:
    uri: str
    user: str
    host: str
    port: int


@dataclass(frozen=True)
class Target:
    """An inventory host as calls reach it."""

    host: Host
    address: str
    port: int
    transports: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def vars(self) -> dict[str, Any]:
        return self.host.vars

    def has(self, role: str) -> bool:
        return role in self.host.roles


@dataclass
class Options:
    transports: tuple[str, ...] = TRANSPORTS
    phones: int = 2
    dtmf: str = "1234"
    accounts: list[Account] = field(default_factory=list)
    callees: list[CalleeUri] = field(default_factory=list)
    caller: Place | None = None
    callee: Place | None = None
    extra_places: list[Place] = field(default_factory=list)  # where gateway callees may run
    audio: Path | None = None  # the G.711 pcap; None: no media
    loss_limit: float = 0.05  # RTP loss per direction above this fails the call


def parse_callee(text: str) -> CalleeUri:
    m = URI_RE.match(text.strip())
    if not m or not m.group("user"):
        raise InputError(f"'{text}' is not a SIP URI like sip:1000@pbx.example.net[:5060]", field="--callee")
    port = int(m.group("port") or 5060)
    if not 1 <= port <= 65535:
        raise InputError(f"'{text}': port out of range", field="--callee")
    return CalleeUri(text.strip(), m.group("user"), m.group("host").strip("[]"), port)


def parse_account(text: str, where: str) -> Account:
    user, sep, password = text.partition(":")
    if not sep or not USER_RE.match(user) or not PASSWORD_RE.match(password):
        raise InputError(
            "an account is USER:PASSWORD (user: letters, digits, . _ + -; password: no spaces, [ ] or ;)",
            field=where,
        )
    return Account(user, password)


def read_accounts(path: Path) -> list[Account]:
    """USER:PASSWORD per line (# comments); errors name the file and line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=path, field="--accounts") from None
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                out.append(parse_account(line.strip(), "--accounts"))
            except InputError as exc:
                raise InputError(exc.message, file=path, line=n, field="--accounts") from None
    return out


def targets(inv: Inventory, names: list[str]) -> list[Target]:
    out = []
    for host in inv.select(names):
        v = host.vars
        default = [{"proto": p, "port": v.get("sip_port", 5060)} for p in v.get("sip_protocols", [])]
        sockets = v.get("sockets") or default
        protos = tuple(p for p in TRANSPORTS if any(s["proto"] == p for s in sockets))
        port = next((int(s["port"]) for s in sockets if s["proto"] in TRANSPORTS), 5060)
        out.append(Target(host, str(host.address), port, protos))
    return out


def _netns_address(netns: str) -> str:
    argv = ["ip", "-n", netns, "-4", "-o", "addr", "show", "scope", "global"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if proc.returncode != 0:
        raise InputError(f"no network namespace '{netns}'", field="--from-netns")
    found = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", proc.stdout)
    if not found:
        raise InputError(f"network namespace '{netns}' has no IPv4 address", field="--from-netns")
    return str(found[0])


def netns_place(netns: str, name: str | None = None) -> Place:
    return Place(name or f"netns {netns}", _netns_address(netns), ("ip", "netns", "exec", netns))


def local_place(toward: str) -> Place:
    """This machine, with the source address the kernel picks toward `toward`."""
    proc = subprocess.run(["ip", "-4", "route", "get", toward], capture_output=True, text=True, timeout=10, check=False)
    m = re.search(r"\bsrc (\d+\.\d+\.\d+\.\d+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise InputError(f"no route from this machine to {toward}", field="HOST")
    return Place("local", m.group(1))


def lab_places(inv: Inventory) -> list[Place]:
    """The attacker namespaces of the lab that wrote this inventory (none when it is no lab's)."""
    from sipops.lab.state import LabState

    state = LabState.load(inv.dir)
    if state is None:
        return []
    return [Place(m.name, m.address, ("ip", "netns", "exec", m.netns)) for m in state.attackers()]


def local_addresses() -> set[str]:
    proc = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=10, check=False)
    return set(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", proc.stdout))


def place_for(address: str, places: list[Place]) -> Place | None:
    """Where a gateway's callee can run: a place that owns `address`, or this machine when it does."""
    for p in places:
        if p.address == address:
            return p
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return None
    if address in local_addresses():
        return Place("local", address)
    return None


def checks_for(t: Target, opts: Options) -> list[str]:
    """Names of the checks a host's roles call for, in the order they run."""
    names: list[str] = []
    if t.has("registrar"):
        names.append("register")
        if t.vars.get("registrar_auth"):
            names.append("wrong-password")
    if t.has("proxy") and t.has("registrar"):
        names += ["call", "cancel", "unknown-user"]
    if t.has("loadbalancer"):
        names += ["gateways", "failover"]
    if opts.callees and (t.has("proxy") or t.has("loadbalancer")):
        names.append("callee")
    return names
