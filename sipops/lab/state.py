"""Lab naming and the state file that records everything a lab created, so `down` can undo it."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal

from sipops.errors import InputError

STATE_FILE = "state.json"
STATE_VERSION = 1
# Benchmarking range (RFC 2544): never routed on the internet. The whole /15 is made unreachable
# on the machine before any lab link exists, so lab traffic cannot leak out through a default route.
GUARD_NETWORK = IPv4Network("198.18.0.0/15")
DEFAULT_NETWORK = IPv4Network("198.18.0.0/16")
DEFAULT_PREFIX = "sipl"
MAX_HOSTS = 64
MAX_ATTACKERS = 64
IFNAMSIZ = 15
_SAVE_LOCK = threading.Lock()  # layers are prepared in threads that all record progress

Kind = Literal["host", "attacker"]


@dataclass(frozen=True)
class Naming:
    """Names and addresses of everything in a lab; every name starts with `prefix-`."""

    prefix: str = DEFAULT_PREFIX
    network: IPv4Network = DEFAULT_NETWORK

    def __post_init__(self) -> None:
        if not (self.prefix.isascii() and self.prefix.isalnum() and 1 <= len(self.prefix) <= 5):
            raise InputError(f"lab prefix must be 1-5 letters or digits, got {self.prefix!r}")
        # Hosts live in the first 256 addresses, attackers in the next 256: at least a /23.
        if not 16 <= self.network.prefixlen <= 23 or not self.network.subnet_of(GUARD_NETWORK):
            raise InputError(f"lab network must be a /16 to /23 inside {GUARD_NETWORK}, got {self.network}")

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br0"

    @property
    def bridge_address(self) -> IPv4Address:
        return self.network[1]

    def host_name(self, index: int) -> str:
        """Inventory name of host `index` (1-based)."""
        return f"h{index}"

    def attacker_name(self, index: int) -> str:
        return f"a{index}"

    def host_address(self, index: int) -> IPv4Address:
        return self.network[1 + index]  # .0.2, .0.3, ... in a /16

    def attacker_address(self, index: int) -> IPv4Address:
        return self.network[256 + index]  # .1.1, .1.2, ... in a /16

    def netns(self, name: str) -> str:
        """Network namespace and nspawn machine name of a member."""
        return f"{self.prefix}-{name}"

    def veth(self, name: str) -> str:
        """Machine-side end of a member's veth pair (the other end is eth0 inside)."""
        return f"{self.prefix}-{name}-v"


def check_counts(hosts: int, attackers: int) -> None:
    """Raise InputError unless the counts fit the address plan."""
    if not 1 <= hosts <= MAX_HOSTS:
        raise InputError(f"must be between 1 and {MAX_HOSTS}, got {hosts}", field="--hosts")
    if not 0 <= attackers <= MAX_ATTACKERS:
        raise InputError(f"must be between 0 and {MAX_ATTACKERS}, got {attackers}", field="--attackers")


@dataclass
class Member:
    """A lab host (booted Debian) or attacker (bare network namespace), and what exists for it."""

    name: str
    kind: Kind
    address: str
    netns: str
    veth: str
    netns_created: bool = False
    mounted: bool = False  # overlay mounted at <lab>/hosts/NAME/root
    pid: int | None = None  # systemd-nspawn process
    pid_started: float | None = None  # its start time, so a reused pid is never signalled


@dataclass
class LabState:
    """Everything a lab created, written to <lab dir>/state.json before each thing is created."""

    dir: Path
    prefix: str = DEFAULT_PREFIX
    network: str = str(DEFAULT_NETWORK)
    release: str = "bookworm"
    base: str = ""
    opensips_prefix: str | None = None
    opensips_version: str | None = None  # its LTS line (3.4, 3.6), from `opensips -V` or the tarball
    opensips_source: str | None = None  # a release tarball on this machine the hosts build from
    opensips_release: str | None = None  # its full release (3.6.8)
    route_added: bool = False  # the unreachable guard route was added by us (else it was there)
    bridge_created: bool = False
    apt_proxy_pid: int | None = None  # sipops.lab.aptproxy on the bridge address
    apt_proxy_started: float | None = None
    members: list[Member] = field(default_factory=list)

    @property
    def naming(self) -> Naming:
        return Naming(self.prefix, IPv4Network(self.network))

    @property
    def path(self) -> Path:
        return self.dir / STATE_FILE

    def hosts(self) -> list[Member]:
        return [m for m in self.members if m.kind == "host"]

    def attackers(self) -> list[Member]:
        return [m for m in self.members if m.kind == "attacker"]

    def member(self, name: str) -> Member:
        """A member by inventory name or netns name; InputError if unknown."""
        for m in self.members:
            if name in (m.name, m.netns):
                return m
        known = ", ".join(m.name for m in self.members) or "none"
        raise InputError(f"no lab host or attacker named {name!r} (known: {known})", file=self.path)

    def host_dir(self, name: str) -> Path:
        return self.dir / "hosts" / name

    def root(self, name: str) -> Path:
        return self.host_dir(name) / "root"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("dir")
        return {"version": STATE_VERSION, **data}

    def save(self) -> None:
        """Write atomically: a crash leaves the old or the new file, never half of one."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with _SAVE_LOCK:
            text = json.dumps(self.to_json(), indent=2) + "\n"
            tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)

    @classmethod
    def from_json(cls, directory: Path, data: dict[str, Any]) -> LabState:
        if data.get("version") != STATE_VERSION:
            raise InputError(f"unknown state version {data.get('version')!r}", file=directory / STATE_FILE)
        members = [Member(**m) for m in data.get("members", [])]
        fields = {k: v for k, v in data.items() if k not in ("version", "members")}
        return cls(dir=directory, members=members, **fields)

    @classmethod
    def load(cls, directory: Path) -> LabState | None:
        """The recorded state, or None when no lab was started in `directory`."""
        path = directory / STATE_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON: {exc.msg}", file=path, line=exc.lineno) from exc
        if not isinstance(data, dict):
            raise InputError("expected a JSON object", file=path)
        try:
            return cls.from_json(directory, data)
        except TypeError as exc:
            raise InputError(f"unexpected content: {exc}", file=path) from exc
