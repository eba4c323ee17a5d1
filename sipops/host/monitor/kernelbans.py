"""The one reader of the kernel's ban sets, and what `sipops bans`, health and `unban` make of it.

The kernel sets are the source of truth of what is dropped now: besides the watcher's and the operator's
bans (journaled, with the rule as the element's comment) they hold what the firewall's meters add from
the packet path (templates/nftables/sipops.nft.j2: the SYN-rate meter adds to ban4/ban6, with no comment,
since nft cannot attach one there). merge() joins both: every element is shown, with the journal's rule
and evidence when it has them, the meter's name when the packet path made it; journal bans the kernel
lacks are shown too (flagged), so nothing hides.

Listing is costly (nft 1.0.6 fetches every element of the table for ANY command on it: ~1 s at 100k
elements, measured in a namespace), so the watcher lists only every few tens of seconds (watch.py).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sipops.host.monitor.allow import Allowlist
from sipops.host.monitor.ban import (
    BAN_SETS,
    CANARY,
    TABLE,
    BanBackend,
    BanBackendError,
    IpsetBackend,
    NftBackend,
    NftExecutor,
    normalize,
    parse_duration,
)
from sipops.host.monitor.journal import BanRecord, Journal, NewBan
from sipops.host.monitor.nftsets import GRACE, GRACE_ELEMENT

# Sets the packet path adds to, and the rule a comment-less element of each stands for. A meter that
# bans into another set (e.g. a conn_meter set) is one more line here.
METER_RULES = {"ban4": "syn_meter", "ban6": "syn_meter"}
METER_EVIDENCE = {
    "syn_meter": "the firewall's SYN meters banned it in the kernel (over flood_syn_per_sec after its burst of "
    "flood_max_conns_per_ip, or over the flood line flood_line_syn_per_sec)"
}
_IPSET_NAMES = {
    "sipops-ban4": "ban4",
    "sipops-ban6": "ban6",
    "sipops-net4": "banned_cidr4",
    "sipops-net6": "banned_cidr6",
}
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{},]|[^\s{},"]+')
_BLOCK_HEAD = re.compile(r"^\s*(set|map|chain|counter|quota|limit|flowtable|ct|secmark|synproxy)\s+(\S+)\s*\{", re.M)


@dataclass(frozen=True, slots=True)
class KernelBan:
    """One element of a ban set: timeout/expires in seconds (None: the element has none), its comment."""

    address: str
    set_name: str
    timeout: int | None
    expires: int | None
    comment: str = ""

    @property
    def by_meter(self) -> bool:
        """Added by a firewall meter (no comment: everything sipops writes carries its rule)."""
        return not self.comment and self.set_name in METER_RULES

    @property
    def rule(self) -> str:
        return METER_RULES[self.set_name] if self.by_meter else self.comment or "unknown"


def parse_nft_listing(text: str) -> list[KernelBan]:
    """Elements of `nft list set` output (several sets may follow each other); the canary is left out."""
    out: list[KernelBan] = []
    heads = list(_BLOCK_HEAD.finditer(text))
    for i, head in enumerate(heads):
        if head.group(1) != "set":
            continue
        body = text[head.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        at = body.find("elements = {")
        if at < 0:
            continue
        current: list[str] = []
        for tok in _TOKEN.findall(body[at + len("elements = {") :]):
            if tok in (",", "}"):
                if current:
                    elem = _element(head.group(2), current)
                    if elem is not None:
                        out.append(elem)
                current = []
                if tok == "}":
                    break
            elif tok != "{":
                current.append(tok)
    return out


def _element(set_name: str, tokens: list[str]) -> KernelBan | None:
    address = tokens[0]
    with contextlib.suppress(ValueError):  # a range (a-b) added by hand is shown as the kernel prints it
        address = normalize(address)
    if address == CANARY:
        return None
    fields: dict[str, str] = {}
    for key, value in zip(tokens[1::2], tokens[2::2], strict=False):
        fields[key] = value
    comment = fields.get("comment", "")
    if comment.startswith('"') and comment.endswith('"'):
        comment = comment[1:-1].replace('\\"', '"')
    return KernelBan(address, set_name, _seconds(fields.get("timeout")), _seconds(fields.get("expires")), comment)


def _seconds(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        return None


def read_nft(executor: NftExecutor, sets: Sequence[str] = BAN_SETS) -> list[KernelBan]:
    """The elements of these sets of our table; no table: none. One `list table`: nft fetches the whole
    table for any command anyway, and 1.0.6 fails a batch of several `list set`."""
    try:
        text = executor.run(f"list table {TABLE}")
    except BanBackendError as exc:
        if "No such file or directory" in str(exc):
            return []
        raise
    wanted = set(sets)
    return [k for k in parse_nft_listing(text) if k.set_name in wanted]


def parse_ipset_listing(text: str) -> list[KernelBan]:
    """Members of `ipset list` output: `ADDR timeout N [comment "..."]` after each set's Members: line."""
    out: list[KernelBan] = []
    set_name = ""
    members = False
    for line in text.splitlines():
        if line.startswith("Name: "):
            set_name, members = _IPSET_NAMES.get(line[6:].strip(), ""), False
        elif line.startswith("Members:"):
            members = True
        elif members and set_name and line.strip():
            tokens = _TOKEN.findall(line)
            elem = _element(set_name, tokens)
            if elem is not None:
                # ipset prints the time left as "timeout"; the total is not kept
                out.append(KernelBan(elem.address, set_name, None, elem.timeout, elem.comment))
    return out


def read(backend: BanBackend, sets: Sequence[str] = BAN_SETS) -> list[KernelBan]:
    """Every element of these ban sets of this backend (raises BanBackendError when they cannot be read)."""
    if isinstance(backend, NftBackend):
        return read_nft(backend.executor, sets)
    if isinstance(backend, IpsetBackend):
        out: list[KernelBan] = []
        for name in _IPSET_NAMES:
            rc, text, _ = backend.runner([*backend.prefix, "ipset", "list", name])
            if rc == 0:
                out += parse_ipset_listing(text)
        return [k for k in out if k.set_name in sets]
    raise BanBackendError(f"{getattr(backend, 'name', backend)!r} cannot list its sets")


def merge(
    kernel: Iterable[KernelBan], journal: Iterable[Any], now: float, fleet_addresses: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """One row per live ban: journal rows (BanRecord) with what the kernel holds for them, then kernel
    elements the journal does not know (meters, or someone's `nft add element`). Addresses in
    `fleet_addresses` (CrowdSec decisions, listed apart) are left out of the kernel-only rows."""
    elements = {k.address: k for k in kernel}
    fleet = set(fleet_addresses)
    rows: list[dict[str, Any]] = []
    for r in journal:
        row = {**r.as_dict(now), "origin": "local"}
        k = elements.pop(r.address, None)
        row["in_kernel"] = k is not None
        if k is not None:
            row["set"] = k.set_name
            if k.expires is not None:
                row["remaining"] = k.expires  # the kernel's clock decides when the drop ends
        rows.append(row)
    for k in sorted(elements.values(), key=lambda e: (e.set_name, e.address)):
        if k.address in fleet:
            continue
        left = k.expires if k.expires is not None else 0
        rows.append(
            {
                "address": k.address,
                "rule": k.rule,
                "evidence": METER_EVIDENCE.get(k.rule, "in the kernel set, not in the journal")
                if k.by_meter
                else "in the kernel set, not in the journal",
                "since": now - ((k.timeout or left) - left),
                "until": now + left,
                "remaining": left,
                "count": 1,
                "unbanned": False,
                "live": True,
                "origin": "kernel meter" if k.by_meter else "kernel",
                "in_kernel": True,
                "set": k.set_name,
            }
        )
    return rows


def unjournaled_meter_bans(backend: BanBackend, live: dict[str, float], now: float) -> list[KernelBan]:
    """Elements a firewall meter added that the journal does not hold as live (`live`: address -> until).
    Only the firewall template's table has meters (not the watcher's own guard chain); only their sets are listed."""
    if not isinstance(backend, NftBackend) or backend.own_chain:
        return []
    found = read_nft(backend.executor, sorted(set(METER_RULES)))
    return [k for k in found if k.by_meter and live.get(k.address, 0.0) <= now]


def journal_meter_bans(
    backend: BanBackend, journal: Journal, allow: Allowlist, live: dict[str, float], now: float, forgive_after: float
) -> list[BanRecord]:
    """Journal the meter's bans the journal lacks, with the time each has left in the kernel (so a reboot
    restores them); an allowlisted address the meter caught is taken out of the kernel instead."""
    found = unjournaled_meter_bans(backend, live, now)
    spared = {k.address for k in found if k.address in allow}
    if spared:
        backend.unban(sorted(spared))
    wanted = [
        NewBan(k.address, k.rule, METER_EVIDENCE.get(k.rule, "kernel meter"), k.timeout or k.expires or 1, k.expires)
        for k in found
        if k.address not in spared
    ]
    return journal.record(wanted, forgive_after=forgive_after) if wanted else []


def grace_left(backend: BanBackend | None) -> float:
    """Seconds left of the restart grace (the `tcp` element of set grace, which the handler that restarts
    OpenSIPS adds with a timeout: nftsets.open_grace); 0 when there is none or it cannot be read (ipset
    hosts have no grace: everything bans as usual there). Asked only when a graceable ban is pending."""
    if not isinstance(backend, NftBackend):
        return 0.0
    try:
        text = backend.executor.run(f"get element {TABLE} {GRACE.name} {{ {GRACE_ELEMENT} }}")
    except BanBackendError:
        return 0.0  # no such element (no grace now), or no such set
    m = re.search(r"\bexpires ([0-9a-z.]+)", text)
    if m is None:
        return 0.0
    try:
        return float(parse_duration(m.group(1)))
    except ValueError:
        return 0.0
