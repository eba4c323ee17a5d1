"""Ban backends: per-element timeouts in kernel sets, written in batches, never one process or rule per IP.

NftBackend   our table `inet sipops`, its sets declared from nftsets.py (as the firewall template's are):
             ban4/ban6 (dynamic, timeout: the kernel SYN meter adds to them too), banned_cidr4/6 (interval,
             timeout). Every call is ONE nft transaction, through libnftables in-process when Debian's
             python3-nftables is there (also found from a venv), else one `nft -f -` process.
IpsetBackend hosts without nftables: ipset hash:ip / hash:net sets with timeouts, grouped in one list:set
             per family, and one iptables/ip6tables rule each; every call is one `ipset restore`.

Lifecycle (the phases tests/test_ban.py records): start, ban, restore (remaining time), refresh (new
timeout for a live element: add + delete + add in one transaction), unban, stop (bans stay in the
kernel and expire there; stop(flush=True) empties the ban sets).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, NamedTuple, Protocol

# The sets are declared once, in nftsets.py; these names stay importable from here.
from sipops.host.monitor.nftsets import BAN_SETS as BAN_SETS
from sipops.host.monitor.nftsets import TABLE as TABLE
from sipops.host.monitor.nftsets import declarations as declarations

# A tombstone element the watcher keeps in ban4: when it is gone, the table or set was wiped (a flush,
# a reboot, someone's `nft flush ruleset`) and every live ban is re-asserted at once. 0.0.0.1 is never
# a packet's source address.
CANARY = "0.0.0.1"
CHUNK = 8192  # elements per statement: long statements are fine, this only bounds one line's size
MAX_TIMEOUT = 30 * 86400  # the kernel takes more; ipset caps at ~24.8 days (2^31 ms)

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_COMMENT_OK = re.compile(r"[^A-Za-z0-9_.:/@=+-]")


class BanBackendError(Exception):
    """The kernel refused a batch (the message names the tool and its last error line)."""


def parse_duration(text: str | int | float) -> int:
    """Seconds from '90', '90s', '10m', '1h30m', '2d' (what nft and the inventory's ban_timeout use)."""
    if isinstance(text, int | float):
        return int(text)
    s = text.strip().lower()
    if s.isdigit():
        return int(s)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 10m, 1h30m, 2d)")
    return max(1, round(total))


def format_duration(seconds: float) -> str:
    """1h30m, 10m, 45s: the shortest exact form, for tables and logs."""
    n = round(seconds)
    if n <= 0:
        return "0s"
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if n >= size:
            out += f"{n // size}{unit}"
            n %= size
    return out


def normalize(address: str) -> str:
    """An address or network in canonical text: IPv4-mapped IPv6 as IPv4, host bits cleared, /32 and /128 bare.

    Raises ValueError for anything that is not an IP address or CIDR.
    """
    text = address.strip()
    if "/" not in text:
        ip = ip_address(text)
        mapped = getattr(ip, "ipv4_mapped", None)
        return str(mapped or ip)
    net = ip_network(text, strict=False)
    if isinstance(net, IPv6Network) and net.network_address.ipv4_mapped and net.prefixlen >= 96:
        net = IPv4Network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def set_for(address: str) -> str:
    """The nft set a normalized address goes to."""
    if "/" in address:
        return "banned_cidr6" if ":" in address else "banned_cidr4"
    return "ban6" if ":" in address else "ban4"


class Ban(NamedTuple):
    """One element: `address` normalized (see normalize), `timeout` seconds in total.

    remaining: seconds left when restoring (None: the whole timeout). rule: the element's comment.
    A NamedTuple, not a dataclass: a restore builds 100k of them and this is 4x cheaper.
    """

    address: str
    timeout: int
    rule: str = "manual"
    remaining: int | None = None


@functools.lru_cache(maxsize=256)
def _comment(rule: str) -> str:
    return _COMMENT_OK.sub("_", rule)[:120] or "manual"


def _timeout(seconds: int) -> int:
    return max(1, min(int(seconds), MAX_TIMEOUT))


class NftExecutor(Protocol):
    """Runs one nft batch as one transaction; raises BanBackendError when it is refused."""

    def run(self, batch: str) -> str: ...


def _system_nftables() -> ModuleType | None:
    """Debian's python3-nftables (a system package), importable from a venv too; None when absent."""
    try:
        import nftables  # type: ignore[import-not-found]

        module: ModuleType = nftables
        return module
    except ImportError:
        pass
    for base in ("/usr/lib/python3/dist-packages/nftables", "/usr/lib/python3/site-packages/nftables"):
        init = Path(base) / "__init__.py"
        if not init.is_file():
            continue
        spec = importlib.util.spec_from_file_location("nftables", init, submodule_search_locations=[base])
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules["nftables"] = module
        try:
            spec.loader.exec_module(module)
        except (ImportError, OSError):  # the module is there but libnftables.so.1 is not
            del sys.modules["nftables"]
            continue
        return module
    return None


class LibNftExecutor:
    """libnftables in the calling process: one transaction per batch, no fork (0.06 ms per small batch)."""

    name = "libnftables"

    def __init__(self, module: ModuleType) -> None:
        self._nft: Any = module.Nftables()
        self._nft.set_json_output(False)
        self._nft.set_handle_output(False)

    def run(self, batch: str) -> str:
        rc, out, err = self._nft.cmd(batch)
        if rc != 0:
            raise BanBackendError(f"libnftables: {_last_line(err, batch)}")
        return str(out)


class NftCliExecutor:
    """One `nft -f -` process per batch (prefix: e.g. ["ip", "netns", "exec", NS])."""

    name = "nft"

    def __init__(self, nft: str = "nft", prefix: Sequence[str] = ()) -> None:
        self.argv = [*prefix, nft, "-f", "-"]
        self.env = {**os.environ, "LC_ALL": "C"}  # errors in English: intact() reads "File exists"

    def run(self, batch: str) -> str:
        # The batch goes in as a file, not through a pipe: subprocess feeds a pipe 512 bytes per turn of
        # its loop, which in the watcher's kernel-side thread waits for the GIL each turn (a 10k-ban batch
        # is 460 kB: 900 turns, measured 0.2 s slower beside the journal's transaction).
        try:
            with _batch_file(batch) as stdin:
                proc = subprocess.run(
                    self.argv, stdin=stdin, capture_output=True, text=True, check=False, timeout=60, env=self.env
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BanBackendError(f"nft: {exc}") from None
        if proc.returncode != 0:
            raise BanBackendError(f"nft: {_last_line(proc.stderr, batch)}")
        return proc.stdout


def _batch_file(batch: str) -> BinaryIO:
    """The batch in an anonymous file (memfd: in memory), positioned at its start."""
    try:
        f: BinaryIO = open(os.memfd_create("sipops-nft", os.MFD_CLOEXEC), "w+b")  # noqa: SIM115 (the caller's with)
    except (AttributeError, OSError):  # no memfd (old kernel): an unlinked temporary file
        f = tempfile.TemporaryFile()  # noqa: SIM115 (the caller's with)
    f.write(batch.encode())
    f.seek(0)
    return f


def _last_line(err: str, batch: str) -> str:
    lines = [ln for ln in (err or "").strip().splitlines() if ln.strip()]
    first_error = next((ln for ln in lines if "Error" in ln), lines[0] if lines else "failed")
    return f"{first_error.strip()} (batch of {batch.count(chr(10)) + 1} lines)"


def nft_executor(prefer_lib: bool = True) -> NftExecutor:
    """libnftables in-process when importable, else the nft CLI."""
    module = _system_nftables() if prefer_lib else None
    if module is not None:
        try:
            return LibNftExecutor(module)
        except OSError:
            pass
    return NftCliExecutor()


def guard_chain() -> list[str]:
    """The watcher's own drop chain, for hosts whose firewall table (chain input) is not loaded."""
    c = f"{TABLE} watch"
    return [
        f"add chain {c} {{ type filter hook input priority filter - 20; policy accept; }}",
        f"flush chain {c}",
        f"add rule {c} ip saddr @allow4 return",
        f"add rule {c} ip6 saddr @allow6 return",
        f"add rule {c} ip saddr @ban4 counter drop",
        f"add rule {c} ip6 saddr @ban6 counter drop",
        f"add rule {c} ip saddr @banned_cidr4 counter drop",
        f"add rule {c} ip6 saddr @banned_cidr6 counter drop",
    ]


def _grouped(items: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for set_name, text in items:
        out.setdefault(set_name, []).append(text)
    return out


def _statements(verb: str, per_set: dict[str, list[str]]) -> list[str]:
    lines = []
    for set_name in BAN_SETS:
        elems = per_set.get(set_name, [])
        for i in range(0, len(elems), CHUNK):
            lines.append(f"{verb} element {TABLE} {set_name} {{ {', '.join(elems[i : i + CHUNK])} }}")
    return lines


def _element(ban: Ban, *, remaining: bool) -> tuple[str, str]:
    address, timeout, rule, left = ban
    t = 1 if timeout < 1 else MAX_TIMEOUT if timeout > MAX_TIMEOUT else int(timeout)
    if remaining and left is not None:
        left = 1 if left < 1 else t if left > t else int(left)
        return set_for(address), f'{address} timeout {t}s expires {left}s comment "{_comment(rule)}"'
    return set_for(address), f'{address} timeout {t}s comment "{_comment(rule)}"'


class NftBackend:
    """Bans in the nft sets of table inet sipops; each method is one transaction."""

    name = "nftables"

    def __init__(self, executor: NftExecutor, *, own_chain: bool = False) -> None:
        self.executor = executor
        self.own_chain = own_chain

    def start(self) -> None:
        """Declare the table and sets (keeping live elements) and plant the canary."""
        lines = declarations()
        if self.own_chain:
            lines += guard_chain()
        lines.append(f'add element {TABLE} ban4 {{ {CANARY} timeout {MAX_TIMEOUT}s comment "sipops-canary" }}')
        self._run(lines)

    def ban(self, bans: Sequence[Ban]) -> None:
        """New bans: add with timeout and the rule as comment (an element already there keeps its timeout)."""
        self._run(_statements("add", _grouped(_element(b, remaining=False) for b in bans)))

    def restore(self, bans: Sequence[Ban]) -> None:
        """Bans from the journal with the time they have left (`expires`), in one transaction."""
        self._run(_statements("add", _grouped(_element(b, remaining=True) for b in bans)))

    # One element as SQL over the journal's live bans (address, rule; t: total seconds, l: seconds left), so
    # a restore's elements are rendered by SQLite (Journal.live_elements), as restore() writes them.
    ELEMENT_SQL = "address || ' timeout ' || t || 's expires ' || l || 's comment \"' || rule || '\"'"

    def restore_rendered(
        self, groups: Iterable[tuple[str, str]], rules: Iterable[str] = (), bans: Sequence[Ban] = ()
    ) -> None:
        """restore() of elements rendered with ELEMENT_SQL (groups: an address of the group's kind, the
        elements joined with ", "; rules: the rules they name), plus `bans`, in one transaction."""
        dirty = [(f'comment "{r}"', f'comment "{_comment(r)}"') for r in rules if _comment(r) != r]
        lines = []
        for sample, elements in groups:
            for raw, clean in dirty:  # the journal holds a rule as given; the kernel gets the cleaned comment
                elements = elements.replace(raw, clean)
            lines.append(f"add element {TABLE} {set_for(sample)} {{ {elements} }}")
        self._run(lines + _statements("add", _grouped(_element(b, remaining=True) for b in bans)))

    def refresh(self, bans: Sequence[Ban]) -> None:
        """A new timeout for elements that may be live: add (so delete cannot fail) + delete + add."""
        short = _grouped((set_for(b.address), f"{b.address} timeout 1s") for b in bans)
        bare = _grouped((set_for(b.address), b.address) for b in bans)
        full = _grouped(_element(b, remaining=True) for b in bans)
        self._run(_statements("add", short) + _statements("delete", bare) + _statements("add", full))

    def unban(self, addresses: Sequence[str]) -> None:
        """Remove elements whether or not they are still there (add + delete)."""
        short = _grouped((set_for(a), f"{a} timeout 1s") for a in addresses)
        bare = _grouped((set_for(a), a) for a in addresses)
        self._run(_statements("add", short) + _statements("delete", bare))

    def intact(self) -> bool:
        """False when the canary is gone (table or set wiped): time to re-assert everything.

        `create` of the canary is refused with "File exists" while it is there (and plants it when it is
        not). A `get` would do: but nft 1.0.6 fetches the whole set first, 0.6-0.8 s of CPU at 100k bans
        (measured) each canary_every after any change; the create takes 0.01 s.
        """
        try:
            self.executor.run(
                f'create element {TABLE} ban4 {{ {CANARY} timeout {MAX_TIMEOUT}s comment "sipops-canary" }}'
            )
        except BanBackendError as exc:
            return "File exists" in str(exc)
        return False

    def stop(self, *, flush: bool = False) -> None:
        """Nothing by default: the bans stay and expire in the kernel. flush=True empties the ban sets."""
        if flush:
            self._run([f"flush set {TABLE} {s}" for s in BAN_SETS])

    def _run(self, lines: list[str]) -> None:
        if lines:
            self.executor.run("\n".join(lines) + "\n")


class Runner(Protocol):
    """Runs argv with optional stdin; returns (returncode, stdout, stderr)."""

    def __call__(self, argv: list[str], stdin: str | None = None) -> tuple[int, str, str]: ...


def run_command(argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    """The real Runner."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


_IPSETS = {"ban4": "sipops-ban4", "ban6": "sipops-ban6", "banned_cidr4": "sipops-net4", "banned_cidr6": "sipops-net6"}


class IpsetBackend:
    """Legacy hosts: ipset sets with timeouts (one `ipset restore` per call) and one iptables rule per family."""

    name = "ipset"
    MAX = 2147483  # ipset's largest timeout in seconds

    def __init__(self, runner: Runner = run_command, prefix: Sequence[str] = ()) -> None:
        self.runner = runner
        self.prefix = list(prefix)

    def start(self) -> None:
        lines = [
            "create sipops-ban4 hash:ip family inet timeout 0 maxelem 1048576 comment",
            "create sipops-ban6 hash:ip family inet6 timeout 0 maxelem 1048576 comment",
            "create sipops-net4 hash:net family inet timeout 0 maxelem 65536 comment",
            "create sipops-net6 hash:net family inet6 timeout 0 maxelem 65536 comment",
            "create sipops-block4 list:set size 8",
            "create sipops-block6 list:set size 8",
            "add sipops-block4 sipops-ban4",
            "add sipops-block4 sipops-net4",
            "add sipops-block6 sipops-ban6",
            "add sipops-block6 sipops-net6",
            f'add sipops-ban4 {CANARY} timeout {self.MAX} comment "sipops-canary"',
        ]
        self._restore(lines)
        for tool, block in (("iptables", "sipops-block4"), ("ip6tables", "sipops-block6")):
            rule = ["INPUT", "-m", "set", "--match-set", block, "src", "-j", "DROP"]
            rc, _, _ = self.runner([*self.prefix, tool, "-w", "-C", *rule])
            if rc != 0:
                rc, _, err = self.runner([*self.prefix, tool, "-w", "-I", *rule])
                if rc != 0:
                    raise BanBackendError(f"{tool}: {err.strip() or 'failed'}")

    def _add_lines(self, bans: Sequence[Ban], *, remaining: bool) -> list[str]:
        lines = []
        for b in bans:
            t = min(_timeout(b.timeout), self.MAX)
            if remaining and b.remaining is not None:
                t = max(1, min(int(b.remaining), t))
            lines.append(f'add {_IPSETS[set_for(b.address)]} {b.address} timeout {t} comment "{_comment(b.rule)}"')
        return lines

    def ban(self, bans: Sequence[Ban]) -> None:
        self._restore(self._add_lines(bans, remaining=False))

    def restore(self, bans: Sequence[Ban]) -> None:
        self._restore(self._add_lines(bans, remaining=True))

    def refresh(self, bans: Sequence[Ban]) -> None:
        """With -exist, add overwrites the timeout of a live element: one add is enough."""
        self._restore(self._add_lines(bans, remaining=True))

    def unban(self, addresses: Sequence[str]) -> None:
        self._restore([f"del {_IPSETS[set_for(a)]} {a}" for a in addresses])

    def intact(self) -> bool:
        rc, _, _ = self.runner([*self.prefix, "ipset", "test", "sipops-ban4", CANARY])
        return rc == 0

    def stop(self, *, flush: bool = False) -> None:
        if flush:
            self._restore([f"flush {name}" for name in _IPSETS.values()])

    def _restore(self, lines: list[str]) -> None:
        if not lines:
            return
        rc, _, err = self.runner([*self.prefix, "ipset", "-exist", "restore"], "\n".join(lines) + "\n")
        if rc != 0:
            raise BanBackendError(f"ipset restore: {err.strip().splitlines()[-1] if err.strip() else 'failed'}")


class BanBackend(Protocol):
    name: str

    def start(self) -> None: ...
    def ban(self, bans: Sequence[Ban]) -> None: ...
    def restore(self, bans: Sequence[Ban]) -> None: ...
    def refresh(self, bans: Sequence[Ban]) -> None: ...
    def unban(self, addresses: Sequence[str]) -> None: ...
    def intact(self) -> bool: ...
    def stop(self, *, flush: bool = False) -> None: ...


def has_chain(executor: NftExecutor, chain: str = "input") -> bool:
    """Whether our table's chain exists (the firewall template loaded).

    `list chains` names every chain without rules or set elements (4 ms); a `list chain` of ours makes
    nft 1.0.6 fetch the whole table first (~1 s at 100k bans, measured), at every watcher start.
    """
    try:
        out = executor.run("list chains inet")
    except BanBackendError:
        return False
    table = ""
    for line in out.splitlines():
        words = line.split()
        if words[:1] == ["table"]:
            table = " ".join(words[1:3])
        elif words[:1] == ["chain"] and len(words) > 1 and table == TABLE and words[1] == chain:
            return True
    return False


def default_backend(kind: str = "auto") -> BanBackend:
    """nftables (libnftables or nft CLI) where nft works, else ipset; kind: auto | nftables | ipset."""
    import shutil

    if kind == "ipset" or (kind == "auto" and shutil.which("nft") is None and _system_nftables() is None):
        return IpsetBackend()
    executor = nft_executor()
    return NftBackend(executor, own_chain=not has_chain(executor))
