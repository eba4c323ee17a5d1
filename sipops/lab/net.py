"""Lab network: the guard route, one bridge, and a namespace with a veth pair per member."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from sipops.lab.proc import run, succeeds
from sipops.lab.state import GUARD_NETWORK, LabState, Member

NETNS_DIR = Path("/run/netns")
INNER_IF = "eth0"  # name inside a member's namespace; namespaces keep it from clashing


def guard_route_present(network: IPv4Network = GUARD_NETWORK) -> bool:
    out = run(["ip", "-j", "route", "show", "exact", str(network), "type", "unreachable"])
    return bool(json.loads(out or "[]"))


def ensure_guard_route(state: LabState) -> None:
    """Make the whole benchmarking /15 unreachable before any lab link exists; record if we added it."""
    if guard_route_present():
        return
    state.route_added = True  # recorded first: a crash right after still lets `down` remove it
    state.save()
    run(["ip", "route", "add", "unreachable", str(GUARD_NETWORK)])


def remove_guard_route(state: LabState) -> None:
    """Remove the guard route only if this lab added it and no other lab still uses the range."""
    # Another lab (another --dir) may have come up while ours held the route: it did not record
    # adding it, so keeping it is the safe side (its links must never be without it).
    if state.route_added and guard_route_present() and not addresses_in(GUARD_NETWORK):
        run(["ip", "route", "del", "unreachable", str(GUARD_NETWORK)])
    state.route_added = False


def addresses_in(network: IPv4Network) -> list[str]:
    """`address on interface` for every address of this machine inside `network` (main namespace)."""
    found: list[str] = []
    for link in json.loads(run(["ip", "-j", "-4", "addr", "show"]) or "[]"):
        for info in link.get("addr_info", []):
            if info.get("local") and IPv4Address(info["local"]) in network:
                found.append(f"{info['local']} on {link.get('ifname')}")
    return found


def link_exists(name: str) -> bool:
    return succeeds(["ip", "link", "show", "dev", name])


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create_bridge(state: LabState) -> None:
    naming = state.naming
    state.bridge_created = True
    state.save()
    if not link_exists(naming.bridge):
        run(["ip", "link", "add", naming.bridge, "type", "bridge"])
    address = f"{naming.bridge_address}/{naming.network.prefixlen}"
    if address not in run(["ip", "-o", "addr", "show", "dev", naming.bridge]):
        run(["ip", "addr", "add", address, "dev", naming.bridge])
    run(["ip", "link", "set", naming.bridge, "up"])


def delete_bridge(state: LabState) -> None:
    bridge = state.naming.bridge
    if state.bridge_created and link_exists(bridge):
        run(["ip", "link", "del", bridge])
    state.bridge_created = False


def create_member_net(state: LabState, member: Member) -> None:
    """A namespace with eth0 at the member's address, cabled to the lab bridge; no default route."""
    naming = state.naming
    member.netns_created = True
    state.save()
    if not netns_exists(member.netns):
        run(["ip", "netns", "add", member.netns])
    if not link_exists(member.veth):
        run(["ip", "link", "add", member.veth, "type", "veth", "peer", "name", INNER_IF, "netns", member.netns])
    run(["ip", "link", "set", member.veth, "master", naming.bridge, "up"])
    inside = ["ip", "-n", member.netns]
    address = f"{member.address}/{naming.network.prefixlen}"
    if address not in run([*inside, "-o", "addr", "show", "dev", INNER_IF]):
        run([*inside, "addr", "add", address, "dev", INNER_IF])
    run([*inside, "link", "set", INNER_IF, "up"])
    run([*inside, "link", "set", "lo", "up"])


def delete_member_net(state: LabState, member: Member) -> None:
    """Remove the member's veth and namespace; missing ones are fine (down is idempotent)."""
    if not member.netns_created:
        return
    if link_exists(member.veth):
        run(["ip", "link", "del", member.veth])
    if netns_exists(member.netns):
        run(["ip", "netns", "del", member.netns])
    member.netns_created = False
    state.save()
