"""The one declaration of table inet sipops' sets: the firewall template (templates/nftables/sipops.nft.j2,
through the render context's `nft_sets`) and the ban backend (ban.py) both declare them from here, so a
reload of the firewall and a start of the watcher never disagree on a set (nft refuses to `add` a set
that exists with other flags: "File exists").

`add set` is idempotent for an identical declaration and keeps the set's elements: live bans survive a
firewall reload and a watcher restart. Sets the packet path writes to (a meter's `update`/`add @set`) are
"dynamic" and always get a `size` (the kernel's default for them is 65535).
"""

from __future__ import annotations

from dataclasses import dataclass

TABLE = "inet sipops"


@dataclass(frozen=True, slots=True)
class NftSet:
    """One set of our table: what `add set` says, and what it is for (a comment in the firewall file)."""

    name: str
    type: str
    flags: tuple[str, ...]
    size: int | None = None
    timeout: str | None = None  # default timeout of an element the packet path adds without one
    doc: str = ""

    @property
    def declaration(self) -> str:
        body = [f"type {self.type};"]
        if self.flags:
            body.append(f"flags {', '.join(self.flags)};")
        if self.size is not None:
            body.append(f"size {self.size};")
        if self.timeout is not None:
            body.append(f"timeout {self.timeout};")
        return f"add set {TABLE} {self.name} {{ {' '.join(body)} }}"


def _pair(name: str, flags: tuple[str, ...], size: int | None, timeout: str | None, doc: str) -> list[NftSet]:
    return [
        NftSet(f"{name}4", "ipv4_addr", flags, size, timeout, doc),
        NftSet(f"{name}6", "ipv6_addr", flags, size, timeout, doc),
    ]


ALLOW = _pair("allow", ("interval",), None, None, "never banned, never rate-limited (the allowlist, loopback)")
# ban4/ban6 are "dynamic" because the SYN meters add to them from the packet path; declaring them
# otherwise would make a reload fail with "File exists".
BANS = _pair("ban", ("dynamic", "timeout"), 1048576, None, "banned addresses (watcher, operator, meters)") + _pair(
    "banned_cidr", ("interval", "timeout"), 65536, None, "banned networks"
)
# Meter state, written by the packet path only. An element lives a minute after its last SYN.
METERS = (
    _pair("synrate", ("dynamic", "timeout"), 65536, "1m", "per-source SYN rate and burst (flood_syn_*)")
    + _pair("synflood", ("dynamic", "timeout"), 65536, "1m", "per-source flood line (flood_line_syn_per_sec)")
    + _pair("connlimit", ("dynamic",), 65536, None, "per-source connection count (flood_max_conns_per_ip)")
)
# The restart grace: while it holds the element `tcp` (added with a timeout by the handler that restarts
# OpenSIPS), the per-source SYN meter stands aside and only the flood line bans; the watcher asks it too.
GRACE = NftSet("grace", "inet_proto", ("timeout",), 4, None, "restart grace: only the flood line bans")

# What the watcher declares on start (its guard chain needs no meters); the firewall declares everything.
WATCHER_SETS: tuple[NftSet, ...] = (*ALLOW, *BANS, GRACE)
ALL_SETS: tuple[NftSet, ...] = (*ALLOW, *BANS, *METERS, GRACE)
BAN_SETS: tuple[str, ...] = tuple(s.name for s in BANS)  # ban4, ban6, banned_cidr4, banned_cidr6
GRACE_ELEMENT = "tcp"


def declarations(sets: tuple[NftSet, ...] = WATCHER_SETS) -> list[str]:
    """`add table` and `add set` lines (idempotent, elements kept)."""
    return [f"add table {TABLE}", *(s.declaration for s in sets)]


def open_grace(duration: str) -> str:
    """One nft transaction that (re)opens the restart grace for `duration` (nft time: 60s, 2m): add +
    delete + add, so an element that is there already gets the new timeout."""
    grace = f"{TABLE} grace {{ {GRACE_ELEMENT}"
    return f"add element {grace} timeout 1s }}; delete element {grace} }}; add element {grace} timeout {duration} }}"
